#!/usr/bin/env bash
# Activation pins a parent of the disk's own size, and a failed
# activation is undone (issue 15 review).  Incoming 8 MiB disk over NBD:
#  1. the parent is down during `activate --force`: it fails, and the
#     record says incoming, not activating: after an unmount and a
#     remount over the right image the disk is still incoming (63d3432:
#     the mount finished the failed activation on its own);
#  2. the export is replaced by a 4 MiB image: activate fails naming the
#     disk, the parent and both sizes; the disk stays incoming (63d3432:
#     active, reads past 4 MiB EIO);
#  3. over the right image again, activate with the same epoch succeeds
#     and the disk reads the image.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version

MiB=1048576
big=$T/big.img small=$T/small.img
head -c $((8 * MiB)) /dev/urandom > "$big"
head -c $((4 * MiB)) /dev/urandom > "$small"
sock=$T/nbd.sock url=$(nbd_uri "$T/nbd.sock") st=$T/state mnt=$T/mnt
serve () {
  if [ -s "$sock.pid" ]; then local p; p=$(cat "$sock.pid"); kill_pid "$p"; wait_gone "$p"; fi
  rm -f "$sock"
  start_nbdkit "$sock.pid" -r -U "$sock" file "$1"
}
js () { "$CORFS" status --state "$st" d --json | jq -r "(if type == \"array\" then .[0] else . end) | $1"; }

serve "$big"
corfs_mount "$st" "$mnt" --incoming --hold 5 --disk d="$url"
cmp <(head -c $MiB "$mnt/d") <(head -c $MiB "$big") || fail "incoming read differs"

# 1. parent down
p=$(cat "$sock.pid"); kill_pid "$p"; wait_gone "$p"; rm -f "$sock" "$sock.pid"
rc=0; "$CORFS" activate --state "$st" d --epoch 1 --force > "$T/out" 2>&1 || rc=$?
echo "1: activate with the parent down: exit $rc: $(cat "$T/out")"
[ $rc -ne 0 ] || fail "1: activate succeeded with the parent down"
[ "$(js .owner.state)" = incoming ] || fail "1: owner $(js .owner.state) after the failed activation"
serve "$big"
corfs_unmount "$mnt" || fail "1: unmount failed"
wait_gone "$(daemon_pid "$st")"
corfs_mount "$st" "$mnt" --hold 5
[ "$(js .owner.state)" = incoming ] \
  || fail "1: the remount made the disk $(js .owner.state): a failed activation was finished by a mount"

# 2. parent of another size
serve "$small"
rc=0; "$CORFS" activate --state "$st" d --epoch 1 > "$T/out" 2>&1 || rc=$?
echo "2: activate over a 4 MiB parent: exit $rc: $(cat "$T/out")"
[ $rc -ne 0 ] || fail "2: an 8 MiB disk was activated over a 4 MiB parent"
for w in "disk d" "nbd.sock" 4194304 8388608; do
  grep -qF "$w" "$T/out" || fail "2: the refusal does not name '$w': $(cat "$T/out")"
done
[ "$(js .owner.state)" = incoming ] || fail "2: owner $(js .owner.state) after the failed activation"

# 3. the right parent
serve "$big"
rc=0; "$CORFS" activate --state "$st" d --epoch 1 > "$T/out" 2>&1 || rc=$?
[ $rc -eq 0 ] || fail "3: activate over the right parent failed: $(cat "$T/out")"
[ "$(js '.owner.state + "/" + (.owner.epoch|tostring)')" = active/1 ] \
  || fail "3: owner $(js '.owner|tostring') after activate, expected active/1"
cmp "$mnt/d" "$big" || fail "3: the activated disk differs from the image"
echo OK
