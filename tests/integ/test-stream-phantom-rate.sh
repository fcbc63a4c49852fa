#!/usr/bin/env bash
# The streamer's rate and ETA count only what it made present.  While an
# exclusive command (here a `handoff` waiting for a stalled chunk) holds the
# gate shut, the other stream workers pick chunks that cor_populate backs
# off from at once; such a chunk covered nothing, but was counted whole,
# every 5 ms: `status` reported hundreds of MiB/s from a parent delivering
# a few.  The real rate here is at most 2 workers x 2 MiB per 0.5 s.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires nbdkit eval --dump-plugin
requires fusermount3 --version
requires jq --version

MiB=$((1 << 20))
HOLD=4
img=$T/parent.img
head -c $((128 * MiB)) /dev/urandom > "$img"
start_eval_parent "$T/e.sock" "$img" --stall-below "$T/stall" $((2 * MiB)) 30 0.5
cleanup_fn rm -f "$T/stall"
st=$T/state mnt=$T/mnt
corfs_mount "$st" "$mnt" --hold $HOLD --stream=off --disk d="$(nbd_uri "$T/e.sock")"
for m in 100 104 108 112; do dd if="$mnt/d" of=/dev/null bs=$MiB count=1 skip=$m iflag=direct status=none & done; wait
touch "$T/stall"
"$CORFS" stream --state "$st" d >/dev/null || fail "stream start failed"
sleep 3                             # past the rate estimate's first 2 s window
( timeout 60 "$CORFS" handoff --state "$st" d --epoch 2 > "$T/h.out" 2>&1 || true ) & hp=$!
max=0
for i in 1 2 3; do
  sleep 1
  bps=$("$CORFS" status --state "$st" d --json | jq -r '.stream.bytes_per_s | floor')
  echo "stream rate while the handoff waits: $bps bytes/s"
  [ "$bps" -gt "$max" ] && max=$bps
done
wait $hp
echo "handoff: $(cat "$T/h.out")"
grep -q "handoff: not done" "$T/h.out" || fail "the handoff got the disk (test broken): $(cat "$T/h.out")"
[ "$max" -lt $((32 * MiB)) ] || fail "the stream reported $max bytes/s while held off (phantom progress)"
rm -f "$T/stall"
echo OK
