#!/usr/bin/env bash
# Redirects never carry credentials to another host, nor anything from
# https to plain http.  nginx A (127.0.0.1) redirects every request to
# nginx B (127.0.0.2, another host), which serves the image and logs the
# Authorization, X-Amz-Security-Token and X-Test headers of each request:
#  - no credentials: A -> B is followed, the disk reads equal to the image;
#  - a configured header (X-Test) and a bearer token-file: the mount is
#    refused with a message about the redirect, and B never saw either;
#    likewise a user:password in the URL;
#  - S3 with a session token (s3-endpoint = A): refused, and B never saw
#    the token nor the signature;
#  - a same-host redirect (A /moved.img -> A /disk.img, which requires the
#    X-Test header) is still followed with the header: the disk reads equal;
#  - https (A', test CA) -> http B, no credentials: refused (a downgrade),
#    and B never got a request from that mount;
#  - https A' -> https B' (127.0.0.2): followed without credentials, but
#    refused with a client certificate (it authenticates us too), and B'
#    never got a request from that mount.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/../servers/nginx.sh"
requires fusermount3 --version
requires curl --version
requires openssl version

MiB=1048576 size=$((4 * 1048576))
www=$T/www; mkdir -p $www/bkt
head -c $size /dev/urandom > $www/disk.img
cp $www/disk.img $www/bkt/disk.img
secret_hdr="hdr-$(openssl rand -hex 12)"
secret_tok="tok-$(openssl rand -hex 12)"
secret_sts="sts-$(openssl rand -hex 12)"

pki=$T/pki; mkdir -p $pki
ossl () { openssl "$@" 2>> $pki/openssl.log || fail "openssl $1 failed: $(tail -n 5 $pki/openssl.log)"; }
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
ossl req -x509 "${ec[@]}" -keyout $pki/ca.key -out $pki/ca.pem -days 2 -subj "/CN=corfs test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
ossl req "${ec[@]}" -keyout $pki/srv.key -out $pki/srv.csr -subj "/CN=127.0.0.1"
printf 'subjectAltName=IP:127.0.0.1,IP:127.0.0.2\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' > $pki/srv.ext
ossl x509 -req -in $pki/srv.csr -CA $pki/ca.pem -CAkey $pki/ca.key -CAcreateserial \
  -out $pki/srv.pem -days 2 -extfile $pki/srv.ext
ossl req "${ec[@]}" -keyout $pki/cli.key -out $pki/cli.csr -subj "/CN=corfs client"
printf 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n' > $pki/cli.ext
ossl x509 -req -in $pki/cli.csr -CA $pki/ca.pem -CAkey $pki/ca.key -CAcreateserial \
  -out $pki/cli.pem -days 2 -extfile $pki/cli.ext

