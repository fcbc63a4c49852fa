#!/usr/bin/env bash
# A URL with credentials given inline (--disk NAME=http://user:pass@...,
# plus a presigned-style query) does not stay in the daemon's command
# line: /proc/PID/cmdline shows the redacted URL only, while the disk
# still reads with the credentials (they were copied before the scrub).
# argv keeps only scheme://host[:port]/path, so secrets under any name are
# gone too: a `?key=` query, a `#access_token=` fragment, a `;jsessionid=`
# path parameter (disk e).  An argument that is not NAME=URL is shown the
# same way in the error.
# The daemon is a fork of `corfs mount`, so this is the argv it keeps.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/../servers/nginx.sh"
requires fusermount3 --version
requires curl --version
requires openssl version

www=$T/www; mkdir -p "$www"
img=$www/disk.img
head -c $((4 << 20)) /dev/urandom > "$img"
pw="pw-$(openssl rand -hex 12)"
sig="sig-$(openssl rand -hex 12)"
printf 'corfsuser:%s\n' "$(openssl passwd -apr1 "$pw")" > "$T/htpasswd"
port=$(free_port)
start_nginx "$T/nginx" "  server { listen 127.0.0.1:$port; root $www;
    location / { auth_basic \"corfs\"; auth_basic_user_file $T/htpasswd; } }"
base=http://127.0.0.1:$port/disk.img
wait_http "$base" 401
wait_http "$base" 200 -u "corfsuser:$pw"

key="key-$(openssl rand -hex 12)" tok="tok-$(openssl rand -hex 12)" js="js-$(openssl rand -hex 12)"
cp "$img" "$www/e.img;jsessionid=$js"

echo "=== a --disk argument that is not NAME=URL: the error shows no secret"
for arg in "http://corfsuser:$pw@127.0.0.1:$port/e.img#$tok" \
           "http://corfsuser:$pw@127.0.0.1:$port/e.img?key=$key"; do
  if "$CORFS" mount --state "$T/bad" --disk "$arg" "$T" 2> "$T/err"; then
    fail "a --disk without NAME= was accepted"
  fi
  cat "$T/err"
  grep -q -e "expected NAME=URL" -e "invalid disk name" "$T/err" || fail "no error about the argument"
  grep -q "http://127.0.0.1:$port/e.img" "$T/err" || fail "the error does not show the URL"
  grep -q -e "$pw" -e "$key" -e "$tok" "$T/err" && fail "a secret is in the error"
done

st=$T/state mnt=$T/mnt
corfs_mount "$st" "$mnt" --hold 10 --disk "d=http://corfsuser:$pw@127.0.0.1:$port/disk.img?X-Amz-Signature=$sig" \
  --disk "e=http://corfsuser:$pw@127.0.0.1:$port/e.img;jsessionid=$js?key=$key#access_token=$tok"
pid=$(daemon_pid "$st")
tr '\0' ' ' < /proc/$pid/cmdline > "$T/cmdline"; echo >> "$T/cmdline"
echo "daemon command line: $(cat "$T/cmdline")"
grep -q -- "$pw" "$T/cmdline" && fail "the password is in /proc/$pid/cmdline"
grep -q -- "$sig" "$T/cmdline" && fail "the signature is in /proc/$pid/cmdline"
for secret in "$key" "$tok" "$js"; do
  grep -q -- "$secret" "$T/cmdline" && fail "secret ${secret%%-*} is in /proc/$pid/cmdline"
done
grep -q -- "d=http://127.0.0.1:$port/disk.img " "$T/cmdline" ||
  fail "the redacted URL of d is not in /proc/$pid/cmdline"
grep -q -- "e=http://127.0.0.1:$port/e.img " "$T/cmdline" ||
  fail "the redacted URL of e is not in /proc/$pid/cmdline"
cmp "$mnt/d" "$img" || fail "the disk differs from the parent (credentials lost?)"
cmp "$mnt/e" "$img" || fail "disk e differs from its parent"
corfs_unmount "$mnt"
echo OK
