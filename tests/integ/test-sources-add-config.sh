#!/usr/bin/env bash
# corfs sources --add --config with a relative token-file (issue 21's
# review): the daemon runs in /, so the CLI sends the path made absolute
# (from its current directory).  An NBD source first; an HTTP source
# (nginx, which serves only with the right bearer token) added at run
# time with its [source d web] section's token-file = tok (relative):
# it matches and serves once the NBD source is killed.  A relative path
# that does not exist is refused by the CLI, naming it.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/../servers/nginx.sh"
requires fusermount3 --version
requires jq --version
requires curl --version
requires nbdkit file --dump-plugin

MiB=1048576
www=$T/www; mkdir -p "$www"
head -c $((16 * MiB)) /dev/urandom > "$www/disk.img"
cp "$www/disk.img" "$T/copy.img"
port=$(free_port)
start_nginx "$T/nginx" "server { listen 127.0.0.1:$port; root $www;
  location / { if (\$http_authorization != 'Bearer web-token') { return 403; } } }"
http=http://127.0.0.1:$port/disk.img
wait_http "$http" 206 -r 0-0 -H 'Authorization: Bearer web-token'
start_nbdkit "$T/nbd.pid" -r -U "$T/nbd.sock" file "$T/copy.img"
nbd=$(nbd_uri "$T/nbd.sock")

piece () { dd if="$1" iflag=skip_bytes,count_bytes skip="$2" count="$3" bs=64K status=none; }
src () { "$CORFS" status --state "$T/s" d --json | jq -r "(if type == \"array\" then .[0] else . end).parent.sources[$1]$2"; }

mkdir -p "$T/cfg"
printf 'web-token\n' > "$T/cfg/tok"; chmod 600 "$T/cfg/tok"
printf '[source d web]\nurl = %s\ntoken-file = tok\n' "$http" > "$T/cfg/c.conf"
printf '[source d web]\nurl = %s\ntoken-file = missing\n' "$http" > "$T/cfg/bad.conf"

# A set of one (a second, fast source of the image, removed), so that
# the disk takes sources at run time.
corfs_mount "$T/s" "$T/m" --hold 5 --readahead 0 --disk d="$nbd" --disk d="file://$T/copy.img"
"$CORFS" sources --state "$T/s" d --remove "file://$T/copy.img" || fail "remove failed"

(cd "$T/cfg" && "$CORFS" sources --state "$T/s" d --add "$http" --config bad.conf) 2> "$T/err" &&
  fail "added with a token file that does not exist"
grep -q "token-file missing" "$T/err" || fail "unexpected error: $(cat "$T/err")"

(cd "$T/cfg" && "$CORFS" sources --state "$T/s" d --add "$http" --config c.conf) ||
  fail "sources --add with a relative token-file failed: $(tail -3 "$T/s/corfs.log")"
[ "$(src 1 .state)" = ok ] || fail "the added source is $(src 1 .state): $(src 1 .last_error)"

kill_pid "$(cat "$T/nbd.pid")"
piece "$T/m/d" $((8 * MiB)) 65536 | cmp -s - <(piece "$www/disk.img" $((8 * MiB)) 65536) ||
  fail "the read through the added source failed or differs: $(tail -3 "$T/s/corfs.log")"
[ "$(src 1 .reads)" -ge 1 ] || fail "the added source served no read"
corfs_unmount "$T/m"
echo PASS
