#!/usr/bin/env bash
# fstab (issue 19): mount.corfs STATE_DIR MOUNTPOINT [-o OPTIONS], as
# mount(8) calls it, mounts a recorded state directory:
#  - -o stream=off mounts it, and the disk reads as its parent;
#  - the generic options mount(8) and systemd pass (defaults, nofail,
#    x-systemd.automount, _netdev, comment=...) are ignored, FUSE ones
#    (allow_other, ro) reach the mount;
#  - -f shows the command and mounts nothing; an unknown option is a
#    usage error (exit 1), a failed mount exit 32;
#  - through mount(8) itself: `mount -T FSTAB MNT` with a line of type
#    corfs.  mount(8) looks for helpers only in /sbin, so that part runs
#    in a mount namespace of its own with a scratch directory bound over
#    /usr/sbin (/sbin on Debian 12): nothing is written to the real one.
#    Skipped where unshare or mount(8) is missing.
. "$(dirname "$0")/../functions.sh"
requires fusermount3 --version
requires jq --version
helper=$TOOLS/mount.corfs
[ -x "$helper" ] || fail "no $helper"

img=$T/parent.img
head -c $((4 << 20)) /dev/urandom > "$img"
st=$T/st mnt=$T/mnt; mkdir -p "$mnt"

echo "=== a recorded state directory"
corfs_mount "$st" "$mnt" --disk d="file://$img"
corfs_unmount "$mnt"
is_mounted "$mnt" && fail "still mounted"

echo "=== mount.corfs STATE MNT -o stream=off"
"$helper" "$st" "$mnt" -o stream=off || fail "mount.corfs exited $?"
cleanup_fn _force_unmount "$st" "$mnt"
is_mounted "$mnt" || fail "not mounted"
cmp "$mnt/d" "$img" || fail "the disk does not read as its parent"
[ "$("$CORFS" status --state "$st" d --json | jq -r .stream.state)" = off ] ||
  fail "stream=off not applied"
corfs_unmount "$mnt"

echo "=== generic options ignored, FUSE options applied"
"$helper" "$st" "$mnt" -v -n \
  -o defaults,nofail,x-systemd.automount,_netdev,comment=systemd.want,stream=off,allow_other,ro \
  2> "$T/v.err" || fail "mount.corfs exited $?: $(cat "$T/v.err")"
cat "$T/v.err"
grep -q "running $CORFS mount --state $st --stream off -o allow_other -o ro -- $mnt" "$T/v.err" ||
  fail "-v does not show the command"
opts=$(awk -v m="$(realpath "$mnt")" '$2 == m { print $4 }' /proc/mounts)
echo "mount options: $opts"
case ",$opts," in *,ro,*) ;; *) fail "ro not applied: $opts";; esac
case ",$opts," in *,allow_other,*) ;; *) fail "allow_other not applied: $opts";; esac
cmp "$mnt/d" "$img" || fail "the disk does not read as its parent"
if dd if=/dev/zero of="$mnt/d" bs=4k count=1 conv=notrunc status=none 2> /dev/null; then
  fail "a write succeeded on a ro mount"
fi
corfs_unmount "$mnt"

echo "=== -f shows, mounts nothing; errors have mount(8)'s codes"
"$helper" -f "$st" "$mnt" -o stream=off 2> "$T/f.err" || fail "-f exited $?"
grep -q "running $CORFS mount --state $st --stream off -- $mnt" "$T/f.err" || fail "-f: $(cat "$T/f.err")"
is_mounted "$mnt" && fail "-f mounted"
rc=0; "$helper" "$st" "$mnt" -o stream=off,bogus 2> "$T/e.err" || rc=$?
[ $rc = 1 ] || fail "an unknown option: exit $rc"
grep -q "unknown option bogus" "$T/e.err" || fail "$(cat "$T/e.err")"
rc=0; "$helper" "$st" "$mnt" -o stream=sideways 2> "$T/e.err" || rc=$?
[ $rc = 1 ] || fail "a bad value (corfs's usage error): exit $rc"
mkdir -m 700 "$T/empty"
rc=0; "$helper" "$T/empty" "$mnt" 2> "$T/e.err" || rc=$?
[ $rc = 32 ] || fail "a failed mount (no disk): exit $rc"
cat "$T/e.err"
is_mounted "$mnt" && fail "mounted after errors"

echo "=== mount(8) with an fstab line (in a mount namespace of its own)"
if ! command -v mount > /dev/null || ! command -v unshare > /dev/null; then
  skip_part="mount(8) or unshare missing"
elif ! unshare --mount --propagation private true 2> /dev/null; then
  skip_part="cannot create a mount namespace"
else
  skip_part=""
fi
if [ -n "$skip_part" ]; then
  echo "(skipped: $skip_part)"
else
  mkdir "$T/sbin"
  cp "$helper" "$T/sbin/mount.corfs"
  echo "$st $mnt corfs stream=off,allow_other,defaults,nofail,x-systemd.automount 0 0" > "$T/fstab"
  # -n: no utab entry in the shared /run.  The daemon stays in the
  # namespace with its mount: unmounted (umount) before leaving it.
  unshare --mount --propagation private bash -euc '
    sbin=$(realpath /sbin)
    mount --bind "$1/sbin" "$sbin"
    mount -n -T "$1/fstab" "$2"
    grep " $2 fuse.corfs " /proc/mounts
    cmp "$2/d" "$3"
    pid=$(cat "$4/corfs.pid")
    umount "$2"
    for i in $(seq 300); do kill -0 "$pid" 2> /dev/null || exit 0; sleep 0.1; done
    echo "the daemon did not exit after umount" >&2; exit 1
  ' ns "$T" "$mnt" "$img" "$st" || fail "mount(8) through the fstab line"
  grep -q "daemon: clean exit" "$st/corfs.log" || fail "no clean exit"
  is_mounted "$mnt" && fail "still mounted outside the namespace"
fi
echo PASS
