#!/usr/bin/env bash
# A mirror's parent identity across stops, abort and reclaim (issue 15
# review, docs/design.md rule 9).  NBD parent (nbdkit file plugin, writable),
# restarted to drop connections or on another image to swap it:
#  1. a mirror that wrote its parent (the sampled first block) remounts
#     cleanly over the same image (the identity recorded at the stop
#     matches);
#  2. after a clean stop, the parent swapped for another image of the
#     same size: the mount is refused naming the disk and the parent
#     (63d3432 passed no identity for a mirror and re-pinned whatever it
#     found), and the other image is not written;
#  3. abort, then reclaim: writes reach the parent again, also after the
#     export restarts (a reconnect) (63d3432: abort turned the identity
#     check on for the mirror's own writes and reclaim left it on, so the
#     reconnect found the parent "changed" and the writes failed).
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version

MiB=1048576
A=$T/a.img B=$T/b.img
head -c $((4 * MiB)) /dev/urandom > "$A"
head -c $((4 * MiB)) /dev/urandom > "$B"
cp "$B" "$T/b.orig"
sock=$T/nbd.sock url=$(nbd_uri "$T/nbd.sock") st=$T/state mnt=$T/mnt
serve () {
  if [ -s "$sock.pid" ]; then local p; p=$(cat "$sock.pid"); kill_pid "$p"; wait_gone "$p"; fi
  rm -f "$sock"
  start_nbdkit "$sock.pid" -U "$sock" file "$1"
}
js () { "$CORFS" status --state "$st" d --json | jq -r "(if type == \"array\" then .[0] else . end) | $1"; }
unmount () { corfs_unmount "$mnt" || fail "unmount failed"; wait_gone "$(daemon_pid "$st")"; }
# wr OFF: 4 KiB of new data at OFF, O_DIRECT and fsync'd; it must be in A.
wr () {
  head -c 4096 /dev/urandom > "$T/data"
  dd if="$T/data" of="$mnt/d" bs=4096 seek="$1" oflag=seek_bytes,direct conv=notrunc,fsync \
     status=none 2> "$T/dd.err" || return 1
  cmp -s -n 4096 -i "$1:0" "$A" "$T/data"
}

serve "$A"
corfs_mount "$st" "$mnt" --hold 5 --write-mode=mirror --parent-owned --disk d="$url"
wr 0 || fail "1: a mirror write failed or is not in the parent: $(cat "$T/dd.err")"
unmount
corfs_mount "$st" "$mnt" --hold 5
wr 0 || fail "1: a write after the remount failed: $(cat "$T/dd.err")"
unmount

serve "$B"
rc=0; "$CORFS" mount --state "$st" --stream=off --hold 5 "$mnt" > "$T/out" 2>&1 || rc=$?
echo "2: mirror mount over a swapped parent: exit $rc: $(cat "$T/out")"
if [ $rc -eq 0 ]; then
  cleanup_fn _force_unmount "$st" "$mnt"
  fail "2: a mirror mounted over a swapped parent"
fi
grep -qF "disk d" "$T/out" && grep -qF "nbd.sock" "$T/out" \
  || fail "2: the refusal does not name the disk and the parent: $(cat "$T/out")"
cmp -s "$B" "$T/b.orig" || fail "2: the other image was written"

serve "$A"
corfs_mount "$st" "$mnt" --hold 5
"$CORFS" abort --state "$st" d > "$T/out" 2>&1 || fail "3: abort failed: $(cat "$T/out")"
[ "$(js .owner.state)" = handed-off ] || fail "3: owner $(js .owner.state) after abort"
"$CORFS" reclaim --state "$st" d --epoch 1 > "$T/out" 2>&1 || fail "3: reclaim failed: $(cat "$T/out")"
wr 0 || fail "3: a write after reclaim failed: $(cat "$T/dd.err")"
serve "$A"
wr 0 || fail "3: a write after reclaim and a reconnect failed: $(cat "$T/dd.err") (parent $(js .parent.state): $(js .parent.last_error))"
wr $((2 * MiB)) || fail "3: a second write after the reconnect failed: $(cat "$T/dd.err")"
[ "$(js .parent.state)" != changed ] || fail "3: the parent is 'changed' after the mirror's own writes"
echo OK
