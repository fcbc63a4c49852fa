#!/usr/bin/env bash
# A merge never writes into a parent swapped since it was pinned (issue
# 15 review, docs/design.md rule 9).  NBD parent A (writable, owned); a write
# makes a block dirty; the export is then restarted on another image B
# of the same size, and nothing notices before `corfs merge`:
#  - merge is refused with an error naming the disk and the parent; B is
#    not written; the parent shows state "changed" (63d3432: the merge
#    turned the identity check off first, its first reconnect re-pinned B
#    silently, it wrote the dirty block into B and recorded B as synced);
#  - with A back, the merge runs, reaches synced, and A holds the write.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version

MiB=1048576
A=$T/a.img B=$T/b.img
head -c $((4 * MiB)) /dev/urandom > "$A"
head -c $((4 * MiB)) /dev/urandom > "$B"
cp "$A" "$T/expect.img"
cp "$B" "$T/b.orig"
sock=$T/nbd.sock url=$(nbd_uri "$T/nbd.sock") st=$T/state mnt=$T/mnt
serve () {
  if [ -s "$sock.pid" ]; then local p; p=$(cat "$sock.pid"); kill_pid "$p"; wait_gone "$p"; fi
  rm -f "$sock"
  start_nbdkit "$sock.pid" -U "$sock" file "$1"
}
js () { "$CORFS" status --state "$st" d --json | jq -r "(if type == \"array\" then .[0] else . end) | $1"; }

serve "$A"
corfs_mount "$st" "$mnt" --parent-owned --hold 5 --disk d="$url"
twin_write "$mnt/d" "$T/expect.img" $MiB 65536 direct || fail "write failed"
serve "$B"
rc=0; timeout 60 "$CORFS" merge --state "$st" d --wait > "$T/out" 2>&1 || rc=$?
echo "merge over a swapped parent: exit $rc: $(cat "$T/out")"
[ $rc -ne 0 ] || fail "the merge ran into a swapped parent"
grep -qF "disk d" "$T/out" && grep -qF "nbd.sock" "$T/out" \
  || fail "the refusal does not name the disk and the parent: $(cat "$T/out")"
cmp -s "$B" "$T/b.orig" || fail "the foreign image B was written"
[ "$(js .parent.state)" = changed ] || fail "parent state $(js .parent.state), expected changed"
[ "$(js .dirty_bytes)" -gt 0 ] 2>/dev/null || fail "dirty bytes $(js .dirty_bytes) after the refusal"

# A again: the parent is the pinned image, but the disk failed closed on
# it; a remount takes it back.
corfs_unmount "$mnt" || fail "unmount failed"
wait_gone "$(daemon_pid "$st")"
serve "$A"
corfs_mount "$st" "$mnt" --hold 5
rc=0; timeout 60 "$CORFS" merge --state "$st" d --wait > "$T/out" 2>&1 || rc=$?
[ $rc -eq 0 ] || fail "merge into the pinned parent failed: $(cat "$T/out")"
cmp "$A" "$T/expect.img" || fail "A does not hold the merged write"
cmp -s "$B" "$T/b.orig" || fail "B was written"
echo OK
