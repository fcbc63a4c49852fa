#!/usr/bin/env bash
# Growing a disk (truncate to a larger size; QEMU's block_resize):
#  - a parent of 8 MiB + 1000 bytes (its last 64 KiB block short):
#    `truncate -s +64M` on the mounted disk grows it: stat, status `size`
#    the new size, `parent_size` the parent's; the log says so;
#  - the grown range reads zeros, and the bytes of the short last block
#    past the parent's end too; after the grow no byte is fetched (status
#    fetched_bytes) and the parent never sees a read past its end
#    (nbdkit's log filter);
#  - `dirty --since 1` covers the grown range;
#  - writes past the old end persist across a clean unmount and remount,
#    and across a kill -9 and remount; a grow acknowledged just before a
#    kill -9 is there after it; the disk reads as the parent, zeros and
#    the writes (a twin image);
#  - shrinking is refused (EINVAL, a log line naming the disk), and so is
#    a merge of the grown disk (the message says grown); flatten --to
#    copies the whole grown size;
#  - qemu-io's truncate (what block_resize does on a file) grows it too,
#    and qemu-img info reports the size;
#  - refused, with a log line naming the disk: a mirror-mode disk, a
#    parent-owned disk, an incoming disk; their size is unchanged;
#  - a grown disk whose parent's size then changes is refused at mount
#    (the parent is still checked against its own size); with the parent
#    back as it was, it mounts at the grown size;
#  - an overlay longer than the recorded size with nothing past the disk
#    (a grow killed between extending the overlay and its commit) is cut
#    back at mount; one with data there is refused.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires nbdkit --filter=log null --dump-plugin
requires fusermount3 --version
requires jq --version

bs=65536 psize=$((8 * 1048576 + 1000)) grow=$((64 * 1048576))
head -c $psize /dev/urandom > $T/parent.img
cp $T/parent.img $T/expect.img
start_nbdkit $T/nbd.pid -U $T/sock --filter=log file $T/parent.img logfile=$T/nbd.log
st=$T/state mnt=$T/mnt
corfs_mount $st $mnt --block-size 64K --disk d="$(nbd_uri $T/sock)"
disk=$mnt/d
log=$st/corfs.log
js () { "$CORFS" status --state $st d --json | jq -r "$@"; }

# no_read_past_end: nbdkit's log has no read ending past the parent's end.
no_read_past_end () {
  python3 - $psize $T/nbd.log <<'PY' || fail "the parent was asked for bytes past its end"
import re, sys
end, reads = int(sys.argv[1]), 0
for line in open(sys.argv[2]):
    m = re.search(r'Read id=\d+ offset=(0x[0-9a-f]+|\d+) count=(0x[0-9a-f]+|\d+)', line)
    if m:
        reads += 1
        if int(m.group(1), 0) + int(m.group(2), 0) > end:
            sys.exit(f"read past the parent's end ({end}): {line.strip()}")
if not reads:
    sys.exit("no read in nbdkit's log: is its format understood?")
PY
}

echo "=== grow by 64 MiB"
dd if=$disk of=/dev/null bs=64K count=1 status=none
truncate -s +$grow $disk || fail "truncate -s +64M refused"
new=$((psize + grow))
[ "$(stat -c %s $disk)" = $new ] || fail "size $(stat -c %s $disk) after the grow, expected $new"
[ "$(js .size)" = $new ] || fail "status size $(js .size), expected $new"
[ "$(js .parent_size)" = $psize ] || fail "status parent_size $(js .parent_size), expected $psize"
grep -q "disk d: grown from $psize to $new bytes" $log || fail "no log line for the grow"
truncate -s $new $T/expect.img
fetched=$(js .counters.fetched_bytes)

echo "=== the grown range reads zeros, without a fetch"
cmp <(dd if=$disk bs=1M iflag=skip_bytes skip=$psize status=none) \
    <(head -c $grow /dev/zero) || fail "the grown range does not read zeros"
