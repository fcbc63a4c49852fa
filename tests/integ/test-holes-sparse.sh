#!/usr/bin/env bash
# Proves corfs keeps sparse images sparse and handles holes end to end:
#  - streaming a 1 GiB parent that is mostly holes (nbdkit file reports
#    them through NBD base:allocation) skips the zero extents instead of
#    reading them: counters.zero_skipped_bytes >= 900 MiB,
#    background_fetched_bytes <= 64 MiB, the overlay allocates < 128 MiB,
#    and the disk equals the image;
#  - fallocate punch-hole and zero-range on the disk file (aligned and
#    unaligned ranges, inside data and across a data/hole boundary) give
#    the same bytes as the same fallocate on a local sparse copy;
#  - SEEK_DATA/SEEK_HOLE: every hole the mount reports reads as zeros, so
#    the data ranges cover every non-zero byte; on a cold (--stream=off)
#    mount SEEK_HOLE at 0 is the end (missing blocks count as data) or a
#    position that reads as zeros, and SEEK_DATA at 0 is 0.
# If the kernel answers EOPNOTSUPP for fallocate on the FUSE file, that
# part is skipped with a message.
. "$(dirname "$0")/../functions.sh"

requires nbdkit --version
requires fusermount3 --version
requires jq --version
requires python3 --version
requires fallocate --version

MiB=$((1 << 20))
SIZE=$((1024 * MiB))
img=$T/parent.img sock=$T/nbd.sock
truncate -s $SIZE "$img"
for off in 0 $((100 * MiB + 12345)) $((512 * MiB)) $((SIZE - 8 * MiB)); do
  head -c $((8 * MiB)) /dev/urandom |
    dd of="$img" bs=1M seek=$off oflag=seek_bytes conv=notrunc iflag=fullblock status=none
done
[ "$(stat -c %s "$img")" -eq $SIZE ] || fail "the parent image is not $SIZE bytes"
echo "parent: $(( $(stat -c %b "$img") * $(stat -c %B "$img") / MiB )) MiB allocated of $((SIZE / MiB)) MiB"
start_nbdkit "$T/nbd.pid" -r -U "$sock" file "$img"
url=$(nbd_uri "$sock")

st=$T/state mnt=$T/mnt
jfield () { "$CORFS" status --state "$st" d --json | jq -r "$1"; }

# --- 1. stream a sparse parent -------------------------------------------
corfs_mount "$st" "$mnt" --stream=on --disk d="$url"
rc=0; timeout 120 "$CORFS" stream --state "$st" d --wait || rc=$?
[ $rc -eq 0 ] || fail "corfs stream --wait exited $rc"
s=$("$CORFS" status --state "$st" d --json)
echo "$s" | jq -c '{complete, present_bytes, counters, stream: .stream.state}'
[ "$(echo "$s" | jq -r .complete)" = true ] || fail "not complete after --wait"
zs=$(echo "$s" | jq -r .counters.zero_skipped_bytes)
bg=$(echo "$s" | jq -r .counters.background_fetched_bytes)
[ "$zs" -ge $((900 * MiB)) ] || fail "counters.zero_skipped_bytes is $zs (< 900 MiB): the parent's holes were read"
[ "$bg" -le $((64 * MiB)) ] || fail "counters.background_fetched_bytes is $bg (> 64 MiB) for 32 MiB of data"
alloc=$(( $(stat -c %b "$st/d.overlay") * $(stat -c %B "$st/d.overlay") ))
echo "overlay: $alloc bytes allocated"
[ "$alloc" -lt $((128 * MiB)) ] || fail "the overlay allocates $alloc bytes (>= 128 MiB) for a sparse image"
cmp "$mnt/d" "$img" || fail "the streamed sparse disk differs from the image"

