#!/usr/bin/env bash
# Several sources for one image (src/remote/sources.c): an HTTP source
# (nginx) first and an NBD source (nbdkit file plugin) second, of one
# 64 MiB random image:
#  - the first killed during a cold read: the read completes, correct, in
#    a few seconds (not the 20 s hold); status names the first failed
#    and the second serving;
#  - the first back (same file, same ETag): the prober finds it, it
#    matches, and it is preferred again (a cold read goes to it only);
#  - all sources down: present blocks still read; a missing one waits,
#    and completes once one source is back, within the hold;
#  - remounted with a new source only (a recorded disk moves): served;
#  - that only source killed: a read waits; a source added at run time
#    (corfs sources --add) serves it; the dead one removed, the last one
#    cannot be; a remount without --disk uses the recorded source;
#  - a second source of other content and the same size: found
#    different ("mismatch", before it is needed), never read, and one
#    added at run time refused; with the
#    good source gone, a cold read fails with EIO after the hold.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/../servers/nginx.sh"
requires fusermount3 --version
requires jq --version
requires curl --version
requires nbdkit file --dump-plugin
requires python3 --version
requires bc --version

MiB=1048576
size=$((64 * MiB))
www=$T/www; mkdir -p "$www"
img=$www/disk.img
head -c "$size" /dev/urandom > "$img"
cp "$img" "$T/copy.img"
head -c "$size" /dev/urandom > "$T/other.img"

port=$(free_port)
# Rate-limited, so that the kill lands in the middle of the read.
servers="server { listen 127.0.0.1:$port; root $www; limit_rate 2m; }"
start_nginx "$T/nginx" "$servers"
http=http://127.0.0.1:$port/disk.img
wait_http "$http" 206 -r 0-0
start_nbdkit "$T/nbd.pid" -r -U "$T/nbd.sock" file "$T/copy.img"
nbd=$(nbd_uri "$T/nbd.sock")

piece () { dd if="$1" iflag=skip_bytes,count_bytes skip="$2" count="$3" bs=1M status=none; }
# slow_piece FILE OFF LEN: piece, 1 MiB at a time with a pause between, so
# that a fault injected meanwhile lands in the middle of the read.
slow_piece () {
  local o
  for (( o = $2; o < $2 + $3; o += MiB )); do piece "$1" "$o" "$MiB" || return 1; sleep 0.05; done
}
src () { "$CORFS" status --state "$1" d --json | jq -r "(if type == \"array\" then .[0] else . end).parent.sources[$2]$3"; }
# The first source dies at once: nginx's master and worker are killed
# (SIGKILL: no graceful end of the requests in flight), the master first
# (it would start a new worker for one that died).
stop_nginx () {
  local master workers; master=$(cat "$T/nginx/nginx.pid")
  workers=$(pgrep -P "$master" || true)
  kill -9 "$master" 2>/dev/null || true
  [ -z "$workers" ] || kill -9 $workers 2>/dev/null || true
  wait_gone "$master"
  rm -f "$T/nginx/nginx.pid"
  ! curl -s -o /dev/null -r 0-0 "$http" || fail "nginx still answers after the kill"
}
restart_nginx () { start_nginx "$T/nginx" "$servers"; wait_http "$http" 206 -r 0-0; }
# wait_event TYPE: an event of that type about disk.img arrives within 5 s.
wait_event () {
  local i
  for i in $(seq 50); do
    grep -q "\"event\": *\"$1\".*disk.img" "$T/events" && return 0
    sleep 0.1
  done
  fail "no $1 event: $(cat "$T/events")"
}
# wait_state STATE I WANT SECS: source I reaches state WANT within SECS.
wait_state () {
  local i
  for i in $(seq $(($4 * 10))); do
    [ "$(src "$1" "$2" .state)" = "$3" ] && return 0
    sleep 0.1
  done
  fail "source $2 is $(src "$1" "$2" .state) ($(src "$1" "$2" .last_error)), expected $3 after $4 s"
}

