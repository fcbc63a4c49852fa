#!/usr/bin/env bash
# An incoming disk in mirror mode, activated, keeps writing its parent
# across a reconnect (src/cor/engine.c cor_activate): before the fix,
# activation turned the identity check on for the mirror's own writes, so
# once the guest wrote a sampled block (offset 0) and the NBD export
# restarted (same image), the reconnect found the parent "changed" and
# every later mirror write failed with ESTALE (EIO to the guest).
#  - mount --incoming --write-mode=mirror --parent-owned, activate --force;
#  - write 64 KiB at offset 0 (in the parent too), restart nbdkit;
#  - write again: succeeds, reaches the parent, the parent is not "changed";
#  - a clean remount over the same image still mounts (the identity
#    recorded at the stop matches).
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version

MiB=1048576
img=$T/parent.img
head -c $((4 * MiB)) /dev/urandom > "$img"
sock=$T/nbd.sock url=$(nbd_uri "$T/nbd.sock") st=$T/state mnt=$T/mnt
serve () {
  if [ -s "$sock.pid" ]; then local p; p=$(cat "$sock.pid"); kill_pid "$p"; wait_gone "$p"; fi
  rm -f "$sock"
  start_nbdkit "$sock.pid" -U "$sock" file "$img"
}
js () { "$CORFS" status --state "$st" d --json | jq -r "(if type == \"array\" then .[0] else . end) | $1"; }
# wr OFF: 64 KiB of new data at OFF, O_DIRECT and fsync'd; it must be in the parent.
wr () {
  head -c 65536 /dev/urandom > "$T/data"
  dd if="$T/data" of="$mnt/d" bs=65536 seek="$1" oflag=seek_bytes,direct conv=notrunc,fsync \
     status=none 2> "$T/dd.err" || return 1
  cmp -s -n 65536 -i "$1:0" "$img" "$T/data"
}

serve
corfs_mount "$st" "$mnt" --hold 5 --incoming --write-mode=mirror --parent-owned --disk d="$url"
[ "$(js .owner.state)" = incoming ] || fail "owner state $(js .owner.state), expected incoming"
"$CORFS" activate --state "$st" d --epoch 1 --force || fail "activate failed"
[ "$(js .owner.state)" = active ] || fail "owner state $(js .owner.state) after activate"
wr 0 || fail "the first mirror write failed or is not in the parent: $(cat "$T/dd.err")"
serve                           # same image: connections drop, the next request reconnects
wr 0 || fail "a mirror write after the reconnect failed: $(cat "$T/dd.err"); parent: $(js -c .parent)"
wr $((2 * MiB)) || fail "a second write after the reconnect failed: $(cat "$T/dd.err")"
[ "$(js .parent.state)" != changed ] || fail "parent marked changed: $(js -c .parent)"
pid=$(daemon_pid "$st")
corfs_unmount "$mnt" || fail "unmount failed"
wait_gone "$pid"
corfs_mount "$st" "$mnt" --hold 5
wr 0 || fail "a write after the remount failed: $(cat "$T/dd.err")"
pid=$(daemon_pid "$st")
corfs_unmount "$mnt" || fail "unmount failed"
wait_gone "$pid"
echo OK
