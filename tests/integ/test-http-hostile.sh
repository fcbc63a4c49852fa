#!/usr/bin/env bash
# HTTP parents that send odd or hostile replies (tests/servers/http-odd.py,
# 4 MiB random image, strict If-Match):
#  - an ETag of 300 bytes (longer than corfs keeps): it is neither cut,
#    pinned nor sent in If-Match; the identity falls back to
#    Last-Modified, so every read succeeds (a cut ETag drew 412 from the
#    strict server, and the parent looked changed for ever);
#  - a redirect whose body never ends (1 GiB, sent slowly): reads through
#    it succeed quickly, and the server sent little of that body (corfs
#    stops at its first byte);
#  - 503 with Retry-After: 18446744073 (seconds times 1e9 passes 2^64):
#    a cold read with --hold 5 fails within hold + margin;
#  - a token file holding CR LF and another header: the mount is refused
#    naming the disk and the file; a token file turned so under a running
#    disk fails the reads (status names the file) until it is mended; a
#    configured header with a CR is refused too.  The server never sees
#    the injected header.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/../servers/nginx.sh"    # free_port, wait_http
requires fusermount3 --version
requires jq --version
requires curl --version
requires python3 --version

MiB=1048576
img=$T/disk.img
head -c $((4 * MiB)) /dev/urandom > "$img"

# start_odd NAME ARGS...: start http-odd.py; sets base_NAME.
start_odd () {
  local name=$1; shift
  python3 "$(dirname "$0")/../servers/http-odd.py" --file "$img" \
    --port-file "$T/$name.port" "$@" 2> "$T/$name.log" &
  cleanup_fn kill_pid $!
  for i in $(seq 100); do [ -s "$T/$name.port" ] && break; sleep 0.1; done
  [ -s "$T/$name.port" ] || fail "server $name did not start: $(cat "$T/$name.log")"
  eval "base_$name=http://127.0.0.1:$(cat "$T/$name.port")"
}
stat_of () { curl -sf "$1/_stats" | jq -r ".$2"; }
field () { "$CORFS" status --state "$1" d --json | jq -r "(if type == \"array\" then .[0] else . end)$2"; }
piece () { dd if="$1" iflag=skip_bytes,count_bytes skip="$2" count="$3" bs=64K status=none; }
# cold_read MNT OFF LEN: O_DIRECT read; sets rc and secs; data must match.
cold_read () {
  local t0 t1
  t0=$(date +%s%N); rc=0
  dd if="$1/d" of="$T/got" iflag=skip_bytes,count_bytes,direct skip="$2" count="$3" \
     bs=64K status=none 2> "$T/dd.err" || rc=$?
  t1=$(date +%s%N); secs=$(( (t1 - t0) / 1000000000 ))
  if [ -s "$T/got" ] && ! cmp -s "$T/got" <(piece "$img" "$2" "$(stat -c %s "$T/got")"); then
    fail "read at $2 returned WRONG data"
  fi
}

