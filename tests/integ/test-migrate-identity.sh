#!/usr/bin/env bash
# The parent's identity is pinned at activation, also when the activation
# is busy or interrupted (docs/design.md rule 9, "Disk states"; issue 15 items
# 2 and 8).  NBD parent behind nbdkit's delay filter (every read 1 s).
#  A. Incoming disk, its four connections connected, twelve O_DIRECT
#     reads in flight (three per connection), `activate` meanwhile: every read returns the image's
#     bytes, the index records a non-empty identity, and after an unmount
#     a remount over another image of the same size is refused ("changed").
#  B. `activate` killed (-9) while it pins the parent (state "activating"
#     in the index): the remount finishes the activation and records an
#     identity; a parent then swapped for another image of the same size
#     fails closed (EIO, parent.state "changed"), never re-pinned.
# `activate --force` although the export is read-only: the writability
# check would cost a connection of its own (three delayed sample reads).
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires nbdkit --filter=delay null --dump-plugin
requires fusermount3 --version
requires jq --version
requires mdb_dump -V

KiB=1024 MiB=1048576
size=$((8 * MiB))
imgA=$T/a.img imgB=$T/b.img
head -c $size /dev/urandom > "$imgA"
head -c $size /dev/urandom > "$imgB"
problems=()
soft () { echo "FAIL (continuing): $*" >&2; problems+=("$*"); }
js () {
  "$CORFS" status --state "$1" d --json | jq -r "(if type == \"array\" then .[0] else . end) | $2"
}
# rec STATE FIELD: a field of disk d's record in the index (mdb_dump -p
# shows the record's newlines as \0a).
rec () {
  mdb_dump -p -s disks "$1/index" | grep -o "[\\]0a$2=[^\\]*" | head -n 1 | sed "s/^[\\]0a$2=//"
}
piece () { dd if="$1" iflag=skip_bytes,count_bytes skip="$2" count="$3" bs=64K status=none; }
# serve SOCK IMG [delay]: (re)start nbdkit, read-only, on SOCK.
serve () {
  local sock=$1 img=$2 pidf=$1.pid
  if [ -s "$pidf" ]; then local p; p=$(cat "$pidf"); kill_pid "$p"; wait_gone "$p"; fi
  rm -f "$sock"
  if [ "${3:-}" = delay ]; then
    start_nbdkit "$pidf" -r -U "$sock" --filter=delay file "$img" delay-read=1
  else
    start_nbdkit "$pidf" -r -U "$sock" file "$img"
  fi
}

# ---- A: activation while every connection is busy ----
sockA=$T/a.sock urlA=$(nbd_uri "$T/a.sock") stA=$T/stA mntA=$T/mntA
serve "$sockA" "$imgA" delay
corfs_mount "$stA" "$mntA" --incoming --hold 30 --disk d="$urlA"
# Warm-up: four reads at once connect all four connections (each
# connect reads three delayed samples): later reads find them connected.
pids=()
for i in 0 1 2 3; do
  dd if="$mntA/d" of=/dev/null bs=4K skip=$((i * 300 + 1)) count=1 iflag=direct status=none &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || fail "A: warm-up read failed"; done
# Twelve reads of a second each, on four connections: all four stay busy
# for about three seconds; activate meanwhile.
pids=()
for i in $(seq 0 11); do
  dd if="$mntA/d" of="$T/r$i" bs=64K skip=$((i * 10 + 3)) count=1 iflag=direct status=none \
     2> "$T/r$i.err" &
  pids+=($!)
done
sleep 1
rc=0; "$CORFS" activate --state "$stA" d --epoch 1 --force > "$T/out" 2>&1 || rc=$?
echo "A: activate with reads in flight: exit $rc: $(cat "$T/out")"
[ $rc -eq 0 ] || fail "A: activate failed: $(cat "$T/out")"
for i in $(seq 0 11); do
  wait "${pids[$i]}" || soft "A: read $i failed: $(cat "$T/r$i.err")"
  cmp -s "$T/r$i" <(piece "$imgA" $(( (i * 10 + 3) * 64 * KiB )) $((64 * KiB))) \
    || soft "A: read $i returned wrong data"
