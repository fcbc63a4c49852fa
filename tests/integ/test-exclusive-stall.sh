#!/usr/bin/env bash
# Exclusive commands (here `handoff`, which must own every block; a
# checkpoint waits only for writes, see test-checkpoint-fetching) with the
# streamer on and a slow or stalled parent:
#  1. slow parent (each read 1.5 s): the streamer's next chunks are held
#     off while the command waits, so it gets the disk as soon as the
#     chunks in flight end, and succeeds well within the hold;
#  2. stalled parent (reads sleep 30 s): it gives up after the hold with
#     an error naming the disk, the offset and the hold; meanwhile status
#     and metrics answer at once (long commands run off the control
#     thread), and a second long command on the disk is refused;
#  3. `corfs unmount` while one is waiting returns promptly, the daemon
#     exits, and the waiting client gets an answer.
. "$(dirname "$0")/../functions.sh"

requires nbdkit --version
requires nbdkit eval --dump-plugin
requires fusermount3 --version
requires jq --version

MiB=$((1 << 20))
HOLD=3
img=$T/parent.img
head -c $((128 * MiB)) /dev/urandom > "$img"
now_ms () { local t=${EPOCHREALTIME/./}; echo $(( t / 1000 )); }

start_eval_parent "$T/e.sock" "$img" --stall "$T/stall" 30 --stall "$T/slow" 1.5
st=$T/state mnt=$T/mnt
corfs_mount "$st" "$mnt" --hold $HOLD --stream=off --disk d="$(nbd_uri "$T/e.sock")"
cleanup_fn rm -f "$T/stall" "$T/slow"

# Open every parent connection now (a connect reads samples of the parent).
for m in 100 104 108 112; do
  dd if="$mnt/d" of=/dev/null bs=$MiB count=1 skip=$m iflag=direct status=none &
done
wait

# timed OUT CMD...: run CMD bounded by 60 s; ms in OUT, rc in OUT.rc,
# stdout+stderr in OUT.txt.
timed () {
  local out=$1 t0 rc=0; shift
  t0=$(now_ms)
  timeout 60 "$@" > "$out.txt" 2>&1 || rc=$?
  echo $(( $(now_ms) - t0 )) > "$out"
  echo $rc > "$out.rc"
}
# prompt WHAT CMD...: CMD answers, within 2 s.
prompt () {
  local what=$1; shift
  timed "$T/p" "$@"
  [ "$(cat "$T/p.rc")" -eq 0 ] || fail "$what failed: $(cat "$T/p.txt")"
  [ "$(cat "$T/p")" -lt 2000 ] || fail "$what took $(cat "$T/p") ms while a command waited"
  echo "$what answered in $(cat "$T/p") ms"
}

# --- 1. slow parent: the command gets the disk --------------------------
touch "$T/slow"
"$CORFS" stream --state "$st" d >/dev/null || fail "stream start failed"
sleep 1
timed "$T/c1" "$CORFS" handoff --state "$st" d --epoch 2
echo "handoff, slow parent: rc $(cat "$T/c1.rc") after $(cat "$T/c1") ms: $(cat "$T/c1.txt")"
[ "$(cat "$T/c1.rc")" -eq 0 ] || fail "handoff failed with a slow but live parent: $(cat "$T/c1.txt")"
[ "$(cat "$T/c1")" -lt $(( HOLD * 1000 + 2000 )) ] || fail "handoff took $(cat "$T/c1") ms"
"$CORFS" reclaim --state "$st" d --epoch 3 || fail "reclaim failed"
"$CORFS" stream --state "$st" d >/dev/null || fail "stream start failed"

# --- 2. stalled parent: a clear error after the hold ----------------------
touch "$T/stall"
rm -f "$T/slow"
sleep 2                          # the streamer's workers are stalled now
timed "$T/c2" "$CORFS" handoff --state "$st" d --epoch 4 & cp=$!
sleep 0.5
prompt "status" "$CORFS" status --state "$st" --json
jq -e '.[0].name == "d"' "$T/p.txt" >/dev/null || fail "status reply: $(cat "$T/p.txt")"
prompt "metrics" "$CORFS" metrics --state "$st"
timed "$T/c3" "$CORFS" checkpoint --state "$st" d
[ "$(cat "$T/c3.rc")" -ne 0 ] || fail "a checkpoint ran alongside the handoff"
grep -q "disk d: checkpoint refused: handoff is still running" "$T/c3.txt" ||
  fail "checkpoint during the handoff: unexpected answer: $(cat "$T/c3.txt")"
[ "$(cat "$T/c3")" -lt 2000 ] || fail "the refusal took $(cat "$T/c3") ms"
wait $cp
echo "handoff, stalled parent: rc $(cat "$T/c2.rc") after $(cat "$T/c2") ms: $(cat "$T/c2.txt")"
[ "$(cat "$T/c2.rc")" -ne 124 ] || fail "handoff hung"
[ "$(cat "$T/c2")" -lt $(( HOLD * 1000 + 2000 )) ] || fail "handoff took $(cat "$T/c2") ms, past the hold"
[ "$(cat "$T/c2.rc")" -ne 0 ] || fail "handoff got the disk although the streamer's chunks were stalled"
grep -q "disk d: handoff: not done: the block at offset [0-9]* was still being fetched or written when the hold time ($HOLD s) ran out" "$T/c2.txt" ||
  fail "handoff failed without a clear reason: $(cat "$T/c2.txt")"

# --- 3. unmount while a command waits -------------------------------------
pid=$(daemon_pid "$st")
timed "$T/c4" "$CORFS" handoff --state "$st" d --epoch 5 & cp=$!
sleep 0.5
timed "$T/u" "$CORFS" unmount "$mnt"
echo "unmount: rc $(cat "$T/u.rc") after $(cat "$T/u") ms: $(cat "$T/u.txt")"
[ "$(cat "$T/u.rc")" -eq 0 ] || fail "corfs unmount failed: $(cat "$T/u.txt")"
[ "$(cat "$T/u")" -lt 10000 ] || fail "unmount took $(cat "$T/u") ms"
alive "$pid" && fail "the daemon is still running after corfs unmount"
wait $cp
echo "handoff during unmount: rc $(cat "$T/c4.rc"): $(cat "$T/c4.txt")"
[ "$(cat "$T/c4.rc")" -ne 124 ] || fail "the client of a command waiting at unmount hung"
grep -q "handoff: not done" "$T/c4.txt" || fail "handoff during unmount: $(cat "$T/c4.txt")"
echo OK
