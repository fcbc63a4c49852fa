#!/usr/bin/env bash
# `merge` start talks to the parent (making an NBD parent writable waits for
# its connection 0), so it must not run on the control thread: with every
# parent connection held by a stalled guest read, `status` from another
# client must still answer at once while the merge start waits, and the
# merge start itself must answer (started, or a clear error).
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires nbdkit eval --dump-plugin
requires fusermount3 --version
requires jq --version

MiB=$((1 << 20))
HOLD=8
img=$T/parent.img
head -c $((128 * MiB)) /dev/urandom > "$img"
now_ms () { local t=${EPOCHREALTIME/./}; echo $(( t / 1000 )); }
start_eval_parent "$T/e.sock" "$img" --stall "$T/stall" 12 --write
cleanup_fn rm -f "$T/stall"
st=$T/state mnt=$T/mnt
corfs_mount "$st" "$mnt" --hold $HOLD --stream=off --disk d="$(nbd_uri "$T/e.sock")"
# Open every parent connection, then dirty one block.
for m in 100 104 108 112; do dd if="$mnt/d" of=/dev/null bs=$MiB count=1 skip=$m iflag=direct status=none & done; wait
dd if=/dev/urandom of="$mnt/d" bs=64k count=1 seek=1700 conv=notrunc,fsync status=none ||
  fail "write failed"
touch "$T/stall"
# Four guest reads hold the four connections for 12 s (each ends at its hold, 8 s).
for k in 90 92 94 96; do
  dd if="$mnt/d" of=/dev/null bs=4096 count=1 skip=$((k * MiB / 4096)) iflag=direct status=none 2>/dev/null &
done
sleep 1
( t=$(now_ms); rc=0; out=$(timeout 60 "$CORFS" merge --state "$st" d --parent-owned 2>&1) || rc=$?
  echo "$rc $(( $(now_ms) - t )) $out" > "$T/merge.out" ) & mp=$!
sleep 0.5
t=$(now_ms)
timeout 60 "$CORFS" status --state "$st" d --json > "$T/status.json" || fail "status failed"
ms=$(( $(now_ms) - t ))
echo "status answered in $ms ms while merge start waited"
[ $ms -lt 3000 ] || fail "status took $ms ms: merge start ran on the control thread"
jq -e '.name == "d"' "$T/status.json" >/dev/null || fail "status reply: $(cat "$T/status.json")"
wait $mp
echo "merge: $(cat "$T/merge.out")"
read -r rc mms _ < "$T/merge.out"
[ "$rc" -ne 124 ] || fail "merge start hung"
rm -f "$T/stall"
wait
echo OK
