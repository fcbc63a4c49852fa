#!/usr/bin/env bash
# A full overlay filesystem never turns a successful fetch into a failed
# read (src/cor/engine.c, fault_in and fetch_blocks), also for reads that
# span several missing runs with present blocks between them (which the
# single-fetch early reply of test-overlay-full.sh does not cover):
#  - the state directory sits on a 16 MiB tmpfs; every third 64 KiB block
#    of a 32 MiB disk is read first (present), then the tmpfs is filled;
#  - the whole disk read with O_DIRECT in 1 MiB requests, and buffered,
#    returns the parent's data; the blocks that could not be stored stay
#    missing (present_bytes unchanged), and the daemon logs the full
#    overlay once, naming the disk;
#  - `flatten --to FILE` (which reads through the engine in 1 MiB pieces)
#    completes and FILE equals the parent.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version
[ "$(id -u)" = 0 ] || skip "needs root to mount a small tmpfs"

MiB=1048576 bs=65536
img=$T/parent.img
head -c $((32 * MiB)) /dev/urandom > "$img"
start_nbdkit "$T/nbd.pid" -r -U "$T/sock" file "$img"

small=$T/small st=$T/small/state mnt=$T/mnt
mkdir -p "$small"
mount -t tmpfs -o size=16M tmpfs "$small" || skip "cannot mount a tmpfs here"
cleanup_fn umount -l "$small"
status () { "$CORFS" status --state "$st" d --json | jq -r "$@"; }

corfs_mount "$st" "$mnt" --disk d="$(nbd_uri "$T/sock")"
for ((b = 0; b < 32 * MiB / bs; b += 3)); do
  dd if="$mnt/d" of=/dev/null bs=$bs skip=$b count=1 iflag=direct status=none || fail "reading block $b failed"
done
sync "$mnt/d"
present=$(status .present_bytes)
echo "present before filling: $present"
dd if=/dev/zero of="$small/fill" bs=1M status=none 2>/dev/null || true
echo "free on the overlay's filesystem: $(df --output=avail -B1 "$small" | tail -1)"

cmp <(dd if="$mnt/d" bs=1M iflag=direct status=none) "$img" \
  || fail "an O_DIRECT read on a full overlay failed or returned wrong data"
cmp "$mnt/d" "$img" || fail "a buffered read on a full overlay failed or returned wrong data"
[ "$(status .present_bytes)" = "$present" ] \
  || fail "present_bytes $(status .present_bytes), was $present: blocks that could not be stored are present"
n=$(grep -c "disk d: overlay write .*reads are served from the parent" "$st/corfs.log" || true)
[ "$n" = 1 ] || fail "the full overlay was logged $n times, not once"

"$CORFS" flatten --state "$st" d --to "$T/copy.img" --wait 2> "$T/err" \
  || fail "flatten --to on a full overlay failed: $(cat "$T/err")"
cmp "$T/copy.img" "$img" || fail "the copy made on a full overlay differs from the parent"

rm -f "$small/fill"
corfs_unmount "$mnt" || fail "unmount failed"
echo OK
