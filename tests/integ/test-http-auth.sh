#!/usr/bin/env bash
# HTTP parents that need credentials (nginx, 16 MiB random image):
#  - basic auth: credentials-file = user:password reads the disk exactly;
#    a wrong password fails the mount with a clear message (HTTP 401);
#  - bearer token: token-file is sent as "Authorization: Bearer ..."; when
#    the server starts requiring another token and the token file is
#    rewritten, later cold reads succeed (the file is re-read on change);
#  - an extra header (header = X-Test: 42) reaches the server (nginx
#    answers 403 without it, and a mount without it is refused);
#  - no secret (password, either token) appears in `status --json`,
#    `status`, `metrics`, nor anywhere under the state dirs (corfs.log, the
#    binary LMDB index: grep -a).
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

# Secrets unlikely to occur anywhere by chance.
pw="pw-$(openssl rand -hex 12)"
badpw="bad-$(openssl rand -hex 12)"
tok1="tok1-$(openssl rand -hex 16)"
tok2="tok2-$(openssl rand -hex 16)"
secrets=("$pw" "$badpw" "$tok1" "$tok2")

printf 'corfsuser:%s\n' "$(openssl passwd -apr1 "$pw")" > "$T/htpasswd"
chmod 600 "$T/htpasswd"

pb=$(free_port); pt=$(free_port); ph=$(free_port)
while [ "$pt" = "$pb" ]; do pt=$(free_port); done
while [ "$ph" = "$pb" ] || [ "$ph" = "$pt" ]; do ph=$(free_port); done
servers () {   # servers TOKEN
  cat <<EOF
  server { listen 127.0.0.1:$pb; root $www;
    location / { auth_basic "corfs"; auth_basic_user_file $T/htpasswd; } }
  server { listen 127.0.0.1:$pt; root $www;
    location / { if (\$http_authorization != "Bearer $1") { return 401; } } }
  server { listen 127.0.0.1:$ph; root $www;
    location / { if (\$http_x_test != "42") { return 403; } } }
EOF
}
start_nginx "$T/nginx" "$(servers "$tok1")"
ub=http://127.0.0.1:$pb/disk.img ut=http://127.0.0.1:$pt/disk.img uh=http://127.0.0.1:$ph/disk.img
wait_http "$ub" 401
wait_http "$ub" 200 -u "corfsuser:$pw"
wait_http "$ut" 401
wait_http "$ut" 200 -H "Authorization: Bearer $tok1"
wait_http "$uh" 403
wait_http "$uh" 200 -H "X-Test: 42"

piece () { dd if="$1" iflag=skip_bytes,count_bytes skip="$2" count="$3" bs=1M status=none; }
dpiece () { dd if="$1" iflag=skip_bytes,count_bytes,direct skip="$2" count="$3" bs=1M status=none; }
status_json () { "$CORFS" status --state "$1" d --json; }
statuses=()   # every status/metrics output, checked for secrets at the end
snap () { statuses+=("$(status_json "$1")" "$("$CORFS" status --state "$1" 2>&1)" "$("$CORFS" metrics --state "$1" 2>&1)"); }

mkdir -p "$T/secret"; chmod 700 "$T/secret"

echo "=== basic auth"
printf 'corfsuser:%s\n' "$pw" > "$T/secret/creds"
printf '[disk d]\nurl = %s\ncredentials-file = %s\n' "$ub" "$T/secret/creds" > "$T/basic.conf"
corfs_mount "$T/s-basic" "$T/m-basic" --hold 10 --config "$T/basic.conf"
cmp "$T/m-basic/d" "$img" || fail "basic auth: the disk differs from the parent"
snap "$T/s-basic"
corfs_unmount "$T/m-basic"

