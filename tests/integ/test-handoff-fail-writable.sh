#!/usr/bin/env bash
# A hand-off that cannot get the disk (the streamer's chunk is stalled by
# the parent past the hold) fails with nothing changed, and the guest never
# sees EROFS meanwhile: a write issued while the hand-off waits completes
# once the hand-off has given up (it was only held off), the disk stays
# active, and later writes succeed.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires nbdkit eval --dump-plugin
requires fusermount3 --version
requires jq --version

MiB=$((1 << 20))
HOLD=4
img=$T/parent.img
head -c $((32 * MiB)) /dev/urandom > "$img"
start_eval_parent "$T/e.sock" "$img" --stall-below "$T/stall" $((16 * MiB)) 30
cleanup_fn rm -f "$T/stall"
st=$T/state mnt=$T/mnt
corfs_mount "$st" "$mnt" --hold $HOLD --stream=off --disk d="$(nbd_uri "$T/e.sock")"
for m in 20 22 24 26; do dd if="$mnt/d" of=/dev/null bs=$MiB count=1 skip=$m iflag=direct status=none & done; wait
touch "$T/stall"
"$CORFS" stream --state "$st" d >/dev/null || fail "stream start failed"
sleep 1                              # the streamer's chunks below 16 MiB are stalled now
( rc=0; out=$(timeout 60 "$CORFS" handoff --state "$st" d --epoch 5 2>&1) || rc=$?
  echo "$rc $out" > "$T/handoff.out" ) & hp=$!
sleep 1
rc=0
dd if=/dev/urandom of="$mnt/d" bs=4096 count=1 seek=$((20 * MiB / 4096)) oflag=direct conv=notrunc \
  status=none 2>"$T/w.err" || rc=$?
wait $hp
echo "handoff: $(cat "$T/handoff.out")"
echo "write during the handoff: rc $rc $(cat "$T/w.err")"
read -r hrc _ < "$T/handoff.out"
[ "$hrc" -ne 0 ] || fail "the hand-off succeeded: the stall did not hold it off (test broken)"
grep -q "handoff: not done" "$T/handoff.out" || fail "handoff failed without a clear reason: $(cat "$T/handoff.out")"
grep -q "Read-only file system" "$T/w.err" && fail "a guest write got EROFS while a hand-off that then failed waited"
[ "$rc" -eq 0 ] || fail "a guest write failed while a hand-off waited: $(cat "$T/w.err")"
state=$("$CORFS" status --state "$st" d --json | jq -r .owner.state)
[ "$state" = active ] || fail "owner state $state after a failed hand-off"
dd if=/dev/urandom of="$mnt/d" bs=4096 count=1 seek=$((20 * MiB / 4096)) oflag=direct conv=notrunc \
  status=none || fail "a write after the failed hand-off failed"
rm -f "$T/stall"
echo OK
