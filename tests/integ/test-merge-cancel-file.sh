#!/usr/bin/env bash
# A merge cancelled before synced, then started again, over a file://
# parent (src/merge/merge.c repin_after_merge): the merge's own writes
# moved the parent's identity (file:// includes the mtime), so before the
# fix the second `merge` was refused ("is not the pinned image"), the
# parent was marked changed and the disk's reads of missing blocks failed
# until a remount.  Now the cancelled job re-pins the parent it wrote:
#  - the second merge starts, syncs, and the parent equals the disk;
#  - the disk still reads (parent not "changed"), and a hand-off succeeds;
#  - a parent swapped behind the disk is still refused afterwards
#    (the identity check is back on once the merge stopped).
# test-merge-handoff.sh covers the same over NBD (it always failed before
# the fix; this one only when the restart came before a reconnect).
. "$(dirname "$0")/../functions.sh"
requires fusermount3 --version
requires jq --version

size=$((16 * 1048576))
head -c $size /dev/urandom > $T/parent.img
st=$T/state mnt=$T/mnt
status () { "$CORFS" status --state $st d --json | jq -r "$@"; }
corfs_mount $st $mnt --parent-owned --disk d="file://$T/parent.img"
# Write the first half; the second half stays missing (read from the parent).
head -c $((size / 2)) /dev/urandom > $T/half
dd if=$T/half of=$mnt/d bs=1M conv=notrunc,fsync status=none || fail "write failed"
cp $T/parent.img $T/expect
dd if=$T/half of=$T/expect bs=1M conv=notrunc status=none

### 1. Merge at 1 MiB/s (a 4 MiB chunk, then a 4 s wait), cancelled.
"$CORFS" merge --state $st d --rate 1M || fail "merge start failed"
sleep 1
[ "$(status .job.state)" = running ] || fail "the merge is not running: $(status -c .job)"
"$CORFS" merge --state $st d --cancel || fail "merge cancel failed"

### 2. Started again at once: accepted, and syncs.
"$CORFS" merge --state $st d --rate 0 2> $T/err || fail "merge restart refused: $(cat $T/err)"
for i in $(seq 600); do
  [ "$(status .job.state)" = synced ] && break
  sleep 0.1
done
[ "$(status .job.state)" = synced ] || fail "the merge did not sync: $(status -c .job)"
[ "$(status .parent.state)" != changed ] || fail "parent marked changed: $(status -c .parent)"
cmp $T/parent.img $T/expect || fail "the parent does not hold the merged disk"
cmp $mnt/d $T/expect || fail "the disk does not read what was written"

### 3. Cancel again, then swap the parent: the swap is still refused.
dd if=/dev/urandom of=$mnt/d bs=1M count=16 conv=notrunc,fsync status=none || fail "write 2 failed"
"$CORFS" merge --state $st d --rate 512K || fail "merge 2 start failed"
sleep 1
[ "$(status .job.state)" = running ] || fail "merge 2 is not running: $(status -c .job)"
"$CORFS" merge --state $st d --cancel || fail "merge 2 cancel failed"
for i in $(seq 100); do
  [ "$(status .job.state)" = cancelled ] && break
  sleep 0.1
done
sleep 1    # the cancelled job re-pins after its last chunk
head -c $size /dev/urandom > $T/other
cp $T/other $T/parent.img
rc=0; "$CORFS" merge --state $st d --rate 0 2> $T/err || rc=$?
echo "merge over a swapped parent: exit $rc: $(cat $T/err)"
[ $rc -ne 0 ] || fail "a merge into a swapped parent was accepted"
grep -q "changed\|not the pinned image" $T/err || fail "the refusal does not say why: $(cat $T/err)"
pid=$(daemon_pid $st)
corfs_unmount $mnt || fail "unmount failed"
wait_gone $pid
echo OK