echo "=== basic auth, wrong password"
printf 'corfsuser:%s\n' "$badpw" > "$T/secret/badcreds"
printf '[disk d]\nurl = %s\ncredentials-file = %s\n' "$ub" "$T/secret/badcreds" > "$T/bad.conf"
mkdir -p "$T/s-bad" "$T/m-bad"
start=$(date +%s)
if "$CORFS" mount --state "$T/s-bad" --stream=off --hold 10 --config "$T/bad.conf" "$T/m-bad" > "$T/bad.out" 2>&1; then
  cleanup_fn _force_unmount "$T/s-bad" "$T/m-bad"
  fail "mount with a wrong password succeeded"
fi
cat "$T/bad.out"
grep -q "401" "$T/bad.out" || fail "wrong password: message does not mention HTTP 401: $(cat "$T/bad.out")"
echo "wrong password refused after $(( $(date +%s) - start )) s"

echo "=== bearer token"
echo "$tok1" > "$T/secret/token"
printf '[disk d]\nurl = %s\ntoken-file = %s\n' "$ut" "$T/secret/token" > "$T/token.conf"
corfs_mount "$T/s-tok" "$T/m-tok" --hold 10 --config "$T/token.conf"
cmp -s <(dpiece "$T/m-tok/d" 0 $((4 * MiB))) <(piece "$img" 0 $((4 * MiB))) \
  || fail "bearer: cold read with token 1 wrong"
snap "$T/s-tok"
# The server now requires token 2; then the token file is rewritten.
reload_nginx "$T/nginx" "$(servers "$tok2")"
wait_http "$ut" 200 -H "Authorization: Bearer $tok2"
wait_http "$ut" 401 -H "Authorization: Bearer $tok1"
echo "$tok2" > "$T/secret/token.new"
touch -d '+5 seconds' "$T/secret/token.new"     # surely another mtime
mv "$T/secret/token.new" "$T/secret/token"
cmp -s <(dpiece "$T/m-tok/d" $((8 * MiB)) $((4 * MiB))) <(piece "$img" $((8 * MiB)) $((4 * MiB))) \
  || fail "bearer: cold read after the token change failed or is wrong ($(status_json "$T/s-tok" | jq -c .parent))"
cmp "$T/m-tok/d" "$img" || fail "bearer: the whole disk differs after the token change"
st=$(status_json "$T/s-tok" | jq -r .parent.state)
[ "$st" = connected ] || fail "bearer: parent.state $st, expected connected"
snap "$T/s-tok"
corfs_unmount "$T/m-tok"

echo "=== extra header"
mkdir -p "$T/s-noh" "$T/m-noh"
if "$CORFS" mount --state "$T/s-noh" --stream=off --hold 10 --disk d="$uh" "$T/m-noh" > "$T/noh.out" 2>&1; then
  cleanup_fn _force_unmount "$T/s-noh" "$T/m-noh"
  fail "mount without the required header succeeded"
fi
cat "$T/noh.out"
grep -q "403" "$T/noh.out" || fail "missing header: message does not mention HTTP 403: $(cat "$T/noh.out")"
printf '[disk d]\nurl = %s\nheader = X-Test: 42\nheader = X-Other: yes\n' "$uh" > "$T/header.conf"
corfs_mount "$T/s-hdr" "$T/m-hdr" --hold 10 --config "$T/header.conf"
cmp "$T/m-hdr/d" "$img" || fail "header: the disk differs from the parent"
snap "$T/s-hdr"
corfs_unmount "$T/m-hdr"

echo "=== no secret leaks"
for s in "${secrets[@]}"; do
  for out in "${statuses[@]}"; do
    case $out in *"$s"*) fail "a secret (${s%%-*}...) appears in status/metrics output: $out";; esac
  done
  if hits=$(grep -raF -l -- "$s" "$T"/s-*); then
    fail "a secret (${s%%-*}...) is stored in the state dir: $hits"
  fi
done
# The daemons' logs are where they should be (the grep above saw them).
ls "$T"/s-basic/corfs.log "$T"/s-tok/corfs.log "$T"/s-bad/corfs.log > /dev/null \
  || fail "a state dir lacks corfs.log"
echo "OK"
