#!/usr/bin/env bash
# A copy (`flatten --to FILE`) started again after a failure continues its
# partial file, and the result is the disk as it is then
# (src/merge/merge.c copy_prepare/copy_changed/copy_open):
#  - what the guest wrote in [0, done) between the runs (data, and a
#    whole MiB of zeros, which the copy leaves a hole) is copied again
#    (before, the continued copy kept the first run's bytes there);
#  - a record whose progress cannot be trusted (done past the disk's end)
#    starts over, and nothing of the old partial file survives where the
#    disk reads zeros (before, start reset to 0 left stale data in zero
#    pieces);
#  - a partial file with the recorded device and inode but without the
#    cookie the copy gave it (a new file that got the inode of ours: here,
#    ours with the cookie's xattr removed) is refused and left alone.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version

MiB=1048576
img=$T/parent.img
head -c $((8 * MiB)) /dev/urandom > $img
start_nbdkit $T/nbd.pid -r -U $T/sock file $img
st=$T/state mnt=$T/mnt
corfs_mount $st $mnt --hold 2 --disk e="$(nbd_uri $T/sock)" --disk f="$(nbd_uri $T/sock)" \
  --disk g="$(nbd_uri $T/sock)"
stop_parent () { local p; p=$(cat $T/nbd.pid); kill -9 $p; wait_gone $p; rm -f $T/sock; }
flatten_to () { "$CORFS" flatten --state $st $1 --to "$2" --wait; }

# A first run that fails at 3 MiB: blocks before it present, the parent gone.
dd if=$mnt/e of=/dev/null bs=1M count=3 iflag=direct status=none
dd if=$mnt/f of=/dev/null bs=1M count=3 iflag=direct status=none
stop_parent
for x in e f g; do
  flatten_to $x $T/$x.img 2>/dev/null && fail "the copy of $x succeeded with the parent stopped"
  [ -f $T/$x.img.partial ] || fail "no partial file after the failed copy of $x"
done

### 1. Writes between the runs, inside what the first run copied.
head -c 4096 /dev/urandom > $T/data
dd if=$T/data of=$mnt/e bs=4096 seek=$((MiB + 8192)) oflag=seek_bytes,direct conv=notrunc,fsync \
   status=none || fail "write to e failed"
dd if=/dev/zero of=$mnt/e bs=1M seek=2 count=1 oflag=direct conv=notrunc,fsync status=none \
   || fail "zero write to e failed"
start_nbdkit $T/nbd.pid -r -U $T/sock file $img
flatten_to e $T/e.img || fail "the continued copy of e failed"
grep -q "continuing the copy to $T/e.img at offset [1-9]" $st/corfs.log \
  || fail "the copy of e did not continue its partial file"
cmp $T/e.img $mnt/e || fail "the continued copy differs from the disk (writes between the runs lost)"

### 2. A record whose progress is past the disk's end: start over.
dd if=/dev/zero of=$mnt/f bs=1M seek=1 count=1 oflag=direct conv=notrunc,fsync status=none \
   || fail "zero write to f failed"
# The third field is the durable progress (bytes).
awk '{ $3 = "4611686018427387904"; print }' $st/f.copy > $T/rec && cp $T/rec $st/f.copy
flatten_to f $T/f.img || fail "the copy of f started again failed"
cmp $T/f.img $mnt/f || fail "the copy started over differs from the disk (stale data in its holes)"
### 3. The same inode, not the same file.
python3 - $T/g.img.partial <<'PY' || skip "no user xattrs here"
import errno, os, sys
try:
    os.removexattr(sys.argv[1], "user.corfs.copy")
except OSError as e:
    if e.errno != errno.ENODATA:   # none: a build that sets no cookie
        raise
PY
sum=$(md5sum < $T/g.img.partial)
rc=0; flatten_to g $T/g.img 2> $T/err || rc=$?
echo "continuing over a partial file without its cookie: exit $rc: $(cat $T/err)"
[ $rc -ne 0 ] || fail "a partial file without the copy's cookie was taken over"
grep -q "is not the partial copy" $T/err || fail "the refusal does not say why: $(cat $T/err)"
[ "$(md5sum < $T/g.img.partial)" = "$sum" ] || fail "the refused partial file was written"
pid=$(daemon_pid $st)
corfs_unmount $mnt || fail "unmount failed"
wait_gone $pid
echo OK