cmp <(dd if=$disk bs=64K iflag=skip_bytes,direct skip=$((psize / bs * bs)) count=2 status=none) \
    <(dd if=$T/expect.img bs=64K iflag=skip_bytes skip=$((psize / bs * bs)) count=2 status=none) \
  || fail "the parent's last block and the one after read wrong"
[ "$(js .counters.fetched_bytes)" = $fetched ] \
  || fail "reading the grown range fetched $(( $(js .counters.fetched_bytes) - fetched )) bytes"
no_read_past_end

echo "=== dirty --since 1 covers the grown range"
"$CORFS" dirty --state $st d --since 1 --json > $T/dirty.json || fail "dirty failed"
python3 - $psize $new $bs $T/dirty.json <<'PY' || fail "dirty --since 1 misses the grown range"
import json, sys
p, n, bs, path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
first = (p + bs - 1) // bs * bs
ext = json.load(open(path))["extents"]
if not any(e["offset"] <= first and e["offset"] + e["length"] >= n for e in ext):
    sys.exit(f"no extent covers [{first}, {n}): {ext}")
PY

echo "=== writes past the old end survive a clean remount"
twin_write $disk $T/expect.img $((psize + 1048576 + 7)) 300000 || fail "write past the old end failed"
twin_write $disk $T/expect.img $((psize - 100)) 4096 || fail "write across the old end failed"
corfs_unmount $mnt
corfs_mount $st $mnt
[ "$(stat -c %s $disk)" = $new ] || fail "size $(stat -c %s $disk) after a remount, expected $new"
cmp $disk $T/expect.img || fail "the disk differs from the expected image after a remount"
no_read_past_end

echo "=== ... and a kill -9; a grow acknowledged before the kill stays"
twin_write $disk $T/expect.img $((psize + 10 * 1048576)) 65536 || fail "write failed"
truncate -s +1M $disk || fail "second grow refused"
new=$((new + 1048576)); truncate -s $new $T/expect.img
crash_unmount $st $mnt
corfs_mount $st $mnt
[ "$(stat -c %s $disk)" = $new ] || fail "size $(stat -c %s $disk) after a kill -9, expected $new"
cmp $disk $T/expect.img || fail "the disk differs from the expected image after a kill -9"
twin_write $disk $T/expect.img $((new - 5000)) 5000 || fail "write at the new end failed"

echo "=== shrink refused; merge refused; flatten --to copies it all"
rc=0; truncate -s $((new - 65536)) $disk 2> $T/err || rc=$?
[ $rc -ne 0 ] || fail "shrinking was accepted"
grep -q "Invalid argument" $T/err || fail "shrink: $(cat $T/err), expected Invalid argument"
grep -q "disk d: resize from $new to $((new - 65536)) bytes refused: shrinking" $log \
  || fail "no log line for the refused shrink"
[ "$(stat -c %s $disk)" = $new ] || fail "the refused shrink changed the size"
rc=0; "$CORFS" merge --state $st d --parent-owned --wait 2> $T/err || rc=$?
[ $rc -ne 0 ] || fail "a merge of the grown disk was accepted"
grep -q "grown" $T/err || fail "the merge refusal does not say grown: $(cat $T/err)"
"$CORFS" flatten --state $st d --to $T/flat.img --wait || fail "flatten --to failed"
cmp $T/flat.img $T/expect.img || fail "flatten --to differs from the expected image"
no_read_past_end

echo "=== qemu-io truncate (block_resize on a file)"
if command -v qemu-io >/dev/null && command -v qemu-img >/dev/null; then
  # qemu-img reports sizes in whole 512-byte sectors: grow to a multiple.
  new2=$(( (new / 1048576 + 16) * 1048576 ))
  qemu-io -f raw -c "truncate $new2" $disk || fail "qemu-io truncate failed"
  [ "$(qemu-img info --output=json -f raw $disk | jq .\"virtual-size\")" = $new2 ] \
    || fail "qemu-img info: $(qemu-img info -f raw $disk)"
  truncate -s $new2 $T/expect.img
  cmp $disk $T/expect.img || fail "the disk differs after qemu-io's truncate"
