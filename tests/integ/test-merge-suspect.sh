#!/usr/bin/env bash
# After an unclean shutdown every present block is suspect (DESIGN.md rule
# 4): merge compares suspect blocks with the parent and writes only those
# that differ.  A 32 MiB disk is streamed in full, two fsync'd writes make
# a little of it dirty, and the daemon is killed with SIGKILL.  While it
# is down, one block of the overlay is changed behind its back: what a
# guest write leaves when the crash comes after the data reached the
# overlay but before its dirty bit was committed.  After the remount,
# `merge --wait` must
#  - leave the parent equal to the disk, that block included (the
#    compare must catch a block that is neither dirty nor different in
#    size, only in content);
#  - write to the parent only the blocks that differ: the dirty ones and
#    the changed one, counted by nbdkit's log filter and by the
#    writeback_bytes counter, with the rest reported in
#    writeback_equal_bytes;
#  - leave no dirty and no suspect block.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version

bs=65536 size=$((32 * 1048576))
head -c $size /dev/urandom > $T/parent.img
cp $T/parent.img $T/expected.img
start_nbdkit $T/nbd.pid -U $T/sock --filter=log file $T/parent.img logfile=$T/nbd.log
st=$T/state mnt=$T/mnt
corfs_mount $st $mnt --parent-owned --stream=on --disk d="$(nbd_uri $T/sock)"
disk=$mnt/d
"$CORFS" stream --state $st d --wait >/dev/null || fail "stream --wait failed"

js () { "$CORFS" status --state $st d --json; }

# Dirty: 2 blocks (one whole, one by a 100-byte write inside block 40).
twin_write $disk $T/expected.img $((8 * bs)) $bs || fail "write at block 8 failed"
twin_write $disk $T/expected.img $((40 * bs + 1000)) 100 || fail "write in block 40 failed"
[ "$(js | jq -r .dirty_bytes)" = $((2 * bs)) ] || fail "dirty_bytes $(js | jq -r .dirty_bytes), expected $((2 * bs))"

crash_unmount $st $mnt

# Block 200 changes in the overlay, not in the index: present, not dirty.
head -c $bs /dev/urandom > $T/b200
dd if=$T/b200 of=$st/d.overlay bs=$bs seek=200 conv=notrunc,fsync status=none
dd if=$T/b200 of=$T/expected.img bs=$bs seek=200 conv=notrunc status=none

corfs_mount $st $mnt --disk d="$(nbd_uri $T/sock)"
s=$(js)
echo "after the remount: widened $(jq -r .widened <<<"$s"), suspect $(jq -r .suspect_bytes <<<"$s"), dirty $(jq -r .dirty_bytes <<<"$s")"
[ "$(jq -r .suspect_bytes <<<"$s")" = $size ] \
  || fail "suspect_bytes $(jq -r .suspect_bytes <<<"$s") after an unclean shutdown of a complete disk, expected $size"
cmp $disk $T/expected.img || fail "the disk does not read as expected after the remount"

writes_before=$(grep -c "Write " $T/nbd.log || true)
"$CORFS" merge --state $st d --wait || fail "merge --wait failed"
s=$(js)
echo "after the merge: $(jq -c '{dirty_bytes, suspect_bytes, writeback: .counters.writeback_bytes, equal: .counters.writeback_equal_bytes}' <<<"$s")"
[ "$(jq -r .dirty_bytes <<<"$s")" = 0 ] || fail "dirty_bytes $(jq -r .dirty_bytes <<<"$s") after synced"
[ "$(jq -r .suspect_bytes <<<"$s")" = 0 ] || fail "suspect_bytes $(jq -r .suspect_bytes <<<"$s") after synced"
cmp $T/parent.img $T/expected.img || fail "the parent differs from the disk after the merge"

# What the parent was sent: the two dirty blocks and block 200, nothing
# else (the log filter logs each write with its offset and count).
written=$(grep "Write " $T/nbd.log | tail -n +$((writes_before + 1)) \
          | sed -n 's/.* count=\(0x[0-9a-f]*\).*/\1/p' | while read -r c; do echo $((c)); done \
          | awk '{s += $1} END {print s + 0}')
echo "bytes written to the parent by the merge: $written"
[ "$written" = $((3 * bs)) ] || fail "the merge wrote $written bytes to the parent, expected $((3 * bs))"
[ "$(jq -r .counters.writeback_bytes <<<"$s")" = $((3 * bs)) ] \
  || fail "writeback_bytes $(jq -r .counters.writeback_bytes <<<"$s"), expected $((3 * bs))"
[ "$(jq -r .counters.writeback_equal_bytes <<<"$s")" = $((size - 3 * bs)) ] \
  || fail "writeback_equal_bytes $(jq -r .counters.writeback_equal_bytes <<<"$s"), expected $((size - 3 * bs))"
echo "PASS"