# --- 2. fallocate punch / zero ------------------------------------------
copy=$T/copy.img
cp --sparse=always "$img" "$copy"
# region_same OFF LEN: the disk and the copy agree around [OFF, OFF+LEN),
# read buffered and with O_DIRECT (1 MiB aligned, 1 MiB margin).
region_same () {
  local lo=$(( ($1 / MiB - 1) * MiB )) hi=$(( (($1 + $2 + MiB - 1) / MiB + 1) * MiB ))
  [ $lo -ge 0 ] || lo=0
  [ $hi -le $SIZE ] || hi=$SIZE
  cmp <(dd if="$mnt/d" bs=1M skip=$((lo / MiB)) count=$(( (hi - lo) / MiB )) status=none) \
      <(dd if="$copy" bs=1M skip=$((lo / MiB)) count=$(( (hi - lo) / MiB )) status=none) ||
    return 1
  cmp <(dd if="$mnt/d" bs=1M skip=$((lo / MiB)) count=$(( (hi - lo) / MiB )) iflag=direct status=none) \
      <(dd if="$copy" bs=1M skip=$((lo / MiB)) count=$(( (hi - lo) / MiB )) status=none)
}
done_ops=0 skipped_ops=()
# falloc_both FLAG OFF LEN: fallocate FLAG on the disk and the copy, then compare.
falloc_both () {
  local flag=$1 off=$2 len=$3 rc=0
  fallocate "$flag" -o "$off" -l "$len" "$mnt/d" 2> "$T/falloc.err" || rc=$?
  if [ $rc -ne 0 ]; then
    if grep -qi "not supported" "$T/falloc.err"; then
      echo "fallocate $flag on the FUSE file: EOPNOTSUPP ($(cat "$T/falloc.err")): skipped"
      skipped_ops+=("$flag -o $off -l $len")
      return 0
    fi
    fail "fallocate $flag -o $off -l $len on the disk failed: $(cat "$T/falloc.err")"
  fi
  fallocate "$flag" -o "$off" -l "$len" "$copy" || fail "fallocate $flag on the local copy failed"
  [ "$(stat -c %s "$mnt/d")" -eq $SIZE ] || fail "fallocate $flag -o $off -l $len changed the disk size to $(stat -c %s "$mnt/d")"
  region_same "$off" "$len" || fail "after fallocate $flag -o $off -l $len the disk differs from the local copy"
  done_ops=$((done_ops + 1))
  echo "fallocate $flag -o $off -l $len: same as the local copy"
}
falloc_both -p 12345 100000                           # unaligned, inside data
falloc_both -z $((1 * MiB)) $((4 * MiB))              # aligned, inside data
falloc_both -p $((512 * MiB + MiB)) $((4 * MiB))      # aligned, inside data
falloc_both -z 12345 100000                           # unaligned, over the punched range
falloc_both -z $((SIZE - 8 * MiB + 777)) 1234567      # unaligned, inside data
falloc_both -p $((8 * MiB - 100000)) 300000           # across the data/hole boundary
falloc_both -z $((100 * MiB)) $((3 * MiB))            # unaligned data start inside
falloc_both -p $((300 * MiB + 4097)) 8191             # inside a hole, tiny, unaligned
falloc_both -z $((SIZE - 65536 - 1000)) $((65536 + 1000))  # up to the very end
if [ $done_ops -gt 0 ]; then
  cmp "$mnt/d" "$copy" || fail "after the fallocates the disk differs from the local copy"
  [ "$(jfield .complete)" = true ] || fail "the disk is not complete after punch/zero"
  [ "$(jfield .dirty_bytes)" -gt 0 ] || fail "dirty_bytes is 0 after punch/zero"
  echo "fallocate: $done_ops ranges checked"
