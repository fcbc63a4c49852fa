#!/usr/bin/env bash
# Proves the streamer can be steered through `corfs stream` (src/cor/stream.c:
# token-bucket rate limit, pause/resume/cancel):
#  - the control socket's "rate" action only sets the rate (a stream that
#    is off stays off); `corfs stream NAME --rate R` starts the stream at
#    about R (within [0.5, 1.6] x 20 MiB/s over 4 s);
#  - `--pause`: once it returns, at most the chunks already in flight
#    (3 workers x 2 MiB) land, status says "paused"; `--resume` streams again;
#  - `--rate 0` (unlimited) then `--cancel`: status "cancelled" and the
#    stream stops; `corfs stream --wait` starts it again and completes;
#  - `--pause` on a complete disk fails (non-zero exit, a message).
. "$(dirname "$0")/../functions.sh"

requires nbdkit --version
requires fusermount3 --version
requires jq --version

MiB=$((1 << 20))
SIZE=$((512 * MiB))
RATE=$((20 * MiB))
CHUNK=$((2 * MiB)) WORKERS=3
img=$T/parent.img sock=$T/nbd.sock
head -c $SIZE /dev/urandom > "$img"
start_nbdkit "$T/nbd.pid" -r -U "$sock" file "$img"

st=$T/state mnt=$T/mnt
corfs_mount "$st" "$mnt" --stream=off --disk d="$(nbd_uri "$sock")"
jfield () { "$CORFS" status --state "$st" d --json | jq -r "$1"; }
streamed () { jfield .stream.streamed_bytes; }
now_ms () { local t=${EPOCHREALTIME/./}; echo $(( t / 1000 )); }
steer () { "$CORFS" stream --state "$st" d "$@"; }

[ "$(jfield .stream.state)" = off ] || fail "stream.state is $(jfield .stream.state) on a --stream=off mount"

# The "rate" action alone sets the rate and starts nothing.
python3 - "$st/corfs.sock" <<'EOF2' || fail "the control socket's rate action"
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.settimeout(10)
s.sendall(b'{"cmd": "stream", "disk": "d", "action": "rate", "rate": 1048576}\n')
r = json.loads(s.makefile().readline())
if r.get("ok") is not True:
    print("FAIL: action rate: %r" % r); sys.exit(1)
EOF2
[ "$(jfield .stream.rate)" -eq $MiB ] || fail "stream.rate is $(jfield .stream.rate) after the rate action (1 MiB/s)"
sleep 0.5
[ "$(jfield .stream.state)" = off ] || fail "the rate action started the stream (state $(jfield .stream.state))"
[ "$(streamed)" -eq 0 ] || fail "the rate action alone streamed $(streamed) bytes"

# --- rate ---------------------------------------------------------------
steer --rate 20M || fail "corfs stream --rate 20M failed"
[ "$(jfield .stream.rate)" -eq $RATE ] || fail "stream.rate is $(jfield .stream.rate) after --rate 20M"
[ "$(jfield .stream.state)" = running ] || fail "stream.state is $(jfield .stream.state) after corfs stream --rate 20M"
sleep 1                                  # past the start-up
b0=$(streamed) t0=$(now_ms)
sleep 4
b1=$(streamed) t1=$(now_ms)
bps=$(( (b1 - b0) * 1000 / (t1 - t0) ))
echo "rate: $((b1 - b0)) bytes in $((t1 - t0)) ms = $bps B/s (limit $RATE)"
[ $bps -ge $((RATE / 2)) ] || fail "streamed at $bps B/s, below half the limit $RATE"
[ $bps -le $((RATE * 16 / 10)) ] || fail "streamed at $bps B/s, above 1.6 x the limit $RATE"
[ "$(jfield .stream.rate)" -eq $RATE ] || fail "stream.rate is $(jfield .stream.rate) while streaming"

# --- pause / resume -----------------------------------------------------
steer --pause || fail "corfs stream --pause failed"
p0=$(streamed)
[ "$(jfield .stream.state)" = paused ] || fail "stream.state is $(jfield .stream.state) after --pause"
sleep 1.5
p1=$(streamed)
echo "paused: grew by $((p1 - p0)) bytes in 1.5 s"
[ $((p1 - p0)) -le $((WORKERS * CHUNK)) ] ||
  fail "a paused stream grew by $((p1 - p0)) bytes in 1.5 s (at most $WORKERS chunks of $CHUNK were in flight)"
sleep 1
[ "$(streamed)" -eq "$p1" ] || fail "a paused stream still grows 1.5 s after the pause ($p1 -> $(streamed))"
[ "$(jfield .complete)" = false ] || fail "complete while paused"

steer --resume || fail "corfs stream --resume failed"
[ "$(jfield .stream.state)" = running ] || fail "stream.state is $(jfield .stream.state) after --resume"
sleep 1.5
r1=$(streamed)
echo "resumed: grew by $((r1 - p1)) bytes in 1.5 s"
[ "$r1" -gt "$p1" ] || fail "the stream did not grow after --resume"

# --- unlimited, then cancel ---------------------------------------------
steer --rate 0 || fail "corfs stream --rate 0 failed"
steer --cancel || fail "corfs stream --cancel failed"
c0=$(streamed)
[ "$(jfield .stream.state)" = cancelled ] || fail "stream.state is $(jfield .stream.state) after --cancel"
[ "$(jfield .stream.rate)" -eq 0 ] || fail "stream.rate is $(jfield .stream.rate) after --rate 0"
sleep 1.5
c1=$(streamed)
echo "cancelled: grew by $((c1 - c0)) bytes in 1.5 s; $(jfield .present_bytes) of $SIZE present"
[ $((c1 - c0)) -le $((WORKERS * CHUNK)) ] || fail "a cancelled stream grew by $((c1 - c0)) bytes"
[ "$(jfield .complete)" = false ] || fail "complete right after --cancel (the test lost its race)"
# --wait on a cancelled stream starts it again (from the cursor 0: the
# missing blocks) and returns when complete.
rc=0; timeout 120 "$CORFS" stream --state "$st" d --wait || rc=$?
[ $rc -eq 0 ] || fail "corfs stream --wait after --cancel exited $rc"
[ "$(jfield .complete)" = true ] || fail "not complete after --wait"
[ "$(jfield .stream.state)" = complete ] || fail "stream.state is $(jfield .stream.state) after --wait"
[ "$(jfield .present_bytes)" -eq $SIZE ] || fail "present_bytes $(jfield .present_bytes) != $SIZE"

# --- steering a complete disk -------------------------------------------
rc=0; steer --pause 2> "$T/pause.err" || rc=$?
echo "--pause on a complete disk: exit $rc: $(cat "$T/pause.err")"
[ $rc -ne 0 ] || fail "corfs stream --pause on a complete disk succeeded"
[ -s "$T/pause.err" ] || fail "corfs stream --pause on a complete disk failed without a message"
grep -q complete "$T/pause.err" || fail "the --pause error does not say the disk is complete: $(cat "$T/pause.err")"
[ "$(jfield .stream.state)" = complete ] || fail "stream.state is $(jfield .stream.state) after a refused --pause"
steer --wait || fail "corfs stream --wait on a complete disk failed"

cmp "$mnt/d" "$img" || fail "the disk differs from the image"
corfs_unmount "$mnt" || fail "corfs unmount failed"
echo OK
