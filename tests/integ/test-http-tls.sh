#!/usr/bin/env bash
# HTTPS parents (nginx with a certificate for IP 127.0.0.1 from a test CA,
# 16 MiB random image):
#  - ca-file = the test CA: the disk reads exactly;
#  - no ca-file: the mount fails, saying the certificate was not verified;
#  - insecure = true (no ca-file): mounts and reads, and corfs.log carries
#    a loud warning that mentions insecure;
#  - client certificates: a server demanding one (ssl_verify_client) is
#    read with client-cert/client-key, and refused without them, with a
#    message that names the cause (nginx's HTTP 400);
#  - redirects: /old answers 302 to /disk.img and corfs reads the disk via
#    /old; a chain of 5 redirects is followed, a chain of 6 and a redirect
#    loop fail the mount (bounded, no hang) with a message that mentions
#    redirects.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/../servers/nginx.sh"
requires fusermount3 --version
requires jq --version
requires curl --version
requires openssl version

MiB=1048576
size=$((16 * MiB))
www=$T/www; mkdir -p "$www"
img=$www/disk.img
head -c "$size" /dev/urandom > "$img"

echo "=== certificates"
pki=$T/pki; mkdir -p "$pki"
ossl () { openssl "$@" 2>> "$pki/openssl.log" || fail "openssl $1 failed: $(tail -n 5 "$pki/openssl.log")"; }
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
ossl req -x509 "${ec[@]}" -keyout "$pki/ca.key" -out "$pki/ca.pem" -days 2 \
  -subj "/CN=corfs test CA" -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign"
ossl req "${ec[@]}" -keyout "$pki/srv.key" -out "$pki/srv.csr" -subj "/CN=127.0.0.1"
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' > "$pki/srv.ext"
ossl x509 -req -in "$pki/srv.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial \
  -out "$pki/srv.pem" -days 2 -extfile "$pki/srv.ext"
ossl req "${ec[@]}" -keyout "$pki/cli.key" -out "$pki/cli.csr" -subj "/CN=corfs client"
printf 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n' > "$pki/cli.ext"
ossl x509 -req -in "$pki/cli.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial \
  -out "$pki/cli.pem" -days 2 -extfile "$pki/cli.ext"

port=$(free_port); mport=$(free_port)
while [ "$mport" = "$port" ]; do mport=$(free_port); done
redirects="location = /old { return 302 /disk.img; }
    location = /loop { return 302 /loop; }
    location = /r1 { return 302 /disk.img; }"
for i in 2 3 4 5 6; do redirects+="
    location = /r$i { return 302 /r$((i - 1)); }"; done
start_nginx "$T/nginx" "
  server { listen 127.0.0.1:$port ssl http2; root $www;
    ssl_certificate $pki/srv.pem; ssl_certificate_key $pki/srv.key;
    $redirects
  }
  server { listen 127.0.0.1:$mport ssl; root $www;
    ssl_certificate $pki/srv.pem; ssl_certificate_key $pki/srv.key;
    ssl_client_certificate $pki/ca.pem; ssl_verify_client on;
  }"
base=https://127.0.0.1:$port
url=$base/disk.img
wait_http "$url" 200 --cacert "$pki/ca.pem"
wait_http "$base/old" 302 --cacert "$pki/ca.pem"

# must_not_mount NAME CONF-LINES...: a mount that must fail; its output in $T/NAME.out.
must_not_mount () {
  local name=$1; shift
  printf '%s\n' "[disk d]" "$@" > "$T/$name.conf"
  mkdir -p "$T/s-$name" "$T/m-$name"
  local t0; t0=$(date +%s)
  if timeout 60 "$CORFS" mount --state "$T/s-$name" --stream=off --hold 5 --config "$T/$name.conf" \
       "$T/m-$name" > "$T/$name.out" 2>&1; then
    cleanup_fn _force_unmount "$T/s-$name" "$T/m-$name"
    fail "$name: the mount succeeded"
  fi
  echo "$name ($(( $(date +%s) - t0 )) s): $(cat "$T/$name.out")"
}
# mount_read NAME CONF-LINES...: mount, whole-disk cmp, unmount.
mount_read () {
  local name=$1; shift
  printf '%s\n' "[disk d]" "$@" > "$T/$name.conf"
  corfs_mount "$T/s-$name" "$T/m-$name" --hold 10 --config "$T/$name.conf"
  cmp "$T/m-$name/d" "$img" || fail "$name: the disk differs from the parent"
  corfs_unmount "$T/m-$name"
}

echo "=== ca-file"
mount_read ca "url = $url" "ca-file = $pki/ca.pem"

echo "=== no ca-file"
must_not_mount noca "url = $url"
grep -qi "certificate" "$T/noca.out" || fail "noca: the message does not mention the certificate"

echo "=== insecure = true"
mount_read insecure "url = $url" "insecure = true"
grep -i "insecure" "$T/s-insecure/corfs.log" | grep -qiE "warn|off|danger" \
  || fail "insecure: no loud warning in corfs.log: $(grep -i insecure "$T/s-insecure/corfs.log" || echo none)"
grep -i "insecure" "$T/s-insecure/corfs.log" | head -n 2

echo "=== client certificate"
murl=https://127.0.0.1:$mport/disk.img
wait_http "$murl" 200 --cacert "$pki/ca.pem" --cert "$pki/cli.pem" --key "$pki/cli.key"
mount_read mtls "url = $murl" "ca-file = $pki/ca.pem" "client-cert = $pki/cli.pem" "client-key = $pki/cli.key"
must_not_mount nocert "url = $murl" "ca-file = $pki/ca.pem"
# nginx answers 400 ("No required SSL certificate was sent"): the message
# must name that cause, not a side effect of retrying it until the hold
# ran out (such as "Operation timed out after 0 milliseconds": a last
# attempt started at the deadline).  Checked at the end (late), so that
# the redirect checks still run.
late=()
grep -qiE "HTTP 400|certificate" "$T/nocert.out" \
  || late+=("nocert: the message hides the cause (nginx answered HTTP 400): $(cat "$T/nocert.out")")

echo "=== redirects"
mount_read old "url = $base/old" "ca-file = $pki/ca.pem"
mount_read r5 "url = $base/r5" "ca-file = $pki/ca.pem"
must_not_mount r6 "url = $base/r6" "ca-file = $pki/ca.pem"
must_not_mount loop "url = $base/loop" "ca-file = $pki/ca.pem"
for name in r6 loop; do
  grep -qi "redirect" "$T/$name.out" \
    || late+=("$name: the message does not mention redirects: $(cat "$T/$name.out")")
done
[ ${#late[@]} -eq 0 ] || fail "$(printf '%s\n' "${late[@]}")"
echo "OK"
