#!/usr/bin/env bash
# Several sources, the first one stalled, and each source's own settings:
# an HTTP source (nginx, which answers only with the X-Source-Secret
# header of its own [disk] section) first, an S3 source (s3rver behind
# the SigV4-checking front, with the credentials of its [source d s3]
# section) second, of one 32 MiB image; source-timeout = 1:
#  - nginx stopped (SIGSTOP: connections hang, nothing is refused) during
#    a cold read: the read completes, correct, within a few seconds (each
#    request stalled on nginx is dropped after 1 s without progress and
#    goes to S3), not the 20 s hold; status: source 0 failed, source 1
#    served;
#  - nginx continued: the prober finds it matching again and a cold read
#    goes to it, not to S3;
#  - policy = spread: the streamer's reads go to both sources;
#  - the settings stay with their source: nginx never saw an S3
#    signature, the front denied nothing.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/../servers/nginx.sh"
. "$(dirname "$0")/../servers/s3.sh"
requires fusermount3 --version
requires jq --version
requires curl --version
requires bc --version
s3_requires

MiB=1048576
size=$((32 * MiB))
www=$T/www; mkdir -p "$www"
img=$www/disk.img
head -c "$size" /dev/urandom > "$img"

port=$(free_port)
start_nginx "$T/nginx" "log_format auth '\$request \$http_authorization';
server { listen 127.0.0.1:$port; root $www; limit_rate 4m;
  access_log $T/nginx/auth.log auth;
  location / { if (\$http_x_source_secret != 'web-only') { return 403; } } }"
http=http://127.0.0.1:$port/disk.img
wait_http "$http" 206 -r 0-0 -H 'X-Source-Secret: web-only'

K=AKIDCORFSSOURCES:sources-secret
start_s3 "$K"
s3_mb "$K" bkt || fail "create bucket through the front failed"
s3_put "$K" bkt disk.img "$img" > /dev/null || fail "upload through the front failed"
printf '%s\n' "$K" > "$T/cred"; chmod 600 "$T/cred"
cat > "$T/c.conf" <<CONF
[corfs]
source-timeout = 1
[disk d]
url = $http
header = X-Source-Secret: web-only
[source d s3]
url = s3://bkt/disk.img
s3-endpoint = $S3_ENDPOINT
s3-region = us-east-1
s3-path-style = true
credentials-file = $T/cred
CONF

piece () { dd if="$1" iflag=skip_bytes,count_bytes skip="$2" count="$3" bs=1M status=none; }
# slow_piece FILE OFF LEN: piece, 1 MiB at a time with a pause between, so
# that a fault injected meanwhile lands in the middle of the read.
slow_piece () {
  local o
  for (( o = $2; o < $2 + $3; o += MiB )); do piece "$1" "$o" "$MiB" || return 1; sleep 0.05; done
}
src () { "$CORFS" status --state "$T/s" d --json | jq -r "(if type == \"array\" then .[0] else . end).parent.sources[$1]$2"; }
wait_state () {
  local i
  for i in $(seq $(($3 * 10))); do
    [ "$(src "$1" .state)" = "$2" ] && return 0
    sleep 0.1
  done
  fail "source $1 is $(src "$1" .state) ($(src "$1" .last_error)), expected $2 after $3 s"
}
nginx_pids () { local m; m=$(cat "$T/nginx/nginx.pid"); echo "$m" $(pgrep -P "$m"); }

corfs_mount "$T/s" "$T/m" --hold 20 --readahead 0 --config "$T/c.conf"
wait_state 1 ok 15
[ "$(src 0 .state)" = ok ] || fail "source 0 is $(src 0 .state)"
[ "$(src 1 .backend)" = http ] || fail "source 1's backend is $(src 1 .backend)"

echo "=== nginx stalled during a cold read"
piece "$T/m/d" 0 $((4 * MiB)) > /dev/null
start=$(date +%s.%N)
slow_piece "$T/m/d" $((4 * MiB)) $((20 * MiB)) > "$T/out" &
reader=$!
for i in $(seq 100); do
  [ "$(src 0 .bytes)" -gt $((6 * MiB)) ] && break
  sleep 0.05
done
kill -STOP $(nginx_pids)
cleanup_fn kill -CONT $(nginx_pids)
wait "$reader" || fail "the read failed when the first source stalled"
secs=$(echo "$(date +%s.%N) - $start" | bc)
cmp "$T/out" <(piece "$img" $((4 * MiB)) $((20 * MiB))) || fail "the read across the stall differs"
echo "read 20 MiB in $secs s across the stall"
[ "$(src 0 .bytes)" -lt $((20 * MiB)) ] || fail "the stall came too late: source 0 served $(src 0 .bytes) bytes"
[ "$(echo "$secs < 10" | bc)" = 1 ] || fail "the failover took $secs s (source-timeout 1 s, hold 20 s)"
[ "$(src 0 .state)" = failed ] || fail "source 0 is $(src 0 .state), expected failed"
[ "$(src 1 .bytes)" -gt 0 ] || fail "source 1 served nothing"

echo "=== nginx continued: preferred again"
kill -CONT $(nginx_pids)
wait_state 0 ok 40
b1=$(src 1 .bytes)
cmp <(piece "$T/m/d" $((24 * MiB)) $((4 * MiB))) <(piece "$img" $((24 * MiB)) $((4 * MiB))) \
  || fail "the read after nginx came back differs"
[ "$(src 1 .bytes)" -eq "$b1" ] || fail "S3 served although nginx is back"
corfs_unmount "$T/m"

echo "=== policy = spread: the streamer reads from both"
sed -i 's/^\[disk d\]$/[disk d]\npolicy = spread/' "$T/c.conf"
src () { "$CORFS" status --state "$T/s2" d --json | jq -r "(if type == \"array\" then .[0] else . end).parent.sources[$1]$2"; }
corfs_mount "$T/s2" "$T/m2" --hold 20 --config "$T/c.conf"
wait_state 1 ok 15
timeout 120 "$CORFS" stream --state "$T/s2" d --wait > /dev/null || fail "the stream did not complete"
cmp "$T/m2/d" "$img" || fail "the disk streamed from two sources differs"
echo "nginx served $(src 0 .bytes) bytes, S3 $(src 1 .bytes)"
[ "$(src 0 .bytes)" -gt $((4 * MiB)) ] && [ "$(src 1 .bytes)" -gt $((4 * MiB)) ] \
  || fail "spread: nginx served $(src 0 .bytes) bytes, S3 $(src 1 .bytes)"
corfs_unmount "$T/m2"

echo "=== each source's settings stayed with it"
grep -q AWS4 "$T/nginx/auth.log" && fail "nginx received an S3 signature"
grep -q '^DENY' "$S3_FRONT_LOG" && fail "the front denied requests: $(grep -m1 '^DENY' "$S3_FRONT_LOG")"
grep -q '^OK GET' "$S3_FRONT_LOG" || fail "no S3 read reached the front"
echo PASS
