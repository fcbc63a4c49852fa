#!/usr/bin/env bash
# The disk files' permissions are real, stored and never used to express
# a read-only state (issue 15 item 5), on a mount with -o allow_other
# (corfs always adds default_permissions, so the kernel checks them):
#  - a new disk is 0600, owned by the mounting user: another user cannot
#    read it;
#  - an incoming disk chowned to an ordinary user (what a management stack
#    does for the user its VMs run as) can be opened O_RDWR by that user
#    (QEMU's reopen before activation), whose writes fail with EROFS until
#    `activate`, and succeed after it;
#  - chmod by root and by the owning user takes effect; a third user is
#    refused;
#  - mode and owner survive a remount (recorded in the index); after
#    `handoff` the mode stays as stored and an O_RDWR open fails with
#    EROFS, not EACCES.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires setpriv --version
[ "$(id -u)" = 0 ] || skip "needs root (to act as other users)"
user=nobody
uid=$(id -u "$user") || skip "no user $user"
gid=$(id -g "$user")
other=4242   # a third uid, not in /etc/passwd: setpriv does not need it there
as_user () { setpriv --reuid="$uid" --regid="$gid" --clear-groups "$@"; }
as_other () { setpriv --reuid="$other" --regid="$other" --clear-groups "$@"; }
as_user true || skip "cannot run as $user"
chmod 755 "$T"

img=$T/parent.img sock=$T/nbd.sock
head -c $((4 << 20)) /dev/urandom > "$img"; chmod 644 "$img"
start_nbdkit "$T/nbd.pid" -r -U "$sock" file "$img"
st=$T/state mnt=$T/mnt
mkdir -p "$mnt"; chmod 755 "$mnt"
corfs_mount "$st" "$mnt" -o allow_other --incoming --disk d="$(nbd_uri "$sock")"
f=$mnt/d
attrs () { stat -c '%a %u %g' "$f"; }

# open_rw WHO: open the disk O_RDWR (bash's <>) as WHO and close it.
open_rw () { "$1" bash -c 'exec 3<>"$1"' _ "$f"; }
# write_4k WHO: a 4 KiB O_DIRECT write at offset 1 MiB as WHO (O_RDWR open).
write_4k () {
  "$1" bash -c 'exec 3<>"$1" && dd if="$2" of=/dev/fd/3 bs=4096 count=1 seek=256 oflag=direct conv=notrunc status=none' \
    _ "$f" "$T/block"
}
head -c 4096 /dev/urandom > "$T/block"; chmod 644 "$T/block"

echo "=== a new disk: 0600, the mounting user's"
[ "$(attrs)" = "600 0 0" ] || fail "new disk: mode/owner $(attrs), expected 600 0 0"
as_user head -c 4096 "$f" > /dev/null 2> "$T/err" && fail "$user read a 0600 root disk"
grep -q "Permission denied" "$T/err" || { cat "$T/err"; fail "$user: no EACCES"; }

echo "=== chown to $user; O_RDWR open as $user while incoming"
chown "$uid:$gid" "$f" || fail "chown refused"
[ "$(attrs)" = "600 $uid $gid" ] || fail "after chown: $(attrs)"
open_rw as_user 2> "$T/err" || { cat "$T/err"; fail "$user cannot open its incoming disk O_RDWR"; }
as_user cmp -n $((1 << 20)) "$f" "$img" || fail "$user reads wrong data"
write_4k as_user 2> "$T/err" && fail "a write to an incoming disk succeeded"
grep -q "Read-only file system" "$T/err" || { cat "$T/err"; fail "incoming write: not EROFS"; }

echo "=== activate; $user writes"
"$CORFS" activate --state "$st" d --epoch 1
write_4k as_user 2> "$T/err" || { cat "$T/err"; fail "$user cannot write after activation"; }
cmp <(dd if="$f" bs=4096 skip=256 count=1 status=none) "$T/block" || fail "the write did not land"

echo "=== chmod"
chmod 640 "$f"
[ "$(attrs)" = "640 $uid $gid" ] || fail "after chmod 640: $(attrs)"
as_user chmod 604 "$f" || fail "the owner cannot chmod"
[ "$(attrs)" = "604 $uid $gid" ] || fail "after the owner's chmod 604: $(attrs)"
as_other head -c 1 "$f" > /dev/null || fail "uid $other cannot read a 0604 disk"
as_other bash -c 'exec 3<>"$1"' _ "$f" 2> /dev/null && fail "uid $other opened a 0604 disk O_RDWR"
as_other chmod 666 "$f" 2> /dev/null && fail "uid $other chmod'ed $user's disk"
as_user chown "$other" "$f" 2> /dev/null && fail "$user gave its disk away"
chmod 600 "$f"
as_other head -c 1 "$f" > /dev/null 2>&1 && fail "uid $other read a 0600 disk"

echo "=== remount: mode and owner kept"
corfs_unmount "$mnt"
corfs_mount "$st" "$mnt" -o allow_other
[ "$(attrs)" = "600 $uid $gid" ] || fail "after remount: $(attrs)"
write_4k as_user || fail "$user cannot write after remount"

echo "=== handoff: the mode stays, writes get EROFS"
"$CORFS" handoff --state "$st" d --epoch 2
[ "$(attrs)" = "600 $uid $gid" ] || fail "after handoff: $(attrs)"
open_rw as_user 2> "$T/err" && fail "O_RDWR open of a handed-off disk succeeded"
grep -q "Read-only file system" "$T/err" || { cat "$T/err"; fail "handed-off O_RDWR: not EROFS"; }
as_user head -c 4096 "$f" > /dev/null || fail "$user cannot read its handed-off disk"
corfs_unmount "$mnt"
echo OK
