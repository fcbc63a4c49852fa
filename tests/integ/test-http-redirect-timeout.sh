#!/usr/bin/env bash
# A request's own timeout (30 s) bounds all its redirect hops together,
# not each hop: a chain of four redirects that each answer after 8.5 s
# (tests/servers/http-odd.py /hop/3; each under the 10 s without progress
# that abort a stalled transfer) is never followed to its end (34 s), so
# with --hold 40 the mount fails with a timeout; each hop alone was under
# the 30 s, and the mount succeeded after 34 s.  About 40 s.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/../servers/nginx.sh"    # wait_http
requires fusermount3 --version
requires curl --version
requires python3 --version

img=$T/disk.img
head -c $((1 << 20)) /dev/urandom > "$img"
python3 "$(dirname "$0")/../servers/http-odd.py" --file "$img" --port-file "$T/port" \
  --hop-delay 8.5 2> "$T/server.log" &
cleanup_fn kill_pid $!
for i in $(seq 100); do [ -s "$T/port" ] && break; sleep 0.1; done
[ -s "$T/port" ] || fail "server did not start: $(cat "$T/server.log")"
base=http://127.0.0.1:$(cat "$T/port")
wait_http "$base/disk.img" 200

mkdir -p $T/s $T/m
cleanup_fn _force_unmount $T/s $T/m
t0=$(date +%s); rc=0
timeout 120 "$CORFS" mount --state $T/s --stream=off --hold 40 --disk "d=$base/hop/3" $T/m \
  > $T/mount.out 2>&1 || rc=$?
secs=$(( $(date +%s) - t0 ))
echo "mount through 4 hops of 8.5 s: exit $rc after ${secs}s: $(cat $T/mount.out)"
[ $rc -ne 0 ] || fail "the mount followed 34 s of redirects in one request (the request timeout is 30 s)"
[ $rc -ne 124 ] || fail "the mount hung"
[ $secs -le 60 ] || fail "the mount took ${secs}s with --hold 40"
grep -qi "timed out\|timeout" $T/mount.out || fail "the failure does not say it timed out"
echo PASS
