#!/usr/bin/env bash
# systemd readiness (issue 19): the daemon, run in the foreground with
# corfs@.service's command line (the mount point from the config file),
# tells NOTIFY_SOCKET (sd_notify)
#  - READY=1 only once the mount serves: its parent answers its first
#    connection 2 s late (nbdkit delay-open), so READY=1 must come after
#    that; when it arrives the mount exists and the disk reads right;
#  - STOPPING=1 when it is unmounted (corfs unmount), and on SIGTERM
#    (`systemctl stop`), after which it unmounts and exits 0;
#  - forked (no --foreground), READY=1 names the daemon as MAINPID.
# And the unit passes `systemd-analyze verify`, where that tool exists.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires python3 -c 'import socket'

img=$T/parent.img sock=$T/nbd.sock
head -c $((4 << 20)) /dev/urandom > "$img"
start_nbdkit "$T/nbd.pid" -r -U "$sock" --filter=delay file "$img" delay-open=2
url=$(nbd_uri "$sock")
st=$T/st mnt=$T/mnt; mkdir -p "$st" "$mnt"
chmod 700 "$st"
cleanup_fn _force_unmount "$st" "$mnt"

# listen RESULT: a NOTIFY_SOCKET at $T/notify.sock; each datagram's
# lines go to RESULT with the time since start ("T seconds LINE").  On
# READY=1 it checks at once that MNT is mounted and that MNT/d reads as
# the image ("check mounted yes|no", "check read ok|bad|failed"); it stops after
# STOPPING=1 or 60 s.
listen () {
  rm -f "$T/notify.sock"
  python3 - "$T/notify.sock" "$1" "$mnt" "$img" <<'PY' &
import os, socket, sys, time
path, out, mnt, img = sys.argv[1:5]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
s.settimeout(1)
start = time.monotonic()
with open(out, "w", buffering=1) as f:
    while time.monotonic() - start < 60:
        try:
            msg = s.recv(4096).decode()
        except socket.timeout:
            continue
        t = time.monotonic() - start
        for line in msg.split("\n"):
            f.write("%.2f %s\n" % (t, line))
        if "READY=1" in msg.split("\n"):
            mounts = open("/proc/mounts").read().split("\n")
            up = any(l.split(" ")[1:2] == [mnt] for l in mounts)
            f.write("check mounted %s\n" % ("yes" if up else "no"))
            try:
                with open(os.path.join(mnt, "d"), "rb") as a, open(img, "rb") as b:
                    same = a.read(1 << 20) == b.read(1 << 20)
                f.write("check read %s\n" % ("ok" if same else "bad"))
            except OSError as e:
                f.write("check read failed: %s\n" % e)
        if "STOPPING=1" in msg.split("\n"):
            break
PY
  listener=$!
  cleanup_fn kill_pid "$listener"
  local i
  for i in $(seq 100); do [ -S "$T/notify.sock" ] && return 0; sleep 0.1; done
  fail "the listener did not start"
}

# wait_line RESULT PATTERN: wait (30 s at most) for a line matching it.
wait_line () {
  local i
  for i in $(seq 300); do grep -q -- "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  cat "$1" 2>/dev/null || true
  fail "no '$2' from the daemon"
}

# check_ready RESULT: READY=1 came after the parent's 2 s, the mount was
# there and the disk read right at that moment.
check_ready () {
  wait_line "$1" "check read"
  cat "$1"
  local t; t=$(awk '$2 == "READY=1" { print $1; exit }' "$1")
  awk -v t="$t" 'BEGIN { exit !(t >= 1.9) }' || fail "READY=1 after $t s, before the parent answered"
  grep -q "check mounted yes" "$1" || fail "READY=1 before the mount existed"
  grep -q "check read ok" "$1" || fail "the disk did not read right just after READY=1"
  grep -q "^[0-9.]* STATUS=serving 1 disk(s) on $mnt" "$1" || fail "no STATUS line"
}