fi
[ ${#skipped_ops[@]} -eq 0 ] || echo "SKIPPED (EOPNOTSUPP): ${skipped_ops[*]}"

# --- 3. SEEK_DATA / SEEK_HOLE on the complete disk ----------------------
seek_walk () {       # FILE REFERENCE: walk FILE's data/hole map, check it
  python3 - "$1" "$2" "$SIZE" <<'EOF'
import errno, os, sys
path, ref, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
fd = os.open(path, os.O_RDONLY); rfd = os.open(ref, os.O_RDONLY)
CH = 1 << 20
def zeros(f, lo, hi):
    pos = lo
    while pos < hi:
        n = min(CH, hi - pos)
        b = os.pread(f, n, pos)
        if len(b) != n:
            return pos + len(b), "short read"
        if b.count(0) != n:
            return pos + next(i for i, c in enumerate(b) if c), "non-zero byte"
        pos += n
    return None, None
off, data, holes, n = 0, 0, 0, 0
while off < size and n < 1000000:
    n += 1
    try:
        d = os.lseek(fd, off, os.SEEK_DATA)
    except OSError as e:
        if e.errno != errno.ENXIO:
            raise
        d = size
    if d < off or d > size:
        print(f"FAIL: SEEK_DATA from {off} returned {d}"); sys.exit(1)
    if d > off:          # a hole [off, d)
        for f, what in ((fd, "the disk"), (rfd, "the reference copy")):
            at, why = zeros(f, off, d)
            if at is not None:
                print(f"FAIL: SEEK_DATA said [{off}, {d}) is a hole but {what} has a {why} at {at}"); sys.exit(1)
        holes += d - off
    if d >= size:
        break
    h = os.lseek(fd, d, os.SEEK_HOLE)
    if h <= d or h > size:
        print(f"FAIL: SEEK_HOLE from data at {d} returned {h}"); sys.exit(1)
    data += h - d
    off = h
print(f"seek walk: {n} data ranges, {data} data bytes, {holes} hole bytes")
if data + holes != size:
    print(f"FAIL: data {data} + holes {holes} != size {size}"); sys.exit(1)
print(f"HOLES {holes}")
EOF
}
out=$(seek_walk "$mnt/d" "$copy") || fail "$(echo "$out" | grep FAIL)"
echo "$out"
holes=$(echo "$out" | sed -n 's/^HOLES //p')
[ "$holes" -ge $((900 * MiB)) ] || fail "SEEK_HOLE reports only $holes hole bytes on a complete sparse disk (expected >= 900 MiB)"
corfs_unmount "$mnt" || fail "corfs unmount failed"

# --- 4. SEEK_HOLE on a cold disk -----------------------------------------
st2=$T/state2 mnt2=$T/mnt2
corfs_mount "$st2" "$mnt2" --stream=off --disk d="$url"
python3 - "$mnt2/d" "$SIZE" <<'EOF' || fail "SEEK on a cold disk"
import os, sys
path, size = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDONLY)
d = os.lseek(fd, 0, os.SEEK_DATA)
if d != 0:
    print(f"FAIL: cold disk: SEEK_DATA at 0 returned {d} (missing blocks count as data: 0)"); sys.exit(1)
h = os.lseek(fd, 0, os.SEEK_HOLE)
print(f"cold disk: SEEK_HOLE at 0 returned {h} (size {size})")
if h != size:
    if not 0 < h < size:
        print(f"FAIL: cold disk: SEEK_HOLE at 0 returned {h}"); sys.exit(1)
    b = os.pread(fd, 4096, h)
    if b.count(0) != len(b):
        print(f"FAIL: cold disk: SEEK_HOLE at 0 returned {h}, which does not read as zeros"); sys.exit(1)
# SEEK_HOLE in the middle of the last (missing) block: size.
h = os.lseek(fd, size - 100, os.SEEK_HOLE)
if h != size and os.pread(fd, size - h, h).count(0) != size - h:
    print(f"FAIL: cold disk: SEEK_HOLE at size-100 returned {h}, which does not read as zeros"); sys.exit(1)
try:
    r = os.lseek(fd, size, os.SEEK_DATA)
    print(f"FAIL: SEEK_DATA at the end returned {r} (expected ENXIO)"); sys.exit(1)
except OSError as e:
    if e.errno != 6:
        print(f"FAIL: SEEK_DATA at the end: {e} (expected ENXIO)"); sys.exit(1)
EOF
# What it read is right.
cmp <(dd if="$mnt2/d" bs=1M count=16 iflag=direct status=none) <(dd if="$img" bs=1M count=16 status=none) ||
  fail "cold disk: the first 16 MiB differ from the image"
# Punch and zero on cold blocks: the partly covered edge blocks keep their
# other bytes (fetched from the parent), the rest reads as zeros.
cp --sparse=always "$img" "$T/copy2.img"
mnt=$mnt2 copy=$T/copy2.img
falloc_both -p $((512 * MiB + 3 * 65536 + 100)) 200000    # cold, unaligned, in data
falloc_both -z $((100 * MiB + 12345 + 70000)) 333333       # cold, unaligned, in data
falloc_both -z $((SIZE - 8 * MiB - 5000)) 10000            # cold, across hole/data
falloc_both -p $((16 * MiB)) $((2 * MiB))                  # cold, aligned, hole
st=$st2
[ "$(jfield .complete)" = false ] || fail "cold disk: complete after a few fallocates"
corfs_unmount "$mnt2" || fail "corfs unmount (cold) failed"

[ ${#skipped_ops[@]} -eq 0 ] || echo "SKIPPED (EOPNOTSUPP): ${skipped_ops[*]}"
[ $done_ops -gt 0 ] || [ ${#skipped_ops[@]} -eq 0 ] || echo "note: every fallocate was skipped (EOPNOTSUPP)"
echo OK
