#!/usr/bin/env bash
# A lost overlay is refused, never silently recreated (issue 15 item 10):
# blocks the index records present would read as zeros.  File parent,
# 4 MiB; after a clean unmount with 1 MiB present:
#  - the overlay emptied (truncated to 0): the mount fails, names the
#    overlay file, leaves no mount and no daemon, and leaves the file as
#    it was (empty, not re-extended);
#  - the overlay removed: the same, and no file is created;
#  - the overlay put back: the mount works and reads the image.
. "$(dirname "$0")/../functions.sh"
requires fusermount3 --version

MiB=1048576
img=$T/parent.img
head -c $((4 * MiB)) /dev/urandom > "$img"
st=$T/state mnt=$T/mnt
ov=$st/d.overlay

corfs_mount "$st" "$mnt" --disk d="file://$img"
cmp <(head -c $MiB "$mnt/d") <(head -c $MiB "$img") || fail "first read differs"
pid=$(daemon_pid "$st")
corfs_unmount "$mnt" || fail "unmount failed"
wait_gone "$pid"
[ -f "$ov" ] || fail "no overlay at $ov"
cp --sparse=always "$ov" "$T/overlay.saved"

# expect_refused WHAT: the mount fails, naming the overlay; no mount, no daemon.
expect_refused () {
  local rc=0
  "$CORFS" mount --state "$st" --stream=off "$mnt" > "$T/out" 2>&1 || rc=$?
  echo "$1: exit $rc: $(cat "$T/out")"
  if [ $rc -eq 0 ]; then
    cleanup_fn _force_unmount "$st" "$mnt"
    local z; z=$(head -c $MiB "$mnt/d" | tr -d '\0' | wc -c)
    fail "$1: the mount succeeded (the first MiB has $z non-zero bytes; the image has ~$MiB)"
  fi
  grep -qF "$ov" "$T/out" || fail "$1: the error does not name $ov: $(cat "$T/out")"
  ! is_mounted "$mnt" || { fusermount3 -u "$mnt"; fail "$1: a refused mount left $mnt mounted"; }
  local i
  for i in $(seq 50); do flock -n "$st/corfs.pid" true 2>/dev/null && break; sleep 0.1; done
  flock -n "$st/corfs.pid" true || fail "$1: a daemon still holds $st"
}

: > "$ov"
expect_refused "empty overlay"
[ "$(stat -c %s "$ov")" = 0 ] || fail "the refused mount changed the empty overlay (size $(stat -c %s "$ov"))"

rm -f "$ov"
expect_refused "missing overlay"
[ ! -e "$ov" ] || fail "the refused mount created $ov"

cp --sparse=always "$T/overlay.saved" "$ov"
corfs_mount "$st" "$mnt"
cmp "$mnt/d" "$img" || fail "the disk differs from the image with its overlay back"
pid=$(daemon_pid "$st")
corfs_unmount "$mnt" || fail "final unmount failed"
wait_gone "$pid"
echo OK