echo "=== the unit's command: READY=1 after the parent answered; STOPPING=1 on unmount"
# ExecStart of corfs@.service, with this build, this state directory and a
# config file naming the disk and the mount point.
unit="$TOP/conf/corfs@.service"
printf '[corfs]\nmountpoint = %s\nstream = off\n[disk d]\nurl = %s\n' "$mnt" "$url" > "$T/i.conf"
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
cmd=${exec_start//\/usr\/bin\/corfs/$CORFS}
cmd=${cmd//\/var\/lib\/corfs\/%i/$st}
cmd=${cmd//\/etc\/corfs\/%i.conf/$T/i.conf}
echo "running: $cmd"
case $cmd in *%*) fail "a unit specifier is left in: $cmd";; esac
listen "$T/n1"
NOTIFY_SOCKET=$T/notify.sock $cmd 2> "$T/fg1.log" &
daemon=$!
check_ready "$T/n1"
grep -q "STOPPING=1" "$T/n1" && fail "STOPPING=1 while serving"
"$CORFS" unmount "$mnt"
wait "$daemon" || fail "the daemon exited $? after unmount"
wait_line "$T/n1" "STOPPING=1"
wait "$listener" || true
grep -q "clean exit" "$T/fg1.log" || fail "no clean exit: $(tail -n 5 "$T/fg1.log")"

echo "=== foreground, recorded state: SIGTERM (systemctl stop) unmounts cleanly"
listen "$T/n2"
NOTIFY_SOCKET=$T/notify.sock "$CORFS" mount -f --state "$st" --stream=off "$mnt" 2> "$T/fg2.log" &
daemon=$!
check_ready "$T/n2"
kill -TERM "$daemon"
wait "$daemon" || fail "the daemon exited $? on SIGTERM"
wait_line "$T/n2" "STOPPING=1"
wait "$listener" || true
is_mounted "$mnt" && fail "still mounted after SIGTERM"
grep -q "clean exit" "$T/fg2.log" || fail "no clean exit on SIGTERM: $(tail -n 5 "$T/fg2.log")"

echo "=== forked: READY=1 names the daemon as MAINPID"
listen "$T/n3"
NOTIFY_SOCKET=$T/notify.sock "$CORFS" mount --state "$st" --stream=off "$mnt"
check_ready "$T/n3"
grep -q "^[0-9.]* MAINPID=$(daemon_pid "$st")\$" "$T/n3" || fail "no MAINPID=$(daemon_pid "$st")"
pid=$(daemon_pid "$st")
"$CORFS" unmount "$mnt"
wait_gone "$pid"
wait_line "$T/n3" "STOPPING=1"

# A foreground daemon reports to stderr, not corfs.log (which the
# cleanup checks): its sanitizer reports (ASan builds) fail the test here.
if grep -E "ERROR: (Address|Leak)Sanitizer|runtime error:" "$T"/fg*.log; then
  fail "sanitizer report from a foreground daemon"
fi

echo "=== the unit"
grep -q "^Type=notify$" "$unit" || fail "the unit is not Type=notify"
grep -q "^ExecStart=/usr/bin/corfs mount --foreground " "$unit" || fail "ExecStart"
if command -v systemd-analyze > /dev/null; then
  # verify checks that ExecStart's binary exists: this build's, in a copy
  # named as an instance.  --man=no: the pages may not be installed.
  mkdir "$T/units"
  sed "s|/usr/bin/corfs|$CORFS|" "$unit" > "$T/units/corfs@test.service"
  systemd-analyze verify --man=no "$T/units/corfs@test.service" 2>&1 | tee "$T/verify.log"
  [ "${PIPESTATUS[0]}" = 0 ] || fail "systemd-analyze verify failed"
  grep -q "corfs@test.service" "$T/verify.log" && fail "systemd-analyze verify warns about the unit"
else
  echo "(systemd-analyze missing: the unit is not verified)"
fi
echo PASS
