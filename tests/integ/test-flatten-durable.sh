#!/usr/bin/env bash
# `flatten --to` makes its names durable (src/merge/merge.c copy_open,
# copy_record_write), seen with strace on the daemon during a copy that
# fails half-way (the parent stopped), so that no final rename happens:
#  - the partial file's creation is followed by an fsync of FILE's
#    directory (before, only the final rename's was: a crash could lose
#    the partial file's name while the record still names it);
#  - the record's rename (NAME.copy.tmp to NAME.copy) is followed by an
#    fsync of the state directory (before, never).
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires strace -V

MiB=1048576
img=$T/parent.img
head -c $((8 * MiB)) /dev/urandom > $img
start_nbdkit $T/nbd.pid -r -U $T/sock file $img
mkdir -p $T/out
st=$T/state mnt=$T/mnt
corfs_mount $st $mnt --hold 2 --disk e="$(nbd_uri $T/sock)"
dd if=$mnt/e of=/dev/null bs=1M count=3 iflag=direct status=none
p=$(cat $T/nbd.pid); kill -9 $p; wait_gone $p; rm -f $T/sock

pid=$(daemon_pid $st)
strace -f -qq -y -p $pid -e trace=fsync,rename,renameat,renameat2,openat -o $T/trace &
spid=$!
cleanup_fn kill_pid $spid
sleep 1
"$CORFS" flatten --state $st e --to $T/out/e.img --wait 2>/dev/null \
  && fail "the copy succeeded with the parent stopped"
sleep 0.5
kill_pid $spid
[ -f $T/out/e.img.partial ] || fail "no partial file after the failed copy"
grep -q "e.img.partial" $T/trace || { cat $T/trace | tail; skip "strace did not see the daemon's threads"; }
# The line numbers of the events, in order.
created=$(grep -n 'openat(.*e.img.partial.*O_CREAT' $T/trace | head -1 | cut -d: -f1 || true)
dirsync=$(grep -n "fsync([0-9]*<$T/out>)" $T/trace | head -1 | cut -d: -f1 || true)
recren=$(grep -n 'rename.*e.copy.tmp' $T/trace | head -1 | cut -d: -f1 || true)
statesync=$(grep -n "fsync([0-9]*<$st>)" $T/trace | tail -1 | cut -d: -f1 || true)
echo "partial created at line ${created:-none}, its directory fsync'd at ${dirsync:-never}; record renamed at ${recren:-none}, state directory fsync'd at ${statesync:-never}"
[ -n "$created" ] && [ -n "$recren" ] || fail "the trace lacks the partial file's creation or the record's rename"
[ -n "$dirsync" ] && [ "$dirsync" -gt "$created" ] \
  || fail "the partial file's directory was not fsync'd after its creation"
[ -n "$statesync" ] && [ "$statesync" -gt "$recren" ] \
  || fail "the state directory was not fsync'd after the record's rename"
corfs_unmount $mnt || fail "unmount failed"
wait_gone $pid
echo OK
