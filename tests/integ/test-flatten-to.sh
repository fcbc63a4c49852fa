#!/usr/bin/env bash
# `flatten --to FILE` (src/merge/merge.c, copy jobs):
#  - the copy is mode 0600 and equals the disk; no FILE.partial is left;
#  - a copy that fails half-way (the parent stopped) leaves an existing
#    FILE as it was and FILE.partial (0600); run again with the parent
#    back and the daemon restarted, it continues that partial file from
#    where it was durable (the log says so) and replaces FILE with the
#    whole copy;
#  - a FILE.partial that is not the recorded one (replaced by another
#    file, or a symlink to another file) is refused and left alone, and the
#    file a symlink points to is never written;
#  - a symlink at FILE is refused (it may name a device, as /dev/vg/lv
#    does), and neither it nor its target is touched;
#  - targets in the state directory (the overlay, the index, a new name)
#    and the disk's file:// parent (by name, and through a symlink) are
#    refused, naming why, and left unchanged.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version

MiB=1048576
img=$T/parent.img
head -c $((8 * MiB)) /dev/urandom > $img
start_nbdkit $T/nbd.pid -r -U $T/sock file $img
st=$T/state mnt=$T/mnt
# d for the plain copies and refusals; e and f (cold) for the failures.
corfs_mount $st $mnt --hold 2 --disk d="$(nbd_uri $T/sock)" --disk e="$(nbd_uri $T/sock)" \
  --disk f="$(nbd_uri $T/sock)"
# stop_parent: SIGKILL (a TERM'd nbdkit keeps serving open connections).
stop_parent () { local p; p=$(cat $T/nbd.pid); kill -9 $p; wait_gone $p; rm -f $T/sock; }
flatten_to () { "$CORFS" flatten --state $st ${disk:-d} --to "$1" --wait; }

### 1. A plain copy.
(umask 022; flatten_to $T/copy.img) || fail "flatten --to failed"
cmp $T/copy.img $img || fail "the copy differs from the disk"
[ "$(stat -c %a $T/copy.img)" = 600 ] || fail "the copy has mode $(stat -c %a $T/copy.img), not 600"
[ ! -e $T/copy.img.partial ] || fail "a partial file was left after a complete copy"

### 2. A copy that fails half-way, then continues.
echo "old contents" > $T/out.img
dd if=$mnt/e of=/dev/null bs=1M count=3 iflag=direct status=none   # present: read without the parent
stop_parent
rc=0; disk=e flatten_to $T/out.img 2> $T/err || rc=$?
echo "copy with the parent stopped: exit $rc: $(cat $T/err)"
[ $rc -ne 0 ] || fail "the copy succeeded with the parent stopped"
[ "$(cat $T/out.img)" = "old contents" ] || fail "a failed copy changed the existing FILE"
[ -f $T/out.img.partial ] || fail "no partial file after a failed copy"
[ "$(stat -c %a $T/out.img.partial)" = 600 ] || fail "the partial file has mode $(stat -c %a $T/out.img.partial)"
# The daemon restarts in between: the record in the state directory
# carries the partial file over.
pid=$(daemon_pid $st)
corfs_unmount $mnt || fail "unmount before continuing failed"
wait_gone $pid
start_nbdkit $T/nbd.pid -r -U $T/sock file $img
corfs_mount $st $mnt --hold 2
disk=e flatten_to $T/out.img || fail "the copy started again failed"
cmp $T/out.img $img || fail "the continued copy differs from the disk"
[ ! -e $T/out.img.partial ] || fail "the partial file was left after the continued copy"
grep -q "continuing the copy to $T/out.img at offset [1-9]" $st/corfs.log \
  || fail "the copy started again did not continue the partial file"

### 3. A partial file that is not ours.
stop_parent
echo "old contents" > $T/out2.img
disk=f flatten_to $T/out2.img 2>/dev/null && fail "the copy succeeded with the parent stopped (2)"
start_nbdkit $T/nbd.pid -r -U $T/sock file $img
[ -f $T/out2.img.partial ] || fail "no partial file after a failed copy (2)"
rm $T/out2.img.partial; echo "someone else's" > $T/out2.img.partial
rc=0; disk=f flatten_to $T/out2.img 2> $T/err || rc=$?
echo "copy over a replaced partial file: exit $rc: $(cat $T/err)"
[ $rc -ne 0 ] || fail "a replaced partial file was taken over"
grep -q "is not the partial copy" $T/err || fail "the refusal does not say why: $(cat $T/err)"
[ "$(cat $T/out2.img.partial)" = "someone else's" ] || fail "the replaced partial file was written"
echo "victim" > $T/victim
rm $T/out2.img.partial; ln -s $T/victim $T/out2.img.partial
disk=f flatten_to $T/out2.img 2> $T/err && fail "a symlink at FILE.partial was followed"
[ "$(cat $T/victim)" = victim ] || fail "the symlink's target was written"
[ "$(cat $T/out2.img)" = "old contents" ] || fail "FILE changed after a refused copy"

### 4. A symlink at FILE is refused, neither replaced nor written through.
ln -s $T/victim $T/link.img
rc=0; flatten_to $T/link.img 2> $T/err || rc=$?
[ $rc -ne 0 ] || fail "flatten --to over a symlink succeeded"
grep -q "is a symlink" $T/err || fail "the refusal does not say FILE is a symlink: $(cat $T/err)"
[ -L $T/link.img ] || fail "the symlink was replaced"
[ "$(cat $T/victim)" = victim ] || fail "the symlink's target was written"
[ ! -e $T/link.img.partial ] || fail "a partial file was left for a refused target"

### 5. Refusals: the state directory.
for t in $st/d.overlay $st/index/data.mdb $st/new.img $st/e.copy; do
  ino=$(stat -c %i "$t" 2>/dev/null || echo none)
  rc=0; flatten_to "$t" 2> $T/err || rc=$?
  [ $rc -ne 0 ] || fail "flatten --to $t (in the state directory) succeeded"
  grep -q "state directory" $T/err || fail "the refusal of $t does not name the state directory: $(cat $T/err)"
  [ "$(stat -c %i "$t" 2>/dev/null || echo none)" = "$ino" ] || fail "$t was replaced or created"
  [ ! -e "$t.partial" ] || fail "a partial file was created in the state directory"
done
pid=$(daemon_pid $st)
corfs_unmount $mnt || fail "unmount failed"
wait_gone $pid

### 6. Refusals: the file:// parent, by name and through a symlink.
cp $img $T/fparent.img
ln -s $T/fparent.img $T/plink.img
st=$T/state-f mnt=$T/mnt-f
corfs_mount $st $mnt --disk d="file://$T/fparent.img"
for t in $T/fparent.img $T/plink.img; do
  rc=0; flatten_to $t 2> $T/err || rc=$?
  [ $rc -ne 0 ] || fail "flatten --to $t (the parent) succeeded"
  grep -q "parent" $T/err || fail "the refusal of $t does not name the parent: $(cat $T/err)"
done
cmp $T/fparent.img $img || fail "the file parent changed"
[ -L $T/plink.img ] || fail "the symlink to the parent was replaced"
pid=$(daemon_pid $st)
corfs_unmount $mnt || fail "unmount (file parent) failed"
wait_gone $pid
echo OK
