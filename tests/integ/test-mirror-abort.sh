#!/usr/bin/env bash
# Mirror, then abort: a disk mounted with --write-mode=mirror --parent-owned
# over a writable nbdkit export (the "old storage") while a slowed streamer
# copies it:
#  - an fsync'd write reaches the parent file at once (before any abort);
#  - fio with --verify=crc32c writes during the copy;
#  - `corfs abort` exits 0; owner.state is handed-off; writes fail (EROFS);
#  - the parent file equals the disk, and fio --verify_only with the same
#    job parameters passes over the parent file;
#  - the aborted event was emitted.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version
requires fio --version

size=$((64 * 1048576))
head -c $size /dev/urandom > $T/parent.img
start_nbdkit $T/nbd.pid -U $T/sock file $T/parent.img
st=$T/state mnt=$T/mnt
corfs_mount $st $mnt --stream=paused --write-mode=mirror --parent-owned \
  --disk d="$(nbd_uri $T/sock)"
disk=$mnt/d
status () { "$CORFS" status --state $st d --json | jq -r "$@"; }

"$CORFS" events --state $st > $T/events 2>&1 &
epid=$!
cleanup_fn kill_pid $epid

[ "$(status .owner.state)" = active ] || fail "owner state $(status .owner.state), expected active"
# Slow copy: 64 MiB at 8 MiB/s is about 8 s.
"$CORFS" stream --state $st d --rate 8M || fail "stream --rate 8M failed"

### 1. A write acknowledged with fsync is in the parent file at once.
head -c 100000 /dev/urandom > $T/data
off=$((40 * 1048576 + 1234))      # a cold area (the stream goes front to back)
dd if=$T/data of=$disk bs=100000 count=1 seek=$off oflag=seek_bytes conv=notrunc,fsync \
   status=none || fail "dd+fsync through the mirror mount failed"
cmp -n 100000 -i $off:0 $T/parent.img $T/data \
  || fail "an fsync'd mirror write is not in the parent file at once"
cmp -n 100000 -i $off:0 $disk $T/data || fail "the disk does not read back what was written"
[ "$(status .dirty_bytes)" = 0 ] || fail "dirty_bytes $(status .dirty_bytes) after a mirror write that succeeded"
[ "$(status .complete)" = false ] || fail "the copy finished too early for this test"

### 2. fio writes (verify data) during the copy.
cd $T    # fio may leave state files in the working directory
job=(--name=mirror --ioengine=psync --direct=1 --rw=randwrite --bs=64k --size=24M --offset=8M
     --verify=crc32c --randrepeat=1 --randseed=4242 --verify_state_save=0)
fio "${job[@]}" --filename=$disk --do_verify=0 --end_fsync=1 > $T/fio-write.out 2>&1 \
  || { cat $T/fio-write.out; fail "fio write through the mirror mount failed"; }
js=$("$CORFS" status --state $st d --json)
echo "after fio: stream $(jq -c .stream <<<"$js"), dirty $(jq -r .dirty_bytes <<<"$js")"
[ "$(jq -r .dirty_bytes <<<"$js")" = 0 ] || fail "dirty_bytes $(jq -r .dirty_bytes <<<"$js") after fio"
[ "$(jq -r .complete <<<"$js")" = false ] \
  && echo "the copy was still running when fio finished" \
  || echo "note: the copy completed before fio finished"

### 3. Abort.
"$CORFS" abort --state $st d > $T/abort.out 2>&1 || { cat $T/abort.out; fail "corfs abort failed"; }
js=$("$CORFS" status --state $st d --json)
echo "after abort: owner $(jq -c .owner <<<"$js"), stream $(jq -r .stream.state <<<"$js")"
[ "$(jq -r .owner.state <<<"$js")" = handed-off ] || fail "owner state $(jq -r .owner.state <<<"$js") after abort, expected handed-off"
[ "$(jq -r .dirty_bytes <<<"$js")" = 0 ] || fail "dirty_bytes $(jq -r .dirty_bytes <<<"$js") after abort"

# Writes fail now (EROFS), and the parent does not change.
cp $T/parent.img $T/parent-at-abort.img
if dd if=$T/data of=$disk bs=4096 count=1 seek=100 conv=notrunc,fsync status=none 2>$T/dd.err; then
  fail "a write after abort succeeded"
fi
grep -qi "read-only" $T/dd.err || { cat $T/dd.err; fail "the write after abort did not fail with EROFS"; }

### 4. The parent is current.
cmp $disk $T/parent.img || fail "after abort the disk differs from the parent file"
cmp $T/parent.img $T/parent-at-abort.img || fail "the refused write changed the parent"
fio "${job[@]}" --filename=$T/parent.img --verify_only > $T/fio-verify.out 2>&1 \
  || { cat $T/fio-verify.out; fail "fio --verify_only over the parent file failed"; }
grep -q "err= 0" $T/fio-verify.out || { cat $T/fio-verify.out; fail "fio verify reported errors"; }
grep -q "io=24.0MiB" $T/fio-verify.out || { cat $T/fio-verify.out; fail "fio did not verify all 24 MiB"; }
echo "fio --verify_only over the parent: $(grep -m1 'READ:' $T/fio-verify.out)"
cmp -n 100000 -i $off:0 $T/parent.img $T/data || fail "the first write is gone from the parent"

# A second abort is refused (nothing to abort).
"$CORFS" abort --state $st d > $T/abort2.out 2>&1 && fail "a second abort succeeded"
echo "second abort: $(cat $T/abort2.out)"

for i in $(seq 50); do grep -q '"event":"aborted"' $T/events && break; sleep 0.1; done
grep -q '"event":"aborted"' $T/events || { cat $T/events; fail "no aborted event"; }

corfs_unmount $mnt || fail "unmount failed"
cmp $T/parent.img $T/parent-at-abort.img || fail "the parent changed after abort"

# The abort is durable: a remount is still handed-off and read-only.
corfs_mount $st $mnt || fail "remount after abort failed"
[ "$(status .owner.state)" = handed-off ] || fail "owner state $(status .owner.state) after remount, expected handed-off"
if dd if=$T/data of=$disk bs=4096 count=1 seek=100 conv=notrunc,fsync status=none 2>/dev/null; then
  fail "a write after abort and remount succeeded"
fi
cmp $disk $T/parent.img || fail "after the remount the disk differs from the parent"
corfs_unmount $mnt || fail "second unmount failed"
cmp $T/parent.img $T/parent-at-abort.img || fail "the parent changed after the remount"
echo OK
