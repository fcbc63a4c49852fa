#!/usr/bin/env bash
# checkpoint waits only for writes in flight, not for fetches: with the
# streamer's chunks stalled by the parent (reads sleep 30 s, hold 3 s) it
# still succeeds at once (fetches only set present bits, never dirty or
# changed ones), while a write in flight is still waited for.  `dirty
# --since` the generation then lists a later write.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires nbdkit eval --dump-plugin
requires fusermount3 --version
requires jq --version

MiB=$((1 << 20))
HOLD=3
img=$T/parent.img
head -c $((32 * MiB)) /dev/urandom > "$img"
now_ms () { local t=${EPOCHREALTIME/./}; echo $(( t / 1000 )); }
start_eval_parent "$T/e.sock" "$img" --stall-below "$T/stall" $((16 * MiB)) 30
cleanup_fn rm -f "$T/stall"
st=$T/state mnt=$T/mnt
corfs_mount "$st" "$mnt" --hold $HOLD --stream=off --disk d="$(nbd_uri "$T/e.sock")"
for m in 20 22 24 26; do dd if="$mnt/d" of=/dev/null bs=$MiB count=1 skip=$m iflag=direct status=none & done; wait
touch "$T/stall"
"$CORFS" stream --state "$st" d >/dev/null || fail "stream start failed"
sleep 1                                   # chunks below 16 MiB stalled

# 1. Only fetches in flight: at once.
for i in 1 2; do
  t=$(now_ms); rc=0
  out=$(timeout 60 "$CORFS" checkpoint --state "$st" d 2>&1) || rc=$?
  ms=$(( $(now_ms) - t ))
  echo "checkpoint $i with stalled fetches: rc $rc after $ms ms: $out"
  [ $rc -eq 0 ] || fail "checkpoint failed while only fetches were in flight: $out"
  [ $ms -lt 2000 ] || fail "checkpoint took $ms ms waiting for fetches"
done
gen=$out

# 2. A write in flight is waited for: a 4 KiB write into the middle of a
#    missing block at 12 MiB owns that block while it fetches the rest of
#    it from the stalled parent (until its hold, then EIO); a checkpoint
#    issued meanwhile answers only after it, within the hold.
( rc=0; dd if=/dev/urandom of="$mnt/d" bs=4096 count=1 seek=$((12 * MiB / 4096 + 3)) oflag=direct \
    conv=notrunc status=none 2>/dev/null || rc=$?; echo $rc > "$T/w.rc" ) & wp=$!
sleep 0.5
t=$(now_ms); rc=0
out=$(timeout 60 "$CORFS" checkpoint --state "$st" d 2>&1) || rc=$?
ms=$(( $(now_ms) - t ))
wait $wp
echo "checkpoint with a write in flight: rc $rc after $ms ms: $out (write rc $(cat "$T/w.rc"))"
[ $rc -eq 0 ] || fail "checkpoint failed once the write had ended: $out"
[ $ms -ge 1500 ] || fail "checkpoint answered after $ms ms, without waiting for the write in flight"
[ $ms -lt $(( HOLD * 1000 + 2000 )) ] || fail "checkpoint took $ms ms"

# 3. The generation works: a later write is listed.
dd if=/dev/urandom of="$mnt/d" bs=4096 count=1 seek=$((20 * MiB / 4096)) oflag=direct conv=notrunc \
  status=none || fail "write failed"
"$CORFS" dirty --state "$st" d --since "$gen" --json > "$T/dirty.json" 2>&1 ||
  fail "dirty --since $gen failed: $(cat "$T/dirty.json")"
jq -e --argjson o $((20 * MiB)) '[.extents[] | select(.offset <= $o and .offset + .length > $o)] | length == 1' \
  "$T/dirty.json" >/dev/null || fail "dirty --since $gen misses the later write: $(cat "$T/dirty.json")"
rm -f "$T/stall"
echo OK
