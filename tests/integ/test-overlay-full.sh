#!/usr/bin/env bash
# A full overlay filesystem loses nothing and serves no wrong data
# (src/cor/engine.c: fetch_blocks, modify):
#  - the state directory sits on a 24 MiB tmpfs, the disk is 64 MiB of
#    random data: reading the whole disk fills the overlay part-way, and
#    every read still returns the parent's data (a cold read replies from
#    the fetch buffer; blocks that could not be stored stay missing);
#  - a 4 MiB fsync'd write then fails with ENOSPC (not silently dropped),
#    and the daemon says so in its log, naming the disk and offset;
#  - after a clean unmount, with the tmpfs grown, a remount reads back the
#    image everywhere except that each 64 KiB block of the failed write
#    is either all old or all new data; the same write now succeeds and
#    persists across another remount.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version
[ "$(id -u)" = 0 ] || skip "needs root to mount a small tmpfs"

MiB=1048576 bs=65536
img=$T/parent.img new=$T/new.bin sock=$T/nbd.sock
head -c $((64 * MiB)) /dev/urandom > "$img"
head -c $((4 * MiB)) /dev/urandom > "$new"
start_nbdkit "$T/nbd.pid" -r -U "$sock" file "$img"

small=$T/small st=$T/small/state mnt=$T/mnt
mkdir -p "$small"
mount -t tmpfs -o size=24M tmpfs "$small" || skip "cannot mount a tmpfs here"
cleanup_fn umount -l "$small"

corfs_mount "$st" "$mnt" --disk d="$(nbd_uri "$sock")"
cmp "$mnt/d" "$img" || fail "with the overlay filling up, a read failed or returned data that is not the parent's"
avail=$(df --output=avail -B1 "$small" | tail -1)
echo "after reading everything: $avail bytes free on the overlay's filesystem, present $("$CORFS" status --state "$st" d --json | jq -r .present_bytes)"
[ "$avail" -lt $((2 * MiB)) ] || fail "the overlay's filesystem did not fill up ($avail bytes free): the test proves nothing"

rc=0
dd if="$new" of="$mnt/d" bs=1M seek=40 conv=notrunc,fsync status=none 2>"$T/dd.err" || rc=$?
cat "$T/dd.err"
[ $rc -ne 0 ] || fail "a 4 MiB write into a full overlay succeeded"
grep -q "No space left" "$T/dd.err" || fail "the failed write did not report ENOSPC: $(cat "$T/dd.err")"
grep -q "disk d: .*offset [0-9]*: No space left on device" "$st/corfs.log" ||
  fail "the daemon log does not name the disk and offset of the failed overlay write"

corfs_unmount "$mnt" || fail "clean unmount with a full overlay failed"
mount -o remount,size=256M "$small" || fail "cannot grow the tmpfs"

corfs_mount "$st" "$mnt"
cp "$mnt/d" "$T/after.img"
python3 - "$T/after.img" "$img" "$new" $((40 * MiB)) $bs <<'EOF' || fail "the disk after the failed write is not old-or-new per block"
import sys
after, old, new = (open(p, "rb").read() for p in sys.argv[1:4])
at, bs = int(sys.argv[4]), int(sys.argv[5])
assert len(after) == len(old), "size changed"
if after[:at] != old[:at] or after[at + len(new):] != old[at + len(new):]:
    sys.exit("data outside the failed write changed")
mixed = 0
for o in range(0, len(new), bs):
    a, b, c = after[at + o:at + o + bs], old[at + o:at + o + bs], new[o:o + bs]
    if a != b and a != c:
        sys.exit("block at offset %d is neither the old nor the new data" % (at + o))
    mixed += a == c
print("failed write: %d of %d blocks hold the new data" % (mixed, len(new) // bs))
EOF

dd if="$new" of="$mnt/d" bs=1M seek=40 conv=notrunc,fsync status=none || fail "the write failed with space available"
corfs_unmount "$mnt" || fail "corfs unmount failed"
corfs_mount "$st" "$mnt"
cmp <(head -c $((40 * MiB)) "$mnt/d") <(head -c $((40 * MiB)) "$img") || fail "data before the write changed"
cmp <(tail -c +$((40 * MiB + 1)) "$mnt/d" | head -c $((4 * MiB))) "$new" || fail "the write did not persist"
cmp <(tail -c +$((44 * MiB + 1)) "$mnt/d") <(tail -c +$((44 * MiB + 1)) "$img") || fail "data after the write changed"
corfs_unmount "$mnt" || fail "corfs unmount failed"
echo OK
