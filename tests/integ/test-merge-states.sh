#!/usr/bin/env bash
# `corfs merge` runs only on an active disk (src/merge/merge.c,
# merge_control):
#  - on an incoming disk (the source still writes the parent) it is
#    refused with the state named, no job starts, and the parent's identity
#    check stays on (a merge would turn it off);
#  - on a handed-off disk it is refused with the state named, and the
#    parent is not written;
#  - on a disk with a set of sources (corfs never writes a set) it is
#    refused before anything is recorded: --parent-owned is not kept, and
#    the disk mounts again afterwards, with its sources or from its record.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version

size=$((4 * 1048576))
head -c $size /dev/urandom > $T/parent.img
cp $T/parent.img $T/orig.img
start_nbdkit $T/nbd.pid -U $T/sock file $T/parent.img
status () { "$CORFS" status --state $st d --json | jq -r "$@"; }

### 1. Incoming.
st=$T/state mnt=$T/mnt
corfs_mount $st $mnt --incoming --disk d="$(nbd_uri $T/sock)"
[ "$(status .owner.state)" = incoming ] || fail "owner state $(status .owner.state), expected incoming"
rc=0; "$CORFS" merge --state $st d --parent-owned > $T/out 2> $T/err || rc=$?
echo "merge on an incoming disk: exit $rc: $(cat $T/err)"
[ $rc -ne 0 ] || fail "merge was accepted on an incoming disk"
grep -q "incoming" $T/err || fail "the refusal does not name the state: $(cat $T/err)"
[ "$(status .job.kind)" = none ] || fail "a job started on an incoming disk: $(status -c .job)"
pid=$(daemon_pid $st)
corfs_unmount $mnt || fail "unmount (incoming) failed"
wait_gone $pid

### 2. Handed off, with a dirty block.
st=$T/state2 mnt=$T/mnt2
corfs_mount $st $mnt --parent-owned --disk d="$(nbd_uri $T/sock)"
head -c 70000 /dev/urandom > $T/data
dd if=$T/data of=$mnt/d bs=70000 seek=$((1048576 + 3)) oflag=seek_bytes conv=notrunc,fsync \
   status=none || fail "write failed"
[ "$(status .dirty_bytes)" -gt 0 ] || fail "no dirty bytes after a write"
"$CORFS" handoff --state $st d --epoch 2 || fail "handoff failed"
[ "$(status .owner.state)" = handed-off ] || fail "owner state $(status .owner.state), expected handed-off"
rc=0; "$CORFS" merge --state $st d > $T/out 2> $T/err || rc=$?
echo "merge on a handed-off disk: exit $rc: $(cat $T/err)"
[ $rc -ne 0 ] || fail "merge was accepted on a handed-off disk"
grep -q "handed-off" $T/err || fail "the refusal does not name the state: $(cat $T/err)"
sleep 0.5
cmp -s $T/parent.img $T/orig.img || fail "the parent of a handed-off disk was written"
pid=$(daemon_pid $st)
corfs_unmount $mnt || fail "unmount (handed off) failed"
wait_gone $pid

### 3. A set of sources: refused, and the record left as it was.
st=$T/state3 mnt=$T/mnt3
cp $T/orig.img $T/a.img; cp $T/orig.img $T/b.img
set_disks=(--disk d=file://$T/a.img --disk d=file://$T/b.img)
corfs_mount $st $mnt "${set_disks[@]}"
rc=0; "$CORFS" merge --state $st d --parent-owned > $T/out 2> $T/err || rc=$?
echo "merge on a set of sources: exit $rc: $(cat $T/err)"
[ $rc -ne 0 ] || fail "merge was accepted on a set of sources"
grep -q "set of sources" $T/err || fail "the refusal does not say why: $(cat $T/err)"
[ "$(status .job.kind)" = none ] || fail "a job started on a set of sources: $(status -c .job)"
pid=$(daemon_pid $st)
corfs_unmount $mnt || fail "unmount (set) failed"
wait_gone $pid
for how in record sources; do
  if [ $how = record ]; then corfs_mount $st $mnt; else corfs_mount $st $mnt "${set_disks[@]}"; fi
  cmp -s $mnt/d $T/orig.img || fail "the disk reads wrong after a refused merge ($how)"
  pid=$(daemon_pid $st)
  corfs_unmount $mnt || fail "unmount (set, $how) failed"
  wait_gone $pid
done
cmp -s $T/a.img $T/orig.img && cmp -s $T/b.img $T/orig.img || fail "a source was written"
echo OK