# Each part on its own (SECTIONS="etag redir busy inj" picks some).
etag_part () {
echo "=== a 300-byte ETag, strict If-Match"
long_etag="\"$(head -c 149 /dev/urandom | od -An -tx1 | tr -d ' \n')\""
[ ${#long_etag} -eq 300 ] || fail "test bug: ETag of ${#long_etag} bytes"
start_odd etag --etag "$long_etag"
wait_http "$base_etag/disk.img" 200
corfs_mount $T/s-etag $T/m-etag --hold 20 --disk "d=$base_etag/disk.img"
cold_read $T/m-etag $((2 * MiB)) $MiB
[ $rc -eq 0 ] || fail "a read under a 300-byte ETag failed: $(cat "$T/dd.err"); parent: $(field $T/s-etag .parent | tr -d '\n')"
cmp $T/m-etag/d "$img" || fail "the disk differs from the image"
[ "$(field $T/s-etag .parent.state)" = connected ] || fail "parent state $(field $T/s-etag .parent.state)"
[ "$(stat_of "$base_etag" precondition_failed)" = 0 ] ||
  fail "the server answered 412 to $(stat_of "$base_etag" precondition_failed) If-Match"
corfs_unmount $T/m-etag || fail "unmount failed"
}

redir_part () {
echo "=== a redirect with an endless body"
start_odd redir
wait_http "$base_redir/disk.img" 200
corfs_mount $T/s-redir $T/m-redir --hold 20 --disk "d=$base_redir/redirect.img"
cold_read $T/m-redir $MiB $MiB
echo "read through the redirect: rc $rc in ${secs}s; body bytes sent $(stat_of "$base_redir" redirect_body_bytes)"
[ $rc -eq 0 ] || fail "a read through the redirect failed: $(cat "$T/dd.err")"
[ $secs -lt 10 ] || fail "a read through the redirect took ${secs}s (the body was read?)"
sent=$(stat_of "$base_redir" redirect_body_bytes)
[ "$sent" -le $((8 * MiB)) ] || fail "the server sent $sent bytes of redirect body"
corfs_unmount $T/m-redir || fail "unmount failed"
}

busy_part () {
echo "=== Retry-After: 18446744073"
start_odd busy
wait_http "$base_busy/disk.img" 200
corfs_mount $T/s-busy $T/m-busy --hold 5 --disk "d=$base_busy/disk.img"
curl -sf "$base_busy/_control?retry_after=18446744073" > /dev/null || fail "cannot arm Retry-After"
cold_read $T/m-busy $MiB 65536
echo "read under Retry-After: 18446744073: rc $rc in ${secs}s"
[ $rc -ne 0 ] || fail "the read succeeded against a server answering 503"
[ $secs -le 20 ] || fail "the read took ${secs}s with --hold 5"
curl -sf "$base_busy/_control?retry_after=" > /dev/null
corfs_unmount $T/m-busy || fail "unmount failed"
}

inj_part () {
echo "=== header injection through the token file and configured headers"
start_odd inj
wait_http "$base_inj/disk.img" 200
mkdir -p $T/secret; chmod 700 $T/secret
printf 'good-token\r\nX-Injected: 1\n' > $T/secret/token
printf '%s\n' "[disk d]" "url = $base_inj/disk.img" "token-file = $T/secret/token" > $T/tok.conf
mkdir -p $T/s-tok $T/m-tok
cleanup_fn _force_unmount $T/s-tok $T/m-tok
rc=0
timeout 60 "$CORFS" mount --state $T/s-tok --stream=off --hold 5 --config $T/tok.conf $T/m-tok \
  > $T/tok.out 2>&1 || rc=$?
echo "mount with a CRLF token: exit $rc: $(cat $T/tok.out)"
[ "$(stat_of "$base_inj" injected)" = 0 ] || fail "the server saw an injected header"
[ $rc -ne 0 ] || fail "the mount with a CRLF in the token file succeeded"
grep -q "disk d" $T/tok.out && grep -qF "$T/secret/token" $T/tok.out ||
  fail "the refusal does not name the disk and the token file"

printf 'good-token\0X-Injected: 1\n' > $T/secret/token
rc=0
timeout 60 "$CORFS" mount --state $T/s-tok --stream=off --hold 5 --config $T/tok.conf $T/m-tok \
  > $T/tok.out 2>&1 || rc=$?
echo "mount with a NUL in the token: exit $rc: $(cat $T/tok.out)"
[ $rc -ne 0 ] || fail "the mount with a NUL in the token file succeeded"
grep -qF "$T/secret/token" $T/tok.out || fail "the refusal does not name the token file"

printf '%s\n' "[disk d]" "url = $base_inj/disk.img" > $T/hdr.conf
printf 'header = X-Test: a\rX-Injected: 1\n' >> $T/hdr.conf
rc=0
timeout 60 "$CORFS" mount --state $T/s-tok --stream=off --hold 5 --config $T/hdr.conf $T/m-tok \
  > $T/hdr.out 2>&1 || rc=$?
echo "mount with a CR in a configured header: exit $rc: $(cat $T/hdr.out)"
[ "$(stat_of "$base_inj" injected)" = 0 ] || fail "the server saw an injected header"
[ $rc -ne 0 ] || fail "the mount with a CR in a configured header succeeded"
grep -q "X-Test" $T/hdr.out || fail "the refusal does not name the header"

echo "--- the token file turns bad under a running disk"
echo good-token > $T/secret/token
corfs_mount $T/s-tok $T/m-tok --hold 5 --config $T/tok.conf
cold_read $T/m-tok 0 65536
[ $rc -eq 0 ] || fail "a read with a good token failed: $(cat "$T/dd.err")"
sleep 0.05   # a new mtime
printf 'good-token\r\nX-Injected: 1\n' > $T/secret/token
cold_read $T/m-tok $MiB 65536
echo "read with a CRLF token: rc $rc in ${secs}s; last_error: $(field $T/s-tok .parent.last_error)"
[ "$(stat_of "$base_inj" injected)" = 0 ] || fail "the server saw an injected header"
[ $rc -ne 0 ] || fail "a read with a CRLF token succeeded"
field $T/s-tok .parent.last_error | grep -qF "$T/secret/token" || fail "status does not name the token file"
echo good-token > $T/secret/token
cold_read $T/m-tok $((2 * MiB)) 65536
[ $rc -eq 0 ] || fail "a read after the token was mended failed: $(cat "$T/dd.err")"
corfs_unmount $T/m-tok || fail "unmount failed"
}

for part in ${SECTIONS:-etag redir busy inj}; do
  ${part}_part
done
echo PASS