echo "=== the first source killed during a cold read (at ${SECONDS}s)"
corfs_mount "$T/s1" "$T/m1" --hold 20 --readahead 0 --disk d="$http" --disk d="$nbd"
"$CORFS" events --state "$T/s1" > "$T/events" 2>&1 &
cleanup_fn kill $!
[ "$(stat -c %s "$T/m1/d")" -eq "$size" ] || fail "disk size $(stat -c %s "$T/m1/d")"
wait_state "$T/s1" 1 ok 10
[ "$(src "$T/s1" 0 .state)" = ok ] || fail "source 0 is $(src "$T/s1" 0 .state)"
start=$(date +%s.%N)
slow_piece "$T/m1/d" 0 $((48 * MiB)) > "$T/out" &
reader=$!
for i in $(seq 100); do
  [ "$(src "$T/s1" 0 .bytes)" -gt $((4 * MiB)) ] && break
  sleep 0.05
done
stop_nginx
wait "$reader" || fail "the read failed when the first source died"
secs=$(echo "$(date +%s.%N) - $start" | bc)
cmp "$T/out" <(piece "$img" 0 $((48 * MiB))) || fail "the read after failover differs"
echo "read 48 MiB in $secs s across the failover"
[ "$(src "$T/s1" 0 .bytes)" -lt $((40 * MiB)) ] || fail "the kill came too late: source 0 served $(src "$T/s1" 0 .bytes) bytes"
[ "$(echo "$secs < 12" | bc)" = 1 ] || fail "the failover took $secs s (the hold is 20 s)"
[ "$(src "$T/s1" 0 .state)" = failed ] || fail "source 0 is $(src "$T/s1" 0 .state), expected failed"
[ "$(src "$T/s1" 1 .bytes)" -gt 0 ] || fail "source 1 served nothing"

wait_event source-failed
echo "=== the first back, and preferred again (at ${SECONDS}s)"
restart_nginx
wait_state "$T/s1" 0 ok 40
wait_event source-back
b0=$(src "$T/s1" 0 .bytes); b1=$(src "$T/s1" 1 .bytes)
cmp <(piece "$T/m1/d" $((48 * MiB)) $((8 * MiB))) <(piece "$img" $((48 * MiB)) $((8 * MiB))) \
  || fail "the read after the first came back differs"
[ "$(src "$T/s1" 0 .bytes)" -ge $((b0 + 8 * MiB)) ] || fail "source 0 did not serve the read"
[ "$(src "$T/s1" 1 .bytes)" -eq "$b1" ] || fail "source 1 served although source 0 is back"

echo "=== all sources down, then one back (at ${SECONDS}s)"
stop_nginx
nbd_pid=$(cat "$T/nbd.pid"); kill -9 "$nbd_pid"; wait_gone "$nbd_pid"
cmp <(piece "$T/m1/d" 0 $MiB) <(piece "$img" 0 $MiB) || fail "present blocks do not read"
start=$(date +%s)
piece "$T/m1/d" $((60 * MiB)) $MiB > "$T/out" 2> "$T/err" &
reader=$!
sleep 3
if ! alive "$reader"; then
  wait "$reader"; rc=$?
  fail "a read of a missing block did not wait for a source (exit $rc; $(cat "$T/err"); present $("$CORFS" status --state "$T/s1" d --json | jq -c '.[0].present_bytes'))"
fi
rm -f "$T/nbd.sock"
echo "a source back after $(( $(date +%s) - start )) s"
start_nbdkit "$T/nbd.pid" -r -U "$T/nbd.sock" file "$T/copy.img"
wait "$reader" || fail "the read failed although a source came back within the hold"
cmp "$T/out" <(piece "$img" $((60 * MiB)) $MiB) || fail "the read after the restart differs"
echo "waited $(( $(date +%s) - start )) s (at ${SECONDS}s)"
corfs_unmount "$T/m1"

