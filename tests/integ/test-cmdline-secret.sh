#!/usr/bin/env bash
# A URL with credentials given inline (--disk NAME=http://user:pass@...,
# plus a presigned-style query) does not stay in the daemon's command
# line: /proc/PID/cmdline shows the redacted URL only, while the disk
# still reads with the credentials (they were copied before the scrub).
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

st=$T/state mnt=$T/mnt
corfs_mount "$st" "$mnt" --hold 10 --disk "d=http://corfsuser:$pw@127.0.0.1:$port/disk.img?X-Amz-Signature=$sig"
pid=$(daemon_pid "$st")
tr '\0' ' ' < /proc/$pid/cmdline > "$T/cmdline"; echo >> "$T/cmdline"
echo "daemon command line: $(cat "$T/cmdline")"
grep -q -- "$pw" "$T/cmdline" && fail "the password is in /proc/$pid/cmdline"
grep -q -- "$sig" "$T/cmdline" && fail "the signature is in /proc/$pid/cmdline"
grep -q -- "d=http://127.0.0.1:$port/disk.img" "$T/cmdline" ||
  fail "the redacted URL is not in /proc/$pid/cmdline"
cmp "$mnt/d" "$img" || fail "the disk differs from the parent (credentials lost?)"
corfs_unmount "$mnt"
echo OK
