#!/usr/bin/env bash
# Long credentials reach the server whole (they were cut at 512 bytes):
#  - S3 with a 2 KiB session token (KEY:SECRET:TOKEN, as STS and SSO hand
#    out) through the SigV4-verifying front: the mount succeeds, a cold read
#    equals the object, and every request the front accepted carried the
#    token whole (token_len=2048; the front also denies any other token)
#    and signed (x-amz-security-token in SignedHeaders, signature checked);
#    no request was denied;
#  - HTTP with a 3 KiB bearer token (token-file; a large JWT; nginx takes
#    no longer configuration parameter): nginx
#    answers 401 unless Authorization is exactly "Bearer TOKEN"; a cold read
#    equals the image.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/../servers/nginx.sh"
. "$(dirname "$0")/../servers/s3.sh"
requires fusermount3 --version
requires curl --version
requires openssl version
s3_requires

MiB=1048576 size=$((4 * 1048576))
head -c $size /dev/urandom > $T/obj.img
# Token characters as STS uses them (base64: letters, digits, + / =).
long_token () { openssl rand -base64 $(( $1 / 4 * 3 )) | tr -d '\n'; }   # $1: a multiple of 4

echo "=== S3, 2 KiB session token"
tok=$(long_token 2048)
[ ${#tok} -eq 2048 ] || fail "test bug: token of ${#tok} bytes"
K=AKIDCORFSLONGTOKEN:long-token-secret:$tok
start_s3 "$K"
s3_mb "$K" bkt || fail "create bucket through the front failed"
s3_put "$K" bkt disk.img $T/obj.img > /dev/null || fail "upload through the front failed"
printf '%s\n' "$K" > $T/cred; chmod 600 $T/cred
printf '[disk d]\nurl = s3://bkt/disk.img\ns3-endpoint = %s\ns3-region = us-east-1\ns3-path-style = true\ncredentials-file = %s\n' \
  "$S3_ENDPOINT" $T/cred > $T/s3.conf
n0=$(grep -c '^OK ' "$S3_FRONT_LOG" || true)
mkdir -p $T/st-s3 $T/m-s3
cleanup_fn _force_unmount $T/st-s3 $T/m-s3
rc=0
"$CORFS" mount --state $T/st-s3 --stream=off --hold 20 --config $T/s3.conf $T/m-s3 \
  > $T/s3-mount.out 2>&1 || rc=$?
if [ $rc -ne 0 ]; then
  cat $T/s3-mount.out
  grep '^DENY' "$S3_FRONT_LOG" | head -3
  fail "S3 mount with a 2 KiB session token failed (exit $rc)"
fi
cmp $T/m-s3/d $T/obj.img || fail "S3: the cold read differs from the object"
grep -q '^DENY' "$S3_FRONT_LOG" && fail "the front denied requests: $(grep -m1 '^DENY' "$S3_FRONT_LOG")"
tail -n +$((n0 + 1)) "$S3_FRONT_LOG" | grep '^OK ' > $T/ok.log || true
[ -s $T/ok.log ] || fail "no request of corfs reached the front"
grep -v ' token_len=2048 ' $T/ok.log && fail "a request carried the token cut or not at all"
grep -q '^OK GET .*signed=[^ ]*x-amz-security-token' $T/ok.log \
  || fail "the session token was not among the signed headers"
echo "S3: $(wc -l < $T/ok.log) verified requests, each with the whole 2 KiB token"
corfs_unmount $T/m-s3 || fail "S3: unmount failed"

echo "=== HTTP, 3 KiB bearer token"
btok=$(long_token 3072 | tr '+/' '-_' | tr -d '=')   # URL-safe, like a JWT
www=$T/www; mkdir -p $www; cp $T/obj.img $www/disk.img
port=$(free_port)
start_nginx $T/nginx "
  large_client_header_buffers 4 16k;
  server { listen 127.0.0.1:$port; root $www;
    location / { if (\$http_authorization != \"Bearer $btok\") { return 401; } } }"
url=http://127.0.0.1:$port/disk.img
wait_http $url 401
wait_http $url 200 -H "Authorization: Bearer $btok"
mkdir -p $T/secret; chmod 700 $T/secret
echo "$btok" > $T/secret/token
printf '[disk d]\nurl = %s\ntoken-file = %s\n' "$url" $T/secret/token > $T/tok.conf
mkdir -p $T/st-tok $T/m-tok
cleanup_fn _force_unmount $T/st-tok $T/m-tok
rc=0
"$CORFS" mount --state $T/st-tok --stream=off --hold 20 --config $T/tok.conf $T/m-tok \
  > $T/tok-mount.out 2>&1 || rc=$?
[ $rc -eq 0 ] || fail "HTTP mount with a ${#btok}-byte bearer token failed (exit $rc): $(cat $T/tok-mount.out)"
cmp $T/m-tok/d $T/obj.img || fail "bearer: the cold read differs from the image"
echo "bearer: ${#btok}-byte token accepted, cold read equal"
corfs_unmount $T/m-tok || fail "bearer: unmount failed"
echo PASS
