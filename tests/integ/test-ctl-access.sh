#!/usr/bin/env bash
# The control socket serves only the daemon's user and root
# (docs/control.md "Access"), whatever the umask the daemon started with:
#  - a daemon started under umask 000, in a world-writable state
#    directory, still creates STATE/corfs.sock with mode 0600, and an
#    ordinary user (nobody) cannot run `corfs status` through it;
#  - with the socket loosened by hand to 0666, the daemon itself refuses
#    that user (SO_PEERCRED): an error line saying "permission denied",
#    no status, and a logged refusal;
#  - root keeps being served, and the daemon lives on.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires setpriv --version
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
# The daemon inherits umask 000; the state directory is world-writable.
(umask 000; mkdir -p "$st" "$mnt"; corfs_mount "$st" "$mnt" --disk d="$(nbd_uri "$sock")")
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

echo "=== $user through a socket loosened to 0666"
chmod 666 "$csock"
if as_user "$CORFS" status --state "$st" > "$T/u2.out" 2>&1; then
  cat "$T/u2.out"; fail "$user ran status once the socket was 0666"
fi
cat "$T/u2.out"
grep -q "permission denied" "$T/u2.out" || fail "no 'permission denied' for $user"
grep -q "ctl: control client refused: pid [0-9]* runs as uid $uid" "$st/corfs.log" ||
  fail "the refusal was not logged"

echo "=== root is still served"
alive "$(daemon_pid "$st")" || fail "the daemon died"
"$CORFS" status --state "$st" > "$T/root2.out" || fail "root's status failed afterwards"
grep -q "^d: " "$T/root2.out" || { cat "$T/root2.out"; fail "no disk d in root's status"; }
corfs_unmount "$mnt"
echo OK