done
[ "$(js "$stA" .owner.state)" = active ] || soft "A: owner $(js "$stA" .owner.state) after activate"
idA=$(rec "$stA" identity)
echo "A: recorded identity '$idA'"
[ -n "$idA" ] || soft "A: activation recorded an empty identity"
pid=$(daemon_pid "$stA")
corfs_unmount "$mntA" || fail "A: unmount failed"
wait_gone "$pid"
# Another image of the same size: the remount must refuse it.
serve "$sockA" "$imgB"
rc=0; "$CORFS" mount --state "$stA" --stream=off "$mntA" > "$T/out" 2>&1 || rc=$?
echo "A: remount over another image: exit $rc: $(cat "$T/out")"
if [ $rc -eq 0 ]; then
  soft "A: the remount over another image of the same size succeeded"
  pid=$(daemon_pid "$stA")
  corfs_unmount "$mntA"; wait_gone "$pid"
else
  grep -qi changed "$T/out" || soft "A: the refusal does not say the parent changed: $(cat "$T/out")"
fi

# ---- B: activation interrupted while it pins the parent ----
sockB=$T/b.sock urlB=$(nbd_uri "$T/b.sock") stB=$T/stB mntB=$T/mntB
serve "$sockB" "$imgA" delay
corfs_mount "$stB" "$mntB" --incoming --hold 30 --disk d="$urlB"
"$CORFS" activate --state "$stB" d --epoch 3 --force > "$T/act.out" 2>&1 &
actpid=$!
# The pin reads sampled blocks (1 s each) after state=activating is durable.
for i in $(seq 100); do [ "$(rec "$stB" state)" = activating ] && break; sleep 0.1; done
[ "$(rec "$stB" state)" = activating ] || fail "B: the index never said 'activating' (state $(rec "$stB" state))"
crash_unmount "$stB" "$mntB"
wait "$actpid" || true
[ "$(rec "$stB" state)" = activating ] || fail "B: state $(rec "$stB" state) after the kill, expected activating (too late?)"
serve "$sockB" "$imgA"
corfs_mount "$stB" "$mntB" --hold 10
[ "$(js "$stB" '.owner.state + "/" + (.owner.epoch|tostring)')" = active/3 ] \
  || soft "B: owner after the resumed activation: $(js "$stB" '.owner|tostring'), expected active/3"
idB=$(rec "$stB" identity)
echo "B: recorded identity '$idB'"
[ -n "$idB" ] || soft "B: the resumed activation recorded an empty identity"
cmp <(piece "$mntB/d" $MiB $((64 * KiB))) <(piece "$imgA" $MiB $((64 * KiB))) \
  || soft "B: read after the resumed activation differs from the image"
# The parent is swapped under the running disk: fail closed.
serve "$sockB" "$imgB"
rc=0
dd if="$mntB/d" of="$T/got" bs=64K skip=100 count=1 iflag=direct status=none 2> "$T/dd.err" || rc=$?
echo "B: read after the swap: exit $rc: $(cat "$T/dd.err"); parent $(js "$stB" '.parent|tostring')"
if [ $rc -eq 0 ]; then
  if cmp -s "$T/got" <(piece "$imgB" $((100 * 64 * KiB)) $((64 * KiB))); then
    soft "B: a read after the parent was swapped returned the other image's data"
  else
    soft "B: a read after the parent was swapped succeeded"
  fi
fi
[ "$(js "$stB" .parent.state)" = changed ] || soft "B: parent.state $(js "$stB" .parent.state) after the swap, expected changed"
pid=$(daemon_pid "$stB")
corfs_unmount "$mntB" || soft "B: unmount failed"
wait_gone "$pid"

if [ ${#problems[@]} -ne 0 ]; then
  printf 'FAILED CHECK: %s\n' "${problems[@]}" >&2
  fail "${#problems[@]} check(s) failed"
fi
echo OK
