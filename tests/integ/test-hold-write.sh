#!/usr/bin/env bash
# Every guest write ends within its hold (then EIO), whatever it waits on:
#  1. a 4 KiB O_DIRECT write into a 2 MiB chunk that the streamer is
#     fetching from a stalled parent (eval plugin: reads sleep 30 s while
#     $T/stall exists) fails with EIO after about the hold (3 s), not
#     after the streamer's chunk deadline (60 s);
#  2. a write into a cold block that a guest read is fetching (stalled)
#     must fetch the block's other bytes too: its wait and its fetch
#     share one deadline, so it fails after about the hold, not after
#     what was left of the read's hold plus a hold of its own;
#  3. once the parent answers again, writes and reads succeed.
. "$(dirname "$0")/../functions.sh"

requires nbdkit --version
requires nbdkit eval --dump-plugin
requires fusermount3 --version

MiB=$((1 << 20))
HOLD=3
img=$T/parent.img
head -c $((64 * MiB)) /dev/urandom > "$img"
now_ms () { local t=${EPOCHREALTIME/./}; echo $(( t / 1000 )); }

start_eval_parent "$T/e.sock" "$img" --stall "$T/stall" 30
st=$T/state mnt=$T/mnt
corfs_mount "$st" "$mnt" --hold $HOLD --stream=off --disk d="$(nbd_uri "$T/e.sock")"
cleanup_fn rm -f "$T/stall"     # before the unmount: no new stalls

# Open every parent connection now (a connect reads samples of the
# parent), so that the stalls below are reads, not connects.
for m in 40 44 48 52; do
  dd if="$mnt/d" of=/dev/null bs=$MiB count=1 skip=$m iflag=direct status=none &
done
wait

# write_at OFFSET OUT: a 4 KiB O_DIRECT write, bounded; the time it took
# (ms) in OUT, its rc in OUT.rc, stderr in OUT.err.
write_at () {
  local t0 rc=0
  t0=$(now_ms)
  head -c 4096 /dev/urandom | timeout 120 dd of="$mnt/d" bs=4096 count=1 seek="$1" \
    oflag=direct,seek_bytes conv=notrunc status=none 2>"$2.err" || rc=$?
  echo $(( $(now_ms) - t0 )) > "$2"
  echo $rc > "$2.rc"
}
# check_eio OUT WHAT: the write failed with EIO within the hold + margin.
check_eio () {
  local el rc; el=$(cat "$1"); rc=$(cat "$1.rc")
  echo "$2: rc $rc after $el ms (hold $HOLD s)"
  [ "$rc" -ne 124 ] || fail "$2: hung (killed by timeout 120)"
  [ "$rc" -ne 0 ] || fail "$2: succeeded although its blocks could not be had in time"
  grep -q "Input/output error" "$1.err" || fail "$2: failed without EIO: $(cat "$1.err")"
  [ "$el" -ge $(( (HOLD - 1) * 1000 )) ] || fail "$2: failed after $el ms, before the hold"
  [ "$el" -lt $(( HOLD * 1000 + 1800 )) ] || fail "$2: took $el ms, past the hold ($HOLD s)"
}

# --- 1. into a chunk the streamer is fetching ---------------------------
touch "$T/stall"
"$CORFS" stream --state "$st" d >/dev/null || fail "stream start failed"
sleep 1                          # its workers have claimed the first chunks
write_at $(( MiB + 4096 )) "$T/w1"
check_eio "$T/w1" "write into a streamed chunk"
grep -q "write of 4096 bytes at offset $(( MiB + 4096 )): its blocks were still owned" "$st/corfs.log" ||
  fail "no log line naming the write that gave up"
"$CORFS" stream --state "$st" d --cancel >/dev/null || fail "stream cancel failed"

# --- 2. behind a guest read's fetch -------------------------------------
# A cold read owns its block while the stalled parent holds its fetch
# (until the read's own hold runs out); a write into that block 0.5 s
# later must not add its own edge fetch's hold to that wait.  (Two
# writes cannot show this: the kernel runs O_DIRECT writes to one FUSE
# file one at a time, before they reach corfs.)
touch "$T/stall"
off=$(( 20 * MiB ))
dd if="$mnt/d" of=/dev/null bs=4096 count=1 skip=$off iflag=direct,skip_bytes status=none \
  2>/dev/null & pr=$!
sleep 0.5
write_at $(( off + 8192 )) "$T/w2"
wait $pr && fail "the read of a block the stalled parent holds succeeded"
check_eio "$T/w2" "write behind a stalled read's fetch"

# --- 3. the parent answers again ----------------------------------------
rm -f "$T/stall"
sleep 1
head -c 4096 /dev/urandom > "$T/data"
dd if="$T/data" of="$mnt/d" bs=4096 count=1 seek=$(( 30 * MiB + 4096 )) oflag=direct,seek_bytes \
  conv=notrunc status=none || fail "write after the stall failed"
dd if="$mnt/d" of="$T/back" bs=4096 count=1 skip=$(( 30 * MiB + 4096 )) iflag=direct,skip_bytes \
  status=none || fail "read after the stall failed"
cmp -s "$T/data" "$T/back" || fail "the write after the stall did not read back"
cmp -s <(dd if="$mnt/d" bs=64K count=1 skip=$(( 30 * 16 )) status=none | head -c 4096) \
  <(dd if="$img" bs=64K count=1 skip=$(( 30 * 16 )) status=none | head -c 4096) ||
  fail "the fetched edge of the written block differs from the parent"
t0=$(now_ms)
corfs_unmount "$mnt" || fail "corfs unmount failed"
echo "unmount took $(( $(now_ms) - t0 )) ms"
echo OK
