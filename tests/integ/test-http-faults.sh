#!/usr/bin/env bash
# HTTP parent behind a fault-injecting server (tests/servers/http-fault.py,
# 16 MiB random image), --hold 8, cold O_DIRECT reads of fresh ranges:
#  - 503 with Retry-After: 1 for 2 requests: the read still succeeds with
#    the right bytes, counters.remote_retries > 0, and the retry waited
#    for Retry-After (lower bound only);
#  - the connection dropped mid-body: the read succeeds with the right
#    bytes (retried);
#  - a stall (headers, then 30 s of silence): the read fails with EIO
#    within hold + 15 s or succeeds after a retry, never wrong data; the
#    parent recovers afterwards; with --hold 25 the stall is aborted (no
#    progress for 10 s) and the retry succeeds;
#  - 200 instead of 206, another ETag, another Content-Range total: EIO,
#    parent.state "changed", and every later cold read fails closed even
#    once the server answers correctly again (docs/control.md);
#  - after every successful read, parent.state is "connected" again (not
#    stuck at retrying/down);
#  - a server answering 503 (Retry-After: 1) or 500 to everything, with
#    50 ms of latency: a read fails with EIO after the hold, and both
#    parent.last_error and a refused mount's message name the HTTP status.
# Failures of the last three kinds are collected and reported at the end,
# so the other checks still run.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/../servers/nginx.sh"    # free_port
requires fusermount3 --version
requires jq --version
requires curl --version
requires python3 --version

KiB=1024 MiB=1048576
size=$((16 * MiB))
img=$T/disk.img
head -c "$size" /dev/urandom > "$img"

python3 "$(dirname "$0")/../servers/http-fault.py" --file "$img" \
  --port-file "$T/fault.port" 2> "$T/fault.log" &
srvpid=$!
cleanup_fn kill_pid "$srvpid"
for i in $(seq 100); do [ -s "$T/fault.port" ] && break; sleep 0.1; done
[ -s "$T/fault.port" ] || fail "fault server did not start: $(cat "$T/fault.log")"
base=http://127.0.0.1:$(cat "$T/fault.port")
url=$base/disk.img
wait_http "$url" 200

arm () { curl -sf "$base/_control?mode=$1&count=${2:-1}&delay=${3:-0}" > /dev/null || fail "cannot arm fault $1"; }
faults () { curl -sf "$base/_stats" | jq -r ".faults[\"$1\"] // 0"; }
piece () { dd if="$1" iflag=skip_bytes,count_bytes skip="$2" count="$3" bs=64K status=none; }
field () { "$CORFS" status --state "$1" d --json | jq -r "(if type == \"array\" then .[0] else . end)$2"; }

# late_fail MSG: a failure reported at the end, so that the later checks
# still run.
late=()
late_fail () { echo "FAIL (reported at the end): $*"; late+=("$*"); }
mnt_of () { echo "${1%/s-*}/m-${1##*/s-}"; }   # $T/s-X -> $T/m-X
# cold_read STATE OFF LEN: O_DIRECT read of the mounted disk into $T/got;
# sets rc (dd's exit code) and secs (wall time).  Any bytes it returns must
# be the image's.
cold_read () {
  local st=$1 off=$2 len=$3 t0 t1
  t0=$(date +%s.%N)
  rc=0
  dd if="$(mnt_of "$st")/d" of="$T/got" iflag=skip_bytes,count_bytes,direct \
     skip="$off" count="$len" bs=64K status=none 2> "$T/dd.err" || rc=$?
  t1=$(date +%s.%N)
  secs=$(echo "$t1 - $t0" | bc)
  local n; n=$(stat -c %s "$T/got")
  if [ "$n" -gt 0 ] && ! cmp -s "$T/got" <(piece "$img" "$off" "$n"); then
    fail "read at $off returned $n bytes of WRONG data"
  fi
  if [ "$rc" -eq 0 ] && [ "$n" -ne "$len" ]; then
    fail "read at $off returned $n bytes, expected $len"
  fi
}
expect_ok () {
  [ "$rc" -eq 0 ] || fail "$1: the read failed: $(cat "$T/dd.err") (parent: $(field "$2" .parent | tr -d '\n'))"
}
# expect_connected WHAT STATE: after a successful read the status shows
# the parent connected again (not stuck at retrying/down).
expect_connected () {
  local st; st=$(field "$2" .parent.state)
  [ "$st" = connected ] || late_fail "$1: parent.state $st after a successful read, expected connected"
}
expect_eio () {
  [ "$rc" -ne 0 ] || fail "$1: the read succeeded, expected EIO"
  grep -q "Input/output error" "$T/dd.err" || fail "$1: expected EIO, got: $(cat "$T/dd.err")"
}
expect_changed () {
  local st; st=$(field "$2" .parent.state)
  [ "$st" = changed ] || fail "$1: parent.state $st, expected changed (last_error: $(field "$2" .parent.last_error))"
  echo "$1: last_error: $(field "$2" .parent.last_error)"
}

