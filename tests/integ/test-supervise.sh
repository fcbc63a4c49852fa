#!/usr/bin/env bash
# corfs mount --supervise: the worker (the PID in corfs.pid) is killed
# with SIGKILL several times under a live writer and a live reader, and
# restarted by the supervisor on the same FUSE connection.
#  - The writer makes O_DIRECT writes WITHOUT fsync (so that their present
#    and dirty bits are not committed when the worker dies: only the
#    supervisor's memory has them) and sees no error; afterwards every
#    answered write reads back and every untouched range equals the parent
#    (the streamer is off: a lost present bit would read parent bytes).
#  - A reader keeps one fd open across the kills and sees no error, and
#    the parent's bytes (a second disk, sorted before the first in the
#    index, checks that inode numbers keep naming the same disk).
#  - SIGTERM to the supervisor ends the mount cleanly (the data is there
#    after an unsupervised remount); `corfs unmount` of a supervised mount
#    works.
#  - CORFS_SIMULATE_NO_RESEND=1 makes the worker take the no-resend mode
#    (said in the log): a write in flight at a kill gets EIO from the next
#    worker instead of hanging, and later writes are served.
# Reports the longest write and read latency across the kills.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires python3 --version

kills=${SUPERVISE_KILLS:-5}
size=$((64 * 1024 * 1024))
head -c $size /dev/urandom > $T/parent.img
start_nbdkit $T/nbd.pid -r -U $T/sock file $T/parent.img
url=$(nbd_uri $T/sock)
mnt=$T/mnt state=$T/state
mkdir -p $mnt $state

# The supervisor is the parent of the worker; kill it (not the worker,
# which it would restart) if the test fails.
sup_pid () { ps -o ppid= -p "$(daemon_pid $state)" | tr -d ' '; }
cleanup_sup () {
  local s; s=$(sup_pid 2>/dev/null) || true
  [ -n "$s" ] && [ "$s" != 1 ] && kill "$s" 2>/dev/null && sleep 2
  is_mounted $mnt && { fusermount3 -u $mnt || umount -l $mnt; }
  return 0
}
cleanup_fn cleanup_sup

# wait_log PATTERN: the log says it within 10 s (the worker answers the
# kernel's INIT after `corfs mount` returned).
wait_log () {
  local i
  for i in $(seq 100); do grep -q "$1" $state/corfs.log && return 0; sleep 0.1; done
  return 1
}
# Disk a, given after d, comes before it in the index's (sorted) list: a
# new worker must still give d the inode the kernel knows it by.
head -c $size /dev/urandom > $T/other.img
"$CORFS" mount --supervise --state $state --stream=off --disk d="$url" \
  --disk a=file://$T/other.img $mnt
wait_log "worker restart mode: kernel-resend" || fail "the log does not name the restart mode"

