#!/usr/bin/env bash
# Unmount while a `flatten --to` is stuck on a filesystem that hangs (a
# second corfs mount whose daemon is SIGSTOPped; src/daemon/daemon.c,
# ctl_stop, merge_stop): before the fix the daemon joined that job without
# a bound and never exited (`corfs unmount` gave up after 60 s).  Now:
#  - `corfs unmount` returns and the daemon exits within hold + 10 s;
#  - the log names the disk and the target of the job left running;
#  - the stuck client gets an error reply;
#  - the disk's data written before is there at the next mount, whose
#    index was closed cleanly (status: widened false, as after any clean
#    stop).
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version

MiB=1048576
hold=2
img=$T/parent.img
head -c $((8 * MiB)) /dev/urandom > $img
start_nbdkit $T/nbd.pid -r -U $T/sock file $img
st=$T/state mnt=$T/mnt
corfs_mount $st $mnt --hold $hold --disk d="$(nbd_uri $T/sock)"
cp $img $T/expect
twin_write $mnt/d $T/expect $((3 * MiB)) $((MiB + 4096)) || fail "write failed"

# The hung filesystem: a second corfs mount, its daemon stopped.
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
cleanup_fn kill_pid $hpid
# Wait (at most 30 s: a loaded machine may be slow to start python) until
# the daemon lists the copy job, so that the unmount finds it running.
for i in $(seq 300); do
  [ "$("$CORFS" status --state $st d --json | jq -r '.job.kind // empty')" = copy ] && break
  sleep 0.1
done
[ "$("$CORFS" status --state $st d --json | jq -r '.job.kind // empty')" = copy ] \
  || fail "the flatten --to job did not start: $(cat $T/hung.out)"
sleep 0.5
[ -s $T/hung.out ] && fail "flatten --to answered while the target's filesystem hung: $(cat $T/hung.out)"

pid=$(daemon_pid $st)
t0=$(date +%s)
rc=0; timeout $((hold + 30)) "$CORFS" unmount $mnt > $T/unmount.out 2>&1 || rc=$?
for i in $(seq $(((hold + 30) * 10))); do alive $pid || break; sleep 0.1; done
t=$(( $(date +%s) - t0 ))
echo "unmount with a job stuck on a hung filesystem: exit $rc after ${t} s: $(cat $T/unmount.out)"
alive $pid && fail "the daemon has not exited after ${t} s"
[ $rc -eq 0 ] || fail "unmount failed (exit $rc): $(cat $T/unmount.out)"
[ $t -le $((hold + 10)) ] || fail "the daemon took ${t} s to exit (hold $hold s)"
grep -q "disk d: flatten --to $mnt2/x/copy.img is still running at exit" $st/corfs.log \
  || fail "the log does not name the stuck job: $(grep -i 'still running' $st/corfs.log)"
wait $hpid || true
echo "stuck client's reply: $(cat $T/hung.out)"
grep -q '"ok": *false' $T/hung.out || fail "the stuck client got no error reply: $(cat $T/hung.out)"

kill -CONT $pid2
corfs_unmount $mnt2 || fail "unmount of the second mount failed"
wait_gone $pid2

corfs_mount $st $mnt --hold $hold
[ "$("$CORFS" status --state $st d --json | jq -r .widened)" = false ] \
  || fail "the index was not closed cleanly (widened after the exit)"
cmp $mnt/d $T/expect || fail "the disk does not read what was written before the exit"
pid=$(daemon_pid $st)
corfs_unmount $mnt || fail "unmount failed"
wait_gone $pid
echo OK
