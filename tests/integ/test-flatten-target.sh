#!/usr/bin/env bash
# `flatten --to FILE` targets that are not what they seem
# (src/merge/merge.c copy_target_check/copy_open, src/ctl/ctl-disk.c, ctl-job.c):
#  - a target on a filesystem that hangs (a second corfs mount whose
#    daemon is stopped with SIGSTOP) holds only that request: the control
#    socket keeps answering status (before, the ctl thread resolved and
#    opened the target itself, and froze);
#  - a FIFO put at FILE.partial of a recorded copy is refused at once; the
#    control socket keeps answering meanwhile (before, the ctl thread
#    blocked for ever opening the FIFO for writing);
#  - an existing FILE that is not a regular file (a FIFO, a character
#    device, a symlink) is refused naming what it is, and left as it was
#    (before, it was silently replaced by the copy);
#  - a bind mount of the state directory, or of a directory above it, is
#    the state directory: refused, the overlay untouched and no file
#    created (before, only names were compared and the overlay replaced).
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version

MiB=1048576
img=$T/parent.img
head -c $((8 * MiB)) /dev/urandom > $img
start_nbdkit $T/nbd.pid -r -U $T/sock file $img
mkdir -p $T/top
st=$T/top/state mnt=$T/mnt
corfs_mount $st $mnt --hold 2 --disk d="$(nbd_uri $T/sock)" --disk e="$(nbd_uri $T/sock)"
stop_parent () { local p; p=$(cat $T/nbd.pid); kill -9 $p; wait_gone $p; rm -f $T/sock; }
flatten_to () { "$CORFS" flatten --state $st ${disk:-d} --to "$1" --wait; }

### 0. A target on a filesystem that hangs.
st2=$T/state2 mnt2=$T/mnt2
corfs_mount $st2 $mnt2 --disk h="$(nbd_uri $T/sock)"
pid2=$(daemon_pid $st2)
kill -STOP $pid2
cleanup_fn kill -CONT $pid2
# Straight to the socket: the CLI would hang resolving the path itself.
python3 - $st/corfs.sock "{\"cmd\": \"flatten\", \"disk\": \"d\", \"to\": \"$mnt2/x/copy.img\"}" \
  > $T/hung.out 2>&1 <<'PY' &
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
print(s.makefile().readline().strip())
PY
hpid=$!
sleep 1
rc=0; timeout 10 "$CORFS" status --state $st --json > /dev/null || rc=$?
hung=yes; [ -s $T/hung.out ] && hung=no
kill -CONT $pid2
wait $hpid || true
echo "status while flatten --to resolved a path on a hung filesystem: exit $rc; flatten: $(cat $T/hung.out)"
[ $hung = yes ] || fail "flatten --to answered while the target's filesystem hung: the test proves nothing"
[ $rc -eq 0 ] || fail "status did not answer while flatten --to waited on a hung filesystem"
grep -q '"ok": *false' $T/hung.out || fail "flatten --to into a corfs mount did not fail: $(cat $T/hung.out)"
corfs_unmount $mnt2 || fail "unmount of the second mount failed"
wait_gone $pid2

### 1. A FIFO at the recorded partial file.
stop_parent
disk=e flatten_to $T/out.img 2>/dev/null && fail "the copy succeeded with the parent stopped"
[ -f $T/out.img.partial ] || fail "no partial file after a failed copy"
start_nbdkit $T/nbd.pid -r -U $T/sock file $img
rm $T/out.img.partial; mkfifo $T/out.img.partial
# Unblocks a daemon stuck opening it (the old code), so cleanup can end it.
cleanup_fn timeout 2 cat $T/out.img.partial
rc=0; timeout 30 "$CORFS" flatten --state $st e --to $T/out.img > /dev/null 2> $T/err &
fpid=$!
sleep 1
timeout 10 "$CORFS" status --state $st --json > /dev/null \
  || fail "status did not answer while flatten --to met a FIFO at its partial file"
wait $fpid || rc=$?
echo "flatten over a FIFO partial file: exit $rc: $(cat $T/err)"
[ $rc -ne 0 ] && [ $rc -ne 124 ] || fail "flatten --to over a FIFO partial file: exit $rc"
grep -q "is not the partial copy" $T/err || fail "the refusal does not say why: $(cat $T/err)"
[ -p $T/out.img.partial ] || fail "the FIFO was replaced"

### 2. Existing targets that are not regular files.
mkfifo $T/fifo.img
mknod $T/null.img c 1 3
echo victim > $T/victim
ln -s $T/victim $T/link.img
for t in fifo.img:"a FIFO" null.img:"a character device" link.img:"a symlink"; do
  f=$T/${t%%:*} what=${t#*:}
  before=$(stat -c '%F %i' $f)
  rc=0; timeout 30 "$CORFS" flatten --state $st d --to $f --wait 2> $T/err || rc=$?
  echo "flatten --to $what: exit $rc: $(cat $T/err)"
  [ $rc -ne 0 ] && [ $rc -ne 124 ] || fail "flatten --to $what: exit $rc"
  grep -q "is $what" $T/err || fail "the refusal does not say FILE is $what: $(cat $T/err)"
  [ "$(stat -c '%F %i' $f)" = "$before" ] || fail "$what at FILE was replaced"
  [ ! -e $f.partial ] || fail "a partial file was left for $what"
done
[ "$(cat $T/victim)" = victim ] || fail "the symlink's target was written"

### 3. Aliases of the state directory.
mkdir $T/alias $T/alias-top
mount --bind $st $T/alias || skip "cannot bind-mount"
cleanup_fn umount $T/alias
mount --bind $T/top $T/alias-top || fail "bind mount of the directory above failed"
cleanup_fn umount $T/alias-top
ino=$(stat -c %i $st/d.overlay)
for t in $T/alias/d.overlay $T/alias/new.img $T/alias-top/state/d.overlay; do
  rc=0; timeout 30 "$CORFS" flatten --state $st d --to $t --wait 2> $T/err || rc=$?
  echo "flatten --to $t: exit $rc: $(cat $T/err)"
  [ $rc -ne 0 ] && [ $rc -ne 124 ] || fail "flatten --to $t (the state directory, aliased): exit $rc"
  grep -q "state directory" $T/err || fail "the refusal does not name the state directory: $(cat $T/err)"
done
[ "$(stat -c %i $st/d.overlay)" = "$ino" ] || fail "the overlay was replaced through an alias"
[ ! -e $st/new.img ] && [ ! -e $st/new.img.partial ] && [ ! -e $st/d.overlay.partial ] \
  || fail "a file was created in the state directory through an alias"
umount $T/alias-top; umount $T/alias
pid=$(daemon_pid $st)
corfs_unmount $mnt || fail "unmount failed"
wait_gone $pid
echo OK
