#!/usr/bin/env bash
# HTTP parent served by nginx (64 MiB random image):
#  - a cold whole-disk read returns the parent's bytes exactly (cmp);
#  - 8 concurrent O_DIRECT readers of different ranges all get their bytes;
#  - the image replaced on the server while mounted (same size, new
#    content, new mtime, hence a new nginx ETag): a cold read of a range
#    not yet present fails with EIO and never returns new data, status
#    says parent.state "changed"; ranges already present still read the
#    old data; mounting the old state dir again is refused;
#  - a fresh state dir against the new image mounts and reads it exactly;
#  - a server that ignores Range (answers 200 with the whole body) is
#    refused at mount with a message that mentions Range.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/../servers/nginx.sh"
requires fusermount3 --version
requires jq --version
requires curl --version
requires python3 --version

MiB=1048576
size=$((64 * MiB))
www=$T/www; mkdir -p "$www"
img=$www/disk.img
head -c "$size" /dev/urandom > "$img"
touch -d '2024-01-01 00:00:00' "$img"
cp "$img" "$T/old.img"

port=$(free_port)
start_nginx "$T/nginx" "server { listen 127.0.0.1:$port; root $www; }"
url=http://127.0.0.1:$port/disk.img
wait_http "$url" 200

# piece FILE OFF LEN: LEN bytes of FILE at byte offset OFF, on stdout.
piece () { dd if="$1" iflag=skip_bytes,count_bytes skip="$2" count="$3" bs=1M status=none; }
dpiece () { dd if="$1" iflag=skip_bytes,count_bytes,direct skip="$2" count="$3" bs=1M status=none; }
field () { "$CORFS" status --state "$1" d --json | jq -r "(if type == \"array\" then .[0] else . end)$2"; }

echo "=== cold whole-disk read"
corfs_mount "$T/s1" "$T/m1" --hold 15 --disk d="$url"
[ "$(stat -c %s "$T/m1/d")" -eq "$size" ] || fail "disk size $(stat -c %s "$T/m1/d"), expected $size"
cmp "$T/m1/d" "$img" || fail "cold whole-disk read differs from the parent"
[ "$(field "$T/s1" .parent.state)" = connected ] \
  || fail "parent.state $(field "$T/s1" .parent.state), expected connected"
corfs_unmount "$T/m1"

echo "=== 8 concurrent O_DIRECT readers"
corfs_mount "$T/s2" "$T/m2" --hold 15 --disk d="$url"
pids=()
for i in 0 1 2 3 4 5 6 7; do
  # Ranges in the first half, 3 MiB each, spread out (4 MiB apart).
  dpiece "$T/m2/d" $((i * 4 * MiB)) $((3 * MiB)) > "$T/out.$i" 2> "$T/err.$i" &
  pids+=($!)
done
for i in 0 1 2 3 4 5 6 7; do
  wait "${pids[$i]}" || fail "reader $i failed: $(cat "$T/err.$i")"
done
for i in 0 1 2 3 4 5 6 7; do
  cmp -s "$T/out.$i" <(piece "$img" $((i * 4 * MiB)) $((3 * MiB))) \
    || fail "reader $i (offset $((i * 4)) MiB) got wrong data"
done

echo "=== image replaced on the server while mounted"
head -c "$size" /dev/urandom > "$www/new.img"
touch -d '2025-06-01 12:00:00' "$www/new.img"
mv "$www/new.img" "$img"
cp "$img" "$T/new.img"
# nginx answers the new ETag now.
new_etag=$(curl -sI "$url" | tr -d '\r' | awk -F': ' 'tolower($1)=="etag"{print $2}')
echo "server ETag now $new_etag"

off=$((48 * MiB)) len=$MiB          # never read on this mount
if dpiece "$T/m2/d" "$off" "$len" > "$T/changed.out" 2> "$T/changed.err"; then
  fail "cold read of a missing range succeeded after the parent changed"
fi
grep -q "Input/output error" "$T/changed.err" \
  || fail "cold read after the change: expected EIO, got: $(cat "$T/changed.err")"
if [ -s "$T/changed.out" ] && cmp -s "$T/changed.out" <(piece "$T/new.img" "$off" "$(stat -c %s "$T/changed.out")"); then
  fail "cold read after the change returned the NEW image's data"
fi
st=$(field "$T/s2" .parent.state)
[ "$st" = changed ] || fail "parent.state $st after the change, expected changed (last_error: $(field "$T/s2" .parent.last_error))"
echo "last_error: $(field "$T/s2" .parent.last_error)"
# A second cold read also fails (fail closed), immediately.
dpiece "$T/m2/d" $((60 * MiB)) 65536 > /dev/null 2>&1 \
  && fail "a second cold read succeeded after the parent changed"
# Present ranges still read the old data.
for i in 0 3 7; do
  cmp -s <(dpiece "$T/m2/d" $((i * 4 * MiB)) $((3 * MiB))) <(piece "$T/old.img" $((i * 4 * MiB)) $((3 * MiB))) \
    || fail "present range $i does not read the old data after the change"
done
corfs_unmount "$T/m2"

echo "=== the old state dir against the new image is refused"
if "$CORFS" mount --state "$T/s2" --stream=off "$T/m2" > "$T/remount.out" 2>&1; then
  cleanup_fn _force_unmount "$T/s2" "$T/m2"
  fail "mount of the old state dir against a changed parent succeeded"
fi
cat "$T/remount.out"
grep -qi "changed\|identity\|different" "$T/remount.out" \
  || fail "refused remount does not say why: $(cat "$T/remount.out")"

echo "=== fresh state dir against the new image"
corfs_mount "$T/s3" "$T/m3" --hold 15 --disk d="$url"
cmp "$T/m3/d" "$T/new.img" || fail "fresh mount does not read the new image"
corfs_unmount "$T/m3"

echo "=== a server without Range support is refused"
head -c $MiB /dev/urandom > "$T/small.img"
python3 "$(dirname "$0")/../servers/http-fault.py" --file "$T/small.img" \
  --port-file "$T/nr.port" --ignore-range 2> "$T/nr.log" &
nrpid=$!
cleanup_fn kill_pid "$nrpid"
for i in $(seq 100); do [ -s "$T/nr.port" ] && break; sleep 0.1; done
[ -s "$T/nr.port" ] || fail "no-range server did not start: $(cat "$T/nr.log")"
nrurl=http://127.0.0.1:$(cat "$T/nr.port")/disk.img
mkdir -p "$T/s4" "$T/m4"
if "$CORFS" mount --state "$T/s4" --stream=off --hold 10 --disk d="$nrurl" "$T/m4" > "$T/nr.out" 2>&1; then
  cleanup_fn _force_unmount "$T/s4" "$T/m4"
  fail "mount against a server without Range support succeeded"
fi
cat "$T/nr.out"
grep -q "Range" "$T/nr.out" || fail "refusal does not mention Range: $(cat "$T/nr.out")"
echo "OK"