# expect_fail_closed WHAT STATE: once changed, a cold read fails (EIO)
# and the state stays changed, whatever the server answers now.
expect_fail_closed () {
  if [ "$rc" -eq 0 ]; then
    late_fail "$1: a cold read succeeded after the parent was marked changed (docs/control.md: every read fails closed)"
  else
    grep -q "Input/output error" "$T/dd.err" || fail "$1: expected EIO, got: $(cat "$T/dd.err")"
  fi
  local st; st=$(field "$2" .parent.state)
  [ "$st" = changed ] || late_fail "$1: parent.state $st, expected to stay changed"
}

A=$T/s-a
corfs_mount "$A" "$T/m-a" --hold 8 --readahead 0 --disk d="$url"

echo "=== 503 + Retry-After: 1, twice"
arm 503 2
cold_read "$A" 0 $((64 * KiB))
expect_ok 503 "$A"
expect_connected 503 "$A"
[ "$(faults 503)" -eq 2 ] || fail "503: the server injected $(faults 503) faults, expected 2"
retries=$(field "$A" .counters.remote_retries)
[ "$retries" -gt 0 ] || fail "503: counters.remote_retries is $retries, expected > 0"
# Retry-After honoured: from the first 503 to the next request on the
# file at least ~1 s passed (a lower bound: no tight timing).
gap=$(curl -sf "$base/_stats" | jq '[.log[] | select(.[1] == "GET")] as $g
  | ($g | map(.[2]) | index("503")) as $i | $g[$i + 1][0] - $g[$i][0]')
echo "503: read took $secs s, retries $retries, first retry after $gap s"
[ "$(echo "$gap >= 0.9" | bc)" -eq 1 ] || fail "503: retried after $gap s, Retry-After: 1 not honoured"

echo "=== connection dropped mid-body"
arm drop 1
cold_read "$A" $((2 * MiB)) $((MiB))
expect_ok drop "$A"
expect_connected drop "$A"
[ "$(faults drop)" -eq 1 ] || fail "drop: the server injected $(faults drop) drops, expected 1"
echo "drop: read took $secs s"

echo "=== stall (hold 8)"
arm stall 1
cold_read "$A" $((4 * MiB)) $((64 * KiB))
[ "$(faults stall)" -eq 1 ] || fail "stall: the server injected $(faults stall) stalls, expected 1"
[ "$(echo "$secs < 8 + 15" | bc)" -eq 1 ] || fail "stall: the read took $secs s (hold 8)"
if [ "$rc" -ne 0 ]; then
  expect_eio stall "$A"
  echo "stall: EIO after $secs s, parent $(field "$A" .parent.state): $(field "$A" .parent.last_error)"
else
  echo "stall: succeeded after $secs s"
fi
# The parent recovers.
cold_read "$A" $((5 * MiB)) $((MiB))
expect_ok "after the stall" "$A"
expect_connected "after the stall" "$A"

echo "=== 200 instead of 206"
arm 200 -1
cold_read "$A" $((6 * MiB)) $((64 * KiB))
expect_eio 200 "$A"
expect_changed 200 "$A"
arm none
cold_read "$A" $((7 * MiB)) $((64 * KiB))
expect_fail_closed "200, then a correct server" "$A"
# Ranges read before stay readable (from the overlay).
cold_read "$A" 0 $((64 * KiB))
expect_ok "200, present range" "$A"
corfs_unmount "$T/m-a"

for mode in etag total; do
  echo "=== $mode"
  S=$T/s-$mode
  corfs_mount "$S" "$T/m-$mode" --hold 8 --readahead 0 --disk d="$url"
  cold_read "$S" $((MiB)) $((64 * KiB))
  expect_ok "$mode, before" "$S"
  arm "$mode" -1
  cold_read "$S" $((8 * MiB)) $((64 * KiB))
  expect_eio "$mode" "$S"
  expect_changed "$mode" "$S"
  [ "$(faults "$mode")" -ge 1 ] || fail "$mode: the server injected no fault"
  arm none
  cold_read "$S" $((9 * MiB)) $((64 * KiB))
  expect_fail_closed "$mode, then a correct server" "$S"
  corfs_unmount "$T/m-$mode"
done

echo "=== stall (hold 25): aborted after 10 s without progress, retried"
S=$T/s-h25
corfs_mount "$S" "$T/m-h25" --hold 25 --readahead 0 --disk d="$url"
n0=$(faults stall)
arm stall 1
cold_read "$S" $((10 * MiB)) $((64 * KiB))
[ "$(faults stall)" -eq $((n0 + 1)) ] || fail "stall 25: the server injected no stall"
expect_ok "stall, hold 25" "$S"
expect_connected "stall, hold 25" "$S"
[ "$(echo "$secs < 25 + 15" | bc)" -eq 1 ] || fail "stall 25: the read took $secs s"
echo "stall 25: succeeded after $secs s"
corfs_unmount "$T/m-h25"

# busy CODE: a server answering CODE to everything, behind 50 ms of
# latency (a real network has latency): after the hold ran out, the error a
# user sees must name HTTP CODE, not describe a last attempt cut short by
# the deadline ("Operation timed out after 0 milliseconds").
busy () {
  local code=$1 S=$T/s-busy$1 err
  echo "=== persistent $code behind 50 ms of latency: the error names the cause"
  arm none
  corfs_mount "$S" "$T/m-busy$code" --hold 4 --readahead 0 --disk d="$url"
  arm "$code" -1 0.05
  cold_read "$S" $((11 * MiB)) $((64 * KiB))
  expect_eio "busy $code read" "$S"
  err=$(field "$S" .parent.last_error)
  echo "busy $code read: EIO after $secs s, parent $(field "$S" .parent.state): $err"
  case $err in *"HTTP $code"*) ;; *) late_fail "busy $code read: parent.last_error does not name HTTP $code: $err";; esac
  corfs_unmount "$T/m-busy$code"
  mkdir -p "$S-mount" "$T/m-busy$code-mount"
  if "$CORFS" mount --state "$S-mount" --stream=off --hold 4 --disk d="$url" "$T/m-busy$code-mount" > "$T/busy.out" 2>&1; then
    cleanup_fn _force_unmount "$S-mount" "$T/m-busy$code-mount"
    fail "busy $code mount: the mount succeeded against a server answering $code"
  fi
  echo "busy $code mount: $(cat "$T/busy.out")"
  grep -q "HTTP $code" "$T/busy.out" || late_fail "busy $code mount: the message does not name HTTP $code: $(cat "$T/busy.out")"
}
busy 503
busy 500
arm none
[ ${#late[@]} -eq 0 ] || fail "$(printf '%s\n' "${late[@]}")"
echo "OK"
