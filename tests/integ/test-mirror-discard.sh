#!/usr/bin/env bash
# Mirror mode, a discard of a large range (fstrim, mkfs): the parent must
# read zeros there too, without the daemon allocating the range
# (src/cor/engine.c, mirror_write; remote_pwrite_zeros):
#  - a 2 GiB disk over an nbdkit memory parent; two fsync'd writes, then
#    fallocate --punch-hole over 1.0625 GiB covering both, and fsync: both
#    succeed within the hold (the old code sent the range as one write of
#    calloc'd zeros, with one deadline);
#  - the daemon's peak resident size grew by less than 256 MiB;
#  - the range reads as zeros through the mount, and the parent reads
#    zeros there as well (nbdcopy), while a write outside it survives;
#  - the same, over 256 MiB, with a parent that offers no zeroing (nbdkit's
#    nozero filter): the zeros are written from a small buffer.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires nbdcopy --version
requires fusermount3 --version
requires jq --version

MiB=1048576 GiB=$((1024 * 1048576))
start_nbdkit $T/nbd.pid -U $T/sock memory $((2 * GiB))
uri=$(nbd_uri $T/sock)
st=$T/state mnt=$T/mnt
corfs_mount $st $mnt --write-mode=mirror --parent-owned --hold 5 --disk d="$uri"

head -c $MiB /dev/urandom > $T/w
for off in $((100 * MiB)) $((GiB + 7 * MiB)) $((1900 * MiB)); do
  dd if=$T/w of=$mnt/d bs=$MiB seek=$off oflag=seek_bytes conv=notrunc,fsync status=none \
    || fail "write at $off failed"
done

pid=$(daemon_pid $st)
peak () { awk '/^VmHWM:/ { print $2 * 1024 }' /proc/$pid/status; }
before=$(peak)
start=$(date +%s%N)
fallocate -p -o $((64 * MiB)) -l $((GiB + 64 * MiB)) $mnt/d || fail "punching 1.0625 GiB failed"
sync $mnt/d || fail "fsync after the discard failed"
after=$(peak)
echo "discard + fsync took $(( ($(date +%s%N) - start) / 1000000 )) ms; VmHWM $before -> $after"
[ $((after - before)) -lt $((256 * MiB)) ] \
  || fail "the daemon's peak resident size grew by $(( (after - before) / MiB )) MiB for the discard"

zeros () { cmp -s <(dd if="$1" bs=$MiB skip=$(($2 / MiB)) count=1 status=none) <(head -c $MiB /dev/zero); }
for off in $((100 * MiB)) $((GiB + 7 * MiB)); do
  zeros $mnt/d $off || fail "the disk does not read zeros at $off after the discard"
done
cmp <(dd if=$mnt/d bs=$MiB skip=1900 count=1 status=none) $T/w || fail "the write outside the discard changed"
nbdcopy "$uri" $T/parent.raw || fail "nbdcopy of the parent failed"
for off in $((100 * MiB)) $((GiB + 7 * MiB)); do
  zeros $T/parent.raw $off || fail "the parent does not read zeros at $off after the discard"
done
cmp <(dd if=$T/parent.raw bs=$MiB skip=1900 count=1 status=none) $T/w || fail "the parent lost the write outside the discard"
rm -f $T/parent.raw
[ "$("$CORFS" status --state $st d --json | jq -r .dirty_bytes)" = 0 ] || fail "dirty bytes left after the discard reached the parent"
corfs_unmount $mnt || fail "unmount failed"
wait_gone $pid

### A parent that offers no zeroing (nbdkit's nozero filter): zeros are
# written, from a small buffer.
start_nbdkit $T/nbd2.pid -U $T/sock2 --filter=nozero memory $GiB
uri=$(nbd_uri $T/sock2)
st=$T/state2 mnt=$T/mnt2
corfs_mount $st $mnt --write-mode=mirror --parent-owned --hold 5 --disk d="$uri"
dd if=$T/w of=$mnt/d bs=$MiB seek=$((300 * MiB)) oflag=seek_bytes conv=notrunc,fsync status=none \
  || fail "write (no zeroing) failed"
pid=$(daemon_pid $st)
before=$(peak)
fallocate -p -o $((256 * MiB)) -l $((256 * MiB)) $mnt/d || fail "punching 256 MiB (no zeroing) failed"
sync $mnt/d || fail "fsync after the discard (no zeroing) failed"
after=$(peak)
echo "no zeroing: VmHWM $before -> $after"
[ $((after - before)) -lt $((128 * MiB)) ] \
  || fail "the daemon's peak resident size grew by $(( (after - before) / MiB )) MiB for the discard (no zeroing)"
zeros $mnt/d $((300 * MiB)) || fail "the disk (no zeroing) does not read zeros after the discard"
nbdcopy "$uri" $T/parent.raw || fail "nbdcopy of the parent (no zeroing) failed"
zeros $T/parent.raw $((300 * MiB)) || fail "the parent (no zeroing) does not read zeros after the discard"
rm -f $T/parent.raw
corfs_unmount $mnt || fail "unmount (no zeroing) failed"
echo OK