# The writer: random 4 KiB-aligned O_DIRECT writes of 4-64 KiB in the
# first half, each logged once answered ("offset length seed"); no fsync.
# The reader: O_DIRECT reads of the second half (never written), checked
# against the parent, on one fd.  Both record their longest request.
cat > $T/io.py <<'PY'
import mmap, os, random, sys, time
mode, path, out, stop = sys.argv[1:5]
size = 64 << 20; half = size // 2
tolerant = mode == "write-eio"      # EIO allowed (no-resend mode): counted
if tolerant: mode = "write"
eio = 0
fd = os.open(path, (os.O_WRONLY if mode == "write" else os.O_RDONLY) | os.O_DIRECT)
buf = mmap.mmap(-1, 64 << 10)
log = open(out, "w", buffering=1)
parent = open(sys.argv[5], "rb") if mode == "read" else None
worst = 0.0; n = 0; rnd = random.Random(1)
while not os.path.exists(stop):
    if mode == "write":
        ln = rnd.randrange(1, 17) * 4096; off = rnd.randrange(0, (half - ln) // 4096) * 4096
        seed = rnd.getrandbits(32)
        buf[:ln] = random.Random(seed).randbytes(ln)
        t = time.monotonic()
        try:
            r = os.pwritev(fd, [memoryview(buf)[:ln]], off)
        except OSError as e:
            if not tolerant or e.errno != 5: raise
            eio += 1; continue
        dt = time.monotonic() - t
        assert r == ln, r
        log.write("%d %d %d\n" % (off, ln, seed))
    else:
        ln = 64 << 10; off = half + rnd.randrange(0, (half - ln) // 4096) * 4096
        t = time.monotonic(); r = os.preadv(fd, [buf], off); dt = time.monotonic() - t
        parent.seek(off)
        assert r == ln and buf[:ln] == parent.read(ln), "read at %d differs from the parent" % off
    worst = max(worst, dt); n += 1
    if n % 64 == 0:
        time.sleep(0.001)
print("%s: %d requests, longest %.3f s, %d EIO" % (mode, n, worst, eio))
PY
python3 $T/io.py write $mnt/d $T/writes.log $T/stop > $T/writer.out 2>&1 &
wpid=$!
python3 $T/io.py read $mnt/d $T/reads.log $T/stop $T/parent.img > $T/reader.out 2>&1 &
rpid=$!
sleep 1
for k in $(seq $kills); do
  w=$(daemon_pid $state)
  kill -9 $w
  wait_gone $w
  # The supervisor starts a new worker, which writes its pid.
  for i in $(seq 100); do [ "$(daemon_pid $state)" != "$w" ] && break; sleep 0.1; done
  [ "$(daemon_pid $state)" != "$w" ] || fail "no new worker after kill $k"
  kill -0 $wpid 2>/dev/null || { cat $T/writer.out; fail "writer died at kill $k"; }
  kill -0 $rpid 2>/dev/null || { cat $T/reader.out; fail "reader died at kill $k"; }
  sleep "0.$((3 + RANDOM % 6))"
done
touch $T/stop
wait $wpid || { cat $T/writer.out; fail "the writer saw an error"; }
wait $rpid || { cat $T/reader.out; fail "the reader saw an error"; }
cat $T/writer.out $T/reader.out
n=$(grep -c "killed by signal 9" $state/corfs.log)
[ "$n" -eq "$kills" ] || fail "$n restarts logged for $kills kills"
grep -q "adopted the maps" $state/corfs.log || fail "no worker adopted the maps"
"$CORFS" status --state $state > $T/status.txt
grep -q "supervised: worker restart mode kernel-resend, $kills worker restart(s)" $T/status.txt ||
  { cat $T/status.txt; fail "status does not say the restart mode and count"; }

# Every answered write reads back; everything else is the parent.
cat > $T/verify.py <<'PY'
import random, sys
disk, parent, log = sys.argv[1:4]
want = bytearray(open(parent, "rb").read())
for line in open(log):
    off, ln, seed = map(int, line.split())
    want[off:off + ln] = random.Random(seed).randbytes(ln)
got = open(disk, "rb").read()
assert len(got) == len(want), (len(got), len(want))
if got != want:
    bad = next(i for i in range(0, len(want), 4096) if got[i:i + 4096] != want[i:i + 4096])
    sys.exit("block at offset %d differs (%s)" % (bad, "parent bytes" if got[bad:bad + 4096]
             == open(parent, "rb").read()[bad:bad + 4096] else "other bytes"))
print("verified %d answered writes" % sum(1 for _ in open(log)))
PY
echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
python3 $T/verify.py $mnt/d $T/parent.img $T/writes.log || fail "read-your-writes broken"

# SIGTERM to the supervisor ends the mount cleanly.
sup=$(sup_pid)
kill $sup
wait_gone $sup
! is_mounted $mnt || fail "still mounted after SIGTERM to the supervisor"
grep -q "supervisor exits (0)" $state/corfs.log || fail "the supervisor did not exit cleanly"
"$CORFS" mount --state $state --stream=off $mnt
python3 $T/verify.py $mnt/d $T/parent.img $T/writes.log || fail "data lost after a clean end"
corfs_unmount $mnt

# The simulated no-resend mode: the writes in flight at a kill are
# answered EIO by the next worker (not left hanging); later ones are
# served.  Then `corfs unmount` of a supervised mount.
# Disk s has a parent that answers reads after 1 s: a cold read of it is
# surely in flight when the worker is killed.
start_nbdkit $T/slow.pid -r -U $T/slow.sock --filter=delay file $T/other.img rdelay=1
CORFS_SIMULATE_NO_RESEND=1 "$CORFS" mount --supervise --state $state --stream=off \
  --disk s="$(nbd_uri $T/slow.sock)" $mnt
wait_log "worker restart mode: no-resend (simulated)" ||
  fail "the simulated mode is not in the log"
dd if=$mnt/s of=$T/s.out bs=64k count=1 skip=7 iflag=direct 2> $T/dd.err &
ddpid=$!
sleep 0.4
w=$(daemon_pid $state)
kill -9 $w; wait_gone $w
for i in $(seq 300); do kill -0 $ddpid 2>/dev/null || break; sleep 0.1; done
kill -0 $ddpid 2>/dev/null && { kill $ddpid; fail "a read in flight at the kill hangs (no-resend mode)"; }
! wait $ddpid || fail "a read in flight at the kill succeeded without resend?"
grep -q "Input/output error" $T/dd.err || { cat $T/dd.err; fail "not EIO"; }
wait_log "answered EIO to 1 request" || fail "the new worker did not answer the request"
dd if=$mnt/s bs=64k count=1 skip=7 iflag=direct 2>/dev/null | cmp - <(dd if=$T/other.img bs=64k count=1 skip=7 2>/dev/null) ||
  fail "the read again after the restart differs from the parent"
# Not tested here: a writer kept busy across several kills in this mode.
# A request the dead worker had read but not yet recorded in the
# supervisor's memory when it died is never answered (the kernel resends
# nothing in this mode), and its caller hangs: a known gap of the
# fallback for kernels without FUSE_NOTIFY_RESEND (issue 18's notes).
corfs_unmount $mnt
! is_mounted $mnt || fail "still mounted after corfs unmount"
echo "supervise: $kills worker kills, no error, every answered write read back"
