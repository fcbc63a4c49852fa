#!/usr/bin/env bash
# The state directory is the daemon user's alone (review of issue 15 item
# 16): whoever can write it can swap the 0600 control socket for a server
# of their own, or plant symlinks a root daemon writes through.
#  - a world-writable (0777, as under umask 000) or group-writable state
#    directory, or one owned by another user, is refused with an error
#    naming it, its mode and owner; a symlink `nobody` planted as
#    corfs.pid is left alone (its target unchanged);
#  - a symlink given as --state is resolved once and its target used;
#  - in a proper directory, a symlink found where the log, pid file or an
#    overlay goes is never followed: the mount fails, the target is
#    unchanged.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires setpriv --version
[ "$(id -u)" = 0 ] || skip "needs root (to act as another user)"
user=nobody
uid=$(id -u "$user") || skip "no user $user"
gid=$(id -g "$user")
as_user () { setpriv --reuid="$uid" --regid="$gid" --clear-groups "$@"; }
as_user true || skip "cannot run as $user"
chmod 755 "$T"

img=$T/parent.img sock=$T/nbd.sock
head -c $((4 << 20)) /dev/urandom > "$img"
start_nbdkit "$T/nbd.pid" -r -U "$sock" file "$img"
url=$(nbd_uri "$sock")
mnt=$T/mnt; mkdir -p "$mnt"
echo "precious root data" > "$T/victim"; chmod 600 "$T/victim"
victim_intact () { [ "$(cat "$T/victim")" = "precious root data" ] || fail "$1: the victim file was written"; }

# refused DIR WHAT PATTERN: mounting with state DIR fails, stderr matches
# PATTERN, nothing is mounted and the victim is intact.
refused () {
  if "$CORFS" mount --state "$1" --stream=off --disk d="$url" "$mnt" 2> "$T/err"; then
    cleanup_fn _force_unmount "$1" "$mnt"
    fail "$2: mounted"
  fi
  cat "$T/err"
  grep -q -- "$3" "$T/err" || fail "$2: the error does not match '$3'"
  is_mounted "$mnt" && fail "$2: a mount is left"
  victim_intact "$2"
}

echo "=== a world-writable state directory (umask 000), with a planted corfs.pid"
st=$T/st1
(umask 000; mkdir "$st")
as_user ln -s "$T/victim" "$st/corfs.pid"
refused "$st" "0777 state dir" "state directory $st has mode 0777 and owner uid 0"
grep -q "writable by no one else" "$T/err" || fail "the error does not say why"
[ ! -e "$st/corfs.sock" ] && [ ! -e "$st/corfs.log" ] || fail "files created in a refused directory"

echo "=== group-writable"
st=$T/st2; mkdir "$st"; chmod 770 "$st"
refused "$st" "0770 state dir" "state directory $st has mode 0770"

echo "=== owned by another user"
st=$T/st3; mkdir "$st"; chown "$uid:$gid" "$st"; chmod 700 "$st"
refused "$st" "$user's state dir" "state directory $st has mode 0700 and owner uid $uid"

echo "=== a symlink in a proper directory is never followed"
st=$T/st4; mkdir "$st"; chmod 700 "$st"
ln -s "$T/victim" "$st/corfs.log"
refused "$st" "corfs.log symlink" "log file $st/corfs.log: Too many levels of symbolic links"
rm "$st/corfs.log"
ln -s "$T/victim" "$st/corfs.pid"
refused "$st" "corfs.pid symlink" "corfs.pid: Too many levels of symbolic links"
rm "$st/corfs.pid"
ln -s "$T/victim" "$st/d.overlay"
refused "$st" "overlay symlink" "d.overlay"
rm "$st/d.overlay"

echo "=== --state through a symlink: resolved once, its target used"
ln -s "$st" "$T/st-link"
corfs_mount "$T/st-link" "$mnt" --disk d="$url"
[ -S "$st/corfs.sock" ] || fail "no control socket in the symlink's target"
[ "$(stat -c %a "$st/corfs.sock")" = 600 ] || fail "socket mode $(stat -c %a "$st/corfs.sock")"
cmp -n $((1 << 20)) "$mnt/d" "$img" || fail "wrong data"
"$CORFS" status --state "$T/st-link" > /dev/null || fail "status through the symlink"
corfs_unmount "$mnt"
victim_intact "end"
echo OK