pa=$(free_port); ps=$(free_port); pb=$(free_port); pbs=$(free_port)
while [ "$ps" = "$pa" ]; do ps=$(free_port); done
b=http://127.0.0.2:$pb
start_nginx $T/nginx "
  log_format hdrs '\$request_method \$uri auth=[\$http_authorization] sts=[\$http_x_amz_security_token] xtest=[\$http_x_test]';
  server { listen 127.0.0.2:$pb; root $www; access_log $T/b.log hdrs; }
  server { listen 127.0.0.1:$pa; root $www;
    location = /moved.img { return 302 http://127.0.0.1:$pa/disk.img; }
    location = /disk.img { if (\$http_x_test != \"$secret_hdr\") { return 403; } }
    location / { return 302 $b\$request_uri; } }
  server { listen 127.0.0.2:$pbs ssl; root $www; access_log $T/bs.log hdrs;
    ssl_certificate $pki/srv.pem; ssl_certificate_key $pki/srv.key; }
  server { listen 127.0.0.1:$ps ssl; root $www;
    ssl_certificate $pki/srv.pem; ssl_certificate_key $pki/srv.key;
    location /c/ { return 302 https://127.0.0.2:$pbs/disk.img; }
    location / { return 302 $b\$request_uri; } }"
a=http://127.0.0.1:$pa
wait_http $b/disk.img 200
wait_http $a/x/disk.img 302
wait_http https://127.0.0.1:$ps/disk.img 302 --cacert $pki/ca.pem
wait_http https://127.0.0.2:$pbs/disk.img 200 --cacert $pki/ca.pem
mkdir -p $www/x; cp $www/disk.img $www/x/disk.img

# mount_ok NAME CONF-LINES...: mount, the disk reads equal, unmount.
mount_ok () {
  local name=$1; shift
  printf '%s\n' "[disk d]" "$@" > $T/$name.conf
  corfs_mount $T/s-$name $T/m-$name --hold 20 --config $T/$name.conf
  cmp $T/m-$name/d $www/disk.img || fail "$name: the disk differs from the image"
  corfs_unmount $T/m-$name || fail "$name: unmount failed"
  echo "$name: followed, disk equal"
}
# refused NAME CONF-LINES...: the mount must fail, naming the redirect.
refused () {
  local name=$1 rc=0; shift
  printf '%s\n' "[disk d]" "$@" > $T/$name.conf
  mkdir -p $T/s-$name $T/m-$name
  cleanup_fn _force_unmount $T/s-$name $T/m-$name
  timeout 60 "$CORFS" mount --state $T/s-$name --stream=off --hold 5 --config $T/$name.conf \
    $T/m-$name > $T/$name.out 2>&1 || rc=$?
  echo "$name: exit $rc: $(cat $T/$name.out)"
  [ $rc -ne 0 ] || fail "$name: the mount through the redirect succeeded"
  [ $rc -ne 124 ] || fail "$name: the mount hung"
  grep -qi redirect $T/$name.out || fail "$name: the message does not name the redirect"
}
b_saw () { grep -F -- "$1" $T/b.log; }

echo "=== no credentials: followed to another host"
mount_ok plain "url = $a/x/disk.img"
grep -q '^HEAD /x/disk.img\|^GET /x/disk.img' $T/b.log || fail "B served nothing: the redirect was not followed"

echo "=== configured header and bearer token: refused"
mkdir -p $T/secret; chmod 700 $T/secret
echo "$secret_tok" > $T/secret/token
refused hdr "url = $a/x/disk.img" "header = X-Test: $secret_hdr" "token-file = $T/secret/token"
b_saw "$secret_hdr" && fail "the configured header reached the other host"
b_saw "$secret_tok" && fail "the bearer token reached the other host"

echo "=== password in the URL: refused"
refused userinfo "url = http://corfsuser:pw-$secret_hdr@127.0.0.1:$pa/x/disk.img"
b_saw "auth=[Basic" && fail "basic credentials reached the other host"

echo "=== S3 session token: refused"
printf 'AKIDCORFSREDIR:s3-secret:%s\n' "$secret_sts" > $T/secret/s3cred
refused s3 "url = s3://bkt/disk.img" "s3-endpoint = $a" "s3-region = us-east-1" \
  "s3-path-style = true" "credentials-file = $T/secret/s3cred"
b_saw "$secret_sts" && fail "the S3 session token reached the other host"
b_saw "AWS4-HMAC-SHA256" && fail "an S3 signature reached the other host"

echo "=== same host: followed with the header"
mount_ok same "url = $a/moved.img" "header = X-Test: $secret_hdr"

echo "=== https -> http: refused"
n0=$(wc -l < $T/b.log)
refused downgrade "url = https://127.0.0.1:$ps/x/disk.img" "ca-file = $pki/ca.pem"
n1=$(wc -l < $T/b.log)
[ "$n1" -eq "$n0" ] || fail "the plain-http host got $((n1 - n0)) request(s) redirected from https"

echo "=== https -> https on another host: followed, but not with a client certificate"
mount_ok tls "url = https://127.0.0.1:$ps/c/disk.img" "ca-file = $pki/ca.pem"
n0=$(wc -l < $T/bs.log)
[ "$n0" -gt 0 ] || fail "B' served nothing: the https redirect was not followed"
refused cert "url = https://127.0.0.1:$ps/c/disk.img" "ca-file = $pki/ca.pem" \
  "client-cert = $pki/cli.pem" "client-key = $pki/cli.key"
n1=$(wc -l < $T/bs.log)
[ "$n1" -eq "$n0" ] || fail "the other host got $((n1 - n0)) request(s) from a disk with a client certificate"
echo PASS
