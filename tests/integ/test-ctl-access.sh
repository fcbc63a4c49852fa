#!/usr/bin/env bash
# The control socket serves only the daemon's user and root
# (docs/control.md "Access"), whatever the umask the daemon started with:
#  - a daemon started under umask 000, with a 0755 state directory (a
#    group- or world-writable one is refused: test-state-dir.sh), still
#    creates STATE/corfs.sock with mode 0600, and an ordinary user
#    (nobody) cannot run `corfs status` through it: the CLI says
#    "permission denied", not "is it mounted?";
#  - with the socket loosened by hand to 0666, the daemon itself refuses
#    that user (SO_PEERCRED): an error line saying "permission denied",
#    no status, and a logged refusal; `corfs events` too;
#  - refused clients are closed at once: 64 idle refused connections (as
#    many as the daemon has client slots) do not lock root out;
#  - root keeps being served, and the daemon lives on.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires setpriv --version
requires /usr/bin/python3 --version
[ "$(id -u)" = 0 ] || skip "needs root (to run a client as another user)"
user=nobody
uid=$(id -u "$user") || skip "no user $user"
gid=$(id -g "$user")
as_user () { setpriv --reuid="$uid" --regid="$gid" --clear-groups "$@"; }
as_user "$CORFS" --help >/dev/null || skip "$user cannot run $CORFS"
chmod 755 "$T"

img=$T/parent.img sock=$T/nbd.sock
head -c $((4 << 20)) /dev/urandom > "$img"
start_nbdkit "$T/nbd.pid" -r -U "$sock" file "$img"

st=$T/state mnt=$T/mnt
# The daemon inherits umask 000; the state directory is 0755.
(umask 000; mkdir -p "$st" "$mnt"; chmod 755 "$st"
 corfs_mount "$st" "$mnt" --disk d="$(nbd_uri "$sock")")
cleanup_fn _force_unmount "$st" "$mnt"
csock=$st/corfs.sock
mode=$(stat -c %a "$csock")
[ "$mode" = 600 ] || fail "control socket mode $mode under umask 000, expected 600"
"$CORFS" status --state "$st" > "$T/root.out" || fail "root's status failed"

echo "=== $user through the 0600 socket"
if as_user "$CORFS" status --state "$st" > "$T/u1.out" 2>&1; then
  cat "$T/u1.out"; fail "$user ran status through the control socket"
fi
grep -q '^d: ' "$T/u1.out" && fail "$user got a status reply"
cat "$T/u1.out"
grep -q "permission denied" "$T/u1.out" || fail "the CLI did not say 'permission denied'"
grep -q "is it mounted" "$T/u1.out" && fail "the CLI asked whether a running daemon is mounted"

echo "=== $user through a socket loosened to 0666"
chmod 666 "$csock"
if as_user "$CORFS" status --state "$st" > "$T/u2.out" 2>&1; then
  cat "$T/u2.out"; fail "$user ran status once the socket was 0666"
fi
cat "$T/u2.out"
grep -q "permission denied" "$T/u2.out" || fail "no 'permission denied' for $user"
grep -q "ctl: control client refused: pid [0-9]* runs as uid $uid" "$st/corfs.log" ||
  fail "the refusal was not logged"
as_user timeout 10 "$CORFS" events --state "$st" > "$T/u3.out" 2>&1 &&
  { cat "$T/u3.out"; fail "$user followed the events"; }
grep -q "permission denied" "$T/u3.out" || { cat "$T/u3.out"; fail "events: no 'permission denied'"; }

echo "=== 64 idle refused connections do not lock root out"
mkdir "$T/hog"; chown "$uid:$gid" "$T/hog"
as_user /usr/bin/python3 -c '
import socket, sys, time
conns = []
for i in range(64):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    conns.append(s)
open(sys.argv[2], "w").close()
time.sleep(30)
' "$csock" "$T/hog/ready" & hog=$!
cleanup_fn kill_pid $hog
for _ in $(seq 100); do [ -e "$T/hog/ready" ] && break; sleep 0.1; done
[ -e "$T/hog/ready" ] || fail "the idle connections were not made"
sleep 1
timeout 10 "$CORFS" status --state "$st" > "$T/root1.out" 2>&1 ||
  { cat "$T/root1.out"; fail "root's status failed while $user held 64 refused connections"; }
kill_pid $hog

echo "=== root is still served"
alive "$(daemon_pid "$st")" || fail "the daemon died"
"$CORFS" status --state "$st" > "$T/root2.out" || fail "root's status failed afterwards"
grep -q "^d: " "$T/root2.out" || { cat "$T/root2.out"; fail "no disk d in root's status"; }
corfs_unmount "$mnt"
echo OK