echo "=== remounted with a new source only (at ${SECONDS}s)"
start_nbdkit "$T/nbd2.pid" -r -U "$T/nbd2.sock" file "$T/copy.img"
nbd2=$(nbd_uri "$T/nbd2.sock")
corfs_mount "$T/s1" "$T/m1" --hold 20 --readahead 0 --disk d="$nbd2"
cmp <(piece "$T/m1/d" $((56 * MiB)) $((2 * MiB))) <(piece "$img" $((56 * MiB)) $((2 * MiB))) \
  || fail "the disk read through its new source differs"
[ "$(src "$T/s1" 0 .url)" = "$nbd2" ] || fail "source 0 is $(src "$T/s1" 0 .url)"

echo "=== its only source dies; one added at run time (at ${SECONDS}s)"
p=$(cat "$T/nbd2.pid"); kill -9 "$p"; wait_gone "$p"
start_nbdkit "$T/nbd3.pid" -r -U "$T/nbd3.sock" file "$T/copy.img"
nbd3=$(nbd_uri "$T/nbd3.sock")
piece "$T/m1/d" $((58 * MiB)) $MiB > "$T/out" &
reader=$!
sleep 1
"$CORFS" sources --state "$T/s1" d --add "$nbd3" || fail "sources --add failed"
wait "$reader" || fail "the read waiting for a source failed although one was added"
cmp "$T/out" <(piece "$img" $((58 * MiB)) $MiB) || fail "the read through the added source differs"
"$CORFS" sources --state "$T/s1" d --remove "$nbd2" || fail "sources --remove failed"
"$CORFS" sources --state "$T/s1" d --remove "$nbd3" 2> "$T/err" && fail "the last source was removed"
grep -q "last source" "$T/err" || fail "removing the last source: $(cat "$T/err")"
"$CORFS" sources --state "$T/s1" d
corfs_unmount "$T/m1"
corfs_mount "$T/s1" "$T/m1" --hold 20
[ "$(src "$T/s1" 0 .url)" = "$nbd3" ] || fail "remounted without --disk: source 0 is $(src "$T/s1" 0 .url)"
cmp "$T/m1/d" "$img" || fail "the disk read through its recorded source differs"
corfs_unmount "$T/m1"

echo "=== a source of other content: never read (at ${SECONDS}s)"
restart_nginx
start_nbdkit "$T/bad.pid" -r -U "$T/bad.sock" file "$T/other.img"
corfs_mount "$T/s2" "$T/m2" --hold 3 --readahead 0 --disk d="$http" \
  --disk d="$(nbd_uri "$T/bad.sock")"
wait_state "$T/s2" 1 mismatch 10
start_nbdkit "$T/bad2.pid" -r -U "$T/bad2.sock" file "$T/other.img"
"$CORFS" sources --state "$T/s2" d --add "$(nbd_uri "$T/bad2.sock")" 2> "$T/err" \
  && fail "a source of other content was added"
grep -q "different image" "$T/err" || fail "adding a differing source: $(cat "$T/err")"
[ "$("$CORFS" sources --state "$T/s2" d --json | jq '.sources | length')" = 2 ] \
  || fail "the differing source was listed"
src "$T/s2" 1 .last_error | grep -q "different image" \
  || fail "the mismatch is not explained: $(src "$T/s2" 1 .last_error)"
cmp <(piece "$T/m2/d" 0 $MiB) <(piece "$img" 0 $MiB) || fail "the good source's read differs"
stop_nginx
if piece "$T/m2/d" $((32 * MiB)) $MiB > "$T/out" 2> "$T/err"; then
  fail "a cold read succeeded with only a differing source left: $("$CORFS" status --state "$T/s2" d --json | jq -c .parent)"
fi
grep -q "Input/output error" "$T/err" || fail "expected EIO, got: $(cat "$T/err")"
[ "$(src "$T/s2" 1 .reads)" -eq 0 ] || fail "the differing source served $(src "$T/s2" 1 .reads) reads"
corfs_unmount "$T/m2"
echo PASS
