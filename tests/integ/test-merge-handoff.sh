#!/usr/bin/env bash
# A hand-off while a merge writes the parent (src/cor/engine.c cor_handoff,
# src/merge/merge.c set_merging/set_synced):
#  - is refused, naming the merge, and the disk stays active (before the
#    fix it succeeded, and the merge went on writing the parent of a
#    handed-off disk, then recorded synced and re-pinned it);
#  - a cancelled merge leaves the parent partly written: still refused;
#  - once the merge has synced, the same hand-off succeeds, and the
#    parent holds the disk.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version

size=$((16 * 1048576))
head -c $size /dev/urandom > $T/parent.img
start_nbdkit $T/nbd.pid -U $T/sock --filter=delay file $T/parent.img delay-write=400ms
st=$T/state mnt=$T/mnt
status () { "$CORFS" status --state $st d --json | jq -r "$@"; }
corfs_mount $st $mnt --parent-owned --disk d="$(nbd_uri $T/sock)"
head -c $size /dev/urandom > $T/data
dd if=$T/data of=$mnt/d bs=1M conv=notrunc,fsync status=none || fail "write failed"
[ "$(status .dirty_bytes)" = $size ] || fail "dirty_bytes $(status .dirty_bytes), expected $size"

### 1. Hand-off while the merge runs: refused.  (At 2 MiB/s, and each
# write 0.4 s late, the merge runs for seconds: still running when it is
# cancelled below.)
"$CORFS" merge --state $st d --rate 2M || fail "merge start failed"
sleep 1
[ "$(status .job.state)" = running ] || fail "the merge is not running: $(status -c .job)"
rc=0; "$CORFS" handoff --state $st d --epoch 2 2> $T/err || rc=$?
echo "handoff during the merge: exit $rc: $(cat $T/err)"
[ $rc -ne 0 ] || fail "handoff was accepted while a merge was writing the parent"
grep -q "merge" $T/err || fail "the refusal does not name the merge: $(cat $T/err)"
[ "$(status .owner.state)" = active ] || fail "owner state $(status .owner.state) after the refusal"

### 2. Cancelled before synced: still refused.
[ "$(status .job.state)" = running ] || fail "the merge ended before the cancel: $(status -c .job)"
"$CORFS" merge --state $st d --cancel || fail "merge cancel failed"
rc=0; "$CORFS" handoff --state $st d --epoch 2 2> $T/err || rc=$?
echo "handoff after a cancelled merge: exit $rc: $(cat $T/err)"
[ $rc -ne 0 ] || fail "handoff was accepted after a merge stopped before synced"

### 3. Merged to synced (unlimited): the hand-off goes through.
"$CORFS" merge --state $st d --rate 0 || fail "merge restart failed"
for i in $(seq 600); do
  [ "$(status .job.state)" = synced ] && break
  sleep 0.1
done
[ "$(status .job.state)" = synced ] || fail "the merge did not sync: $(status -c .job)"
"$CORFS" handoff --state $st d --epoch 2 || fail "handoff after synced failed"
[ "$(status .owner.state)" = handed-off ] || fail "owner state $(status .owner.state)"
cmp $T/parent.img $T/data || fail "the parent does not hold the merged disk"
pid=$(daemon_pid $st)
corfs_unmount $mnt || fail "unmount failed"
wait_gone $pid
echo OK