else
  echo "(no qemu-io: skipped)"
fi
corfs_unmount $mnt

echo "=== refused: mirror, parent-owned, incoming"
# refused_grow STATE MNT WHAT: truncate +1M on MNT/d fails, the size stays,
# and the daemon's log names the disk and WHAT.
refused_grow () {
  local size; size=$(stat -c %s $2/d)
  truncate -s +1M $2/d 2>/dev/null && fail "growing a $3 disk was accepted"
  [ "$(stat -c %s $2/d)" = $size ] || fail "the refused grow changed the $3 disk's size"
  grep -q "disk d: resize from $size to $((size + 1048576)) bytes refused: .*$3" $1/corfs.log \
    || fail "no log line naming the $3 refusal: $(grep refused $1/corfs.log)"
}
cp $T/parent.img $T/p2.img
start_nbdkit $T/nbd2.pid -U $T/sock2 file $T/p2.img
corfs_mount $T/s1 $T/m1 --write-mode=mirror --parent-owned --disk d="$(nbd_uri $T/sock2)"
refused_grow $T/s1 $T/m1 mirror
corfs_unmount $T/m1
corfs_mount $T/s2 $T/m2 --parent-owned --disk d="$(nbd_uri $T/sock2)"
refused_grow $T/s2 $T/m2 parent-owned
corfs_unmount $T/m2
corfs_mount $T/s3 $T/m3 --incoming --disk d="$(nbd_uri $T/sock2)"
refused_grow $T/s3 $T/m3 incoming
corfs_unmount $T/m3

echo "=== the parent's size is still checked at mount"
cp $T/parent.img $T/p3.img
start_nbdkit $T/nbd3.pid -U $T/sock3 file $T/p3.img
corfs_mount $T/s4 $T/m4 --block-size 64K --disk d="$(nbd_uri $T/sock3)"
truncate -s +2M $T/m4/d || fail "grow refused"
corfs_unmount $T/m4
truncate -s $((psize + 4096)) $T/p3.img
rc=0; "$CORFS" mount --state $T/s4 --stream=off $T/m4 2> $T/err || rc=$?
is_mounted $T/m4 && fail "a grown disk mounted over a parent whose size changed"
[ $rc -ne 0 ] || fail "the mount over a changed parent succeeded"
# The pinned identity holds the size, so it is what refuses first.
grep -qE "parent changed \(pinned nbd:size=$psize,.*found nbd:size=$((psize + 4096))|has size $((psize + 4096)) but" \
  $T/err $T/s4/corfs.log || fail "no message about the parent's changed size: $(cat $T/err)"
truncate -s $psize $T/p3.img
corfs_mount $T/s4 $T/m4
[ "$(stat -c %s $T/m4/d)" = $((psize + 2097152)) ] || fail "remounted at $(stat -c %s $T/m4/d) bytes"
cmp <(head -c $psize $T/m4/d) $T/parent.img || fail "the grown disk's parent range differs"
corfs_unmount $T/m4

echo "=== an overlay extended by a grow that was not recorded"
truncate -s +1M $T/s4/d.overlay
corfs_mount $T/s4 $T/m4
[ "$(stat -c %s $T/m4/d)" = $((psize + 2097152)) ] || fail "mounted at $(stat -c %s $T/m4/d) bytes"
grep -q "a grow that was not recorded" $T/s4/corfs.log || fail "no log line for the cut overlay"
[ "$(stat -c %s $T/s4/d.overlay)" = $((psize + 2097152)) ] || fail "the overlay was not cut back"
corfs_unmount $T/m4
printf x | dd of=$T/s4/d.overlay bs=1 seek=$((psize + 4 * 1048576)) conv=notrunc status=none
"$CORFS" mount --state $T/s4 --stream=off $T/m4 2> $T/err && fail "an overlay with data past the disk was accepted"
is_mounted $T/m4 && fail "mounted over an overlay with data past the disk"
echo "PASS"
