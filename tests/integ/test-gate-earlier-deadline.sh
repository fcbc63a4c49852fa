#!/usr/bin/env bash
# The exclusive gate must not turn a guest request that would succeed into
# EIO.  A guest write waits for a block that a guest read owns (the parent
# answers that read after 4 s); 0.5 s later a `handoff` closes the gate and
# waits for the disk, which the streamer's stalled chunks (30 s) keep busy,
# so it fails after the hold (6 s).  The write began before the gate closed
# and its own deadline is earlier than the hand-off's: once the read ends
# it must go through and succeed, not wait at the gate until its hold ran
# out.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires nbdkit eval --dump-plugin
requires fusermount3 --version
requires jq --version

MiB=$((1 << 20))
HOLD=6
img=$T/parent.img
head -c $((32 * MiB)) /dev/urandom > "$img"
now_ms () { local t=${EPOCHREALTIME/./}; echo $(( t / 1000 )); }
start_eval_parent "$T/e.sock" "$img" --stall-below "$T/stall" $((16 * MiB)) 30 4
cleanup_fn rm -f "$T/stall"
st=$T/state mnt=$T/mnt
corfs_mount "$st" "$mnt" --hold $HOLD --stream=off --disk d="$(nbd_uri "$T/e.sock")"
for m in 20 22 24 26; do dd if="$mnt/d" of=/dev/null bs=$MiB count=1 skip=$m iflag=direct status=none & done; wait
touch "$T/stall"
"$CORFS" stream --state "$st" d >/dev/null || fail "stream start failed"
sleep 1                                   # chunks below 16 MiB stalled
X=$((30 * MiB))
dd if="$mnt/d" of=/dev/null bs=4096 count=1 skip=$((X / 4096)) iflag=direct status=none & rp=$!
sleep 0.5
( t=$(now_ms); rc=0
  dd if=/dev/urandom of="$mnt/d" bs=4096 count=1 seek=$((X / 4096)) oflag=direct conv=notrunc \
    status=none 2>"$T/w.err" || rc=$?
  echo "$rc $(( $(now_ms) - t ))" > "$T/w.out" ) & wp=$!
sleep 0.5
( rc=0; out=$(timeout 60 "$CORFS" handoff --state "$st" d --epoch 3 2>&1) || rc=$?
  echo "$rc $out" > "$T/h.out" ) & hp=$!
wait $rp || true
wait $wp
wait $hp
read -r wrc wms < "$T/w.out"
echo "write: rc $wrc after $wms ms $(cat "$T/w.err")"
echo "handoff: $(cat "$T/h.out")"
read -r hrc _ < "$T/h.out"
[ "$hrc" -ne 0 ] || fail "the hand-off got the disk: the stall did not hold it off (test broken)"
[ "$wrc" -eq 0 ] || fail "a guest write that began before the gate closed failed: $(cat "$T/w.err")"
[ "$wms" -lt $(( HOLD * 1000 )) ] || fail "the write took $wms ms"
[ "$("$CORFS" status --state "$st" d --json | jq -r .owner.state)" = active ] ||
  fail "the disk is not active after the failed hand-off"
rm -f "$T/stall"
echo OK
