#!/usr/bin/env bash
# A hint chunk that the streamer backed off from (an exclusive command held
# the gate shut) is fetched again from the hint's own cursor, not skipped
# until the sequential pass.  Hint range 32-48 MiB (hint-file); the
# parent stalls the chunk at 32 MiB (30 s) and answers the rest in 0.5 s;
# a `handoff` waits for the stalled chunk for its hold (4 s) with the gate
# shut.  The hint chunks picked meanwhile must be fetched once it gives up,
# before the sequential pass from 0 gets far: 34-48 MiB must be present
# while most of 0-32 MiB is still missing.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires nbdkit eval --dump-plugin
requires fusermount3 --version
requires jq --version

MiB=$((1 << 20))
HOLD=4
img=$T/parent.img
head -c $((64 * MiB)) /dev/urandom > "$img"
start_eval_parent "$T/e.sock" "$img" --before-read "if [ -e '$T/stall' ]; then
    if [ \$4 -ge $((32 * MiB)) ] && [ \$4 -lt $((34 * MiB)) ]; then sleep 30; else sleep 0.5; fi
  fi"
cleanup_fn rm -f "$T/stall"
echo "$((32 * MiB)) $((16 * MiB))" > "$T/hints"
cat > "$T/corfs.conf" <<EOC
[disk d]
url = $(nbd_uri "$T/e.sock")
stream = off
hint-file = $T/hints
EOC
st=$T/state mnt=$T/mnt
corfs_mount "$st" "$mnt" --hold $HOLD --config "$T/corfs.conf"
for m in 56 58 60 62; do dd if="$mnt/d" of=/dev/null bs=$MiB count=1 skip=$m iflag=direct status=none & done; wait
touch "$T/stall"
# present A B: bytes present in [A, B)
present () {
  "$CORFS" status --state "$st" d --maps --json |
    jq --argjson a "$1" --argjson b "$2" \
      '[.maps.present[] | ([.offset + .length, $b] | min) - ([.offset, $a] | max) | select(. > 0)] | add // 0'
}
"$CORFS" stream --state "$st" d >/dev/null || fail "stream start failed"
sleep 0.3                                  # the first hint chunks are in flight
rc=0; out=$(timeout 60 "$CORFS" handoff --state "$st" d --epoch 2 2>&1) || rc=$?
echo "handoff: rc $rc $out"
[ $rc -ne 0 ] || fail "the handoff got the disk (test broken)"
for i in $(seq 100); do
  [ "$(present $((34 * MiB)) $((48 * MiB)))" -ge $((14 * MiB)) ] && break
  sleep 0.1
done
hint=$(present $((34 * MiB)) $((48 * MiB))); low=$(present 0 $((32 * MiB)))
echo "present: hint range 34-48 MiB $hint bytes, 0-32 MiB $low bytes"
[ "$hint" -ge $((14 * MiB)) ] || fail "the hint range is not fetched 10 s after the handoff gave up"
[ "$low" -lt $((24 * MiB)) ] ||
  fail "the hint chunks held off by the handoff waited for the sequential pass ($low bytes of 0-32 MiB first)"
rm -f "$T/stall"
echo OK
