#!/usr/bin/env bash
# qcow2 parents (issue 20; src/format), images made by qemu-img:
#  - standalone (with zero clusters written by qemu-io and discarded
#    ones) and zlib-compressed images, served by nginx, by nbdkit's file
#    plugin and as file://, mounted with --format qcow2 (or format =
#    qcow2 in a [disk NAME] section): each disk has the virtual size and
#    reads back equal to `qemu-img convert -O raw` of its image;
#  - guest writes (dd conv=notrunc,fsync) persist across a remount, which
#    needs no --format (the record keeps it) and refuses a different one;
#  - never probed: the same qcow2 file mounted without --format is
#    presented raw, its own bytes;
#  - a corrupted image (encrypted flag, an L1 entry past the end) is
#    refused at mount with a message naming the image and the fault;
#  - qcow2 with --incoming, or --parent-owned, is refused;
#  - a backing chain (qcow2 over a compressed qcow2 over raw, in a
#    subdirectory), resolved next to the image over HTTP and file://;
#    under an NBD image refused, and read with backing-url from the config;
#    a remount after a backing file changed is refused;
#  - the stream of a compressed image over HTTP completes, then nginx is
#    stopped and the whole disk still reads back equal.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/../servers/nginx.sh"
requires fusermount3 --version
requires qemu-img --version
requires qemu-io --version
requires nbdkit --version
requires jq --version
requires curl --version

MiB=1048576
SIZE=$((24 * MiB))
www=$T/www; mkdir -p "$www"

# The guest's disk: random data, a compressible text run, zeros.
raw=$T/base.raw
head -c $((8 * MiB)) /dev/urandom > "$raw"
head -c $((8 * MiB)) < <(yes "corfs boots published images as they are") >> "$raw"
truncate -s $SIZE "$raw"
qemu-img convert -q -f raw -O qcow2 "$raw" "$www/plain.qcow2"
qemu-io -f qcow2 -c 'write -z 1M 256k' -c 'discard 4M 128k' -c 'write -P 0x5a 20M 64k' \
  "$www/plain.qcow2" > /dev/null
qemu-img convert -q -c -f raw -O qcow2 "$raw" "$www/comp.qcow2"
qemu-io -f qcow2 -c 'write -z 9M 64k' "$www/comp.qcow2" > /dev/null
# A chain: top.qcow2 over lib/mid.qcow2 over lib/base.raw.
mkdir -p "$www/lib"
cp "$raw" "$www/lib/base.raw"
qemu-img create -q -f qcow2 -b base.raw -F raw "$www/lib/mid.qcow2"
qemu-io -f qcow2 -c 'write -P 0x61 2M 1M' -c 'write -z 12M 1M' "$www/lib/mid.qcow2" > /dev/null
qemu-img create -q -f qcow2 -b lib/mid.qcow2 -F qcow2 "$www/top.qcow2"
qemu-io -f qcow2 -c 'write -P 0x62 2560k 64k' -c 'write -z 100k 8k' "$www/top.qcow2" > /dev/null
for i in plain comp top; do
  qemu-img convert -q -f qcow2 -O raw "$www/$i.qcow2" "$T/$i.oracle"
done

port=$(free_port)
start_nginx "$T/nginx" "server { listen 127.0.0.1:$port; root $www; }"
http=http://127.0.0.1:$port
wait_http "$http/plain.qcow2" 200
for i in plain comp; do
  start_nbdkit "$T/nbd-$i.pid" -r -U "$T/$i.sock" file "$www/$i.qcow2"
done

url_of () {  # PROTOCOL IMAGE
  case $1 in
    http) echo "$http/$2.qcow2";;
    nbd) nbd_uri "$T/$2.sock";;
    file) echo "file://$www/$2.qcow2";;
  esac
}

n=0
for proto in http nbd file; do
  for img in plain comp; do
    n=$((n + 1))
    echo "=== $img over $proto"
    corfs_mount "$T/s$n" "$T/m$n" --hold 15 --format qcow2 --disk d="$(url_of $proto $img)"
    [ "$(stat -c %s "$T/m$n/d")" -eq $SIZE ] ||
      fail "$img over $proto: disk size $(stat -c %s "$T/m$n/d"), expected $SIZE"
    cmp "$T/m$n/d" "$T/$img.oracle" || fail "$img over $proto differs from qemu-img's conversion"
    corfs_unmount "$T/m$n"
  done
done

for proto in http file; do
  n=$((n + 1))
  echo "=== a backing chain over $proto"
  corfs_mount "$T/s$n" "$T/m$n" --hold 15 --format qcow2 --disk d="$(url_of $proto top)"
  cmp "$T/m$n/d" "$T/top.oracle" || fail "the chain over $proto differs from qemu-img's conversion"
  corfs_unmount "$T/m$n"
done

echo "=== a remount after a backing file changed is refused"
corfs_mount "$T/sch" "$T/mch" --hold 15 --format qcow2 --disk d="$(url_of file top)"
dd if="$T/mch/d" bs=1M count=1 status=none | cmp - <(head -c $MiB "$T/top.oracle") ||
  fail "the chain's first MiB differs"
corfs_unmount "$T/mch"
touch -d '2020-01-01' "$www/lib/mid.qcow2"
if "$CORFS" mount --state "$T/sch" --stream=off --hold 10 "$T/mch" > "$T/chain.out" 2>&1; then
  cleanup_fn _force_unmount "$T/sch" "$T/mch"
  fail "a remount after the backing file changed succeeded"
fi
cat "$T/chain.out"
grep -q "backing files of parent .* changed" "$T/chain.out" || fail "the refusal does not say why"

echo "=== a backing file under an NBD image: refused, then read with backing-url"
start_nbdkit "$T/nbd-top.pid" -r -U "$T/top.sock" file "$www/top.qcow2"
printf '[disk d]\nurl = %s\nformat = qcow2\n' "$(nbd_uri "$T/top.sock")" > "$T/nb.conf"
mkdir -p "$T/s-nb" "$T/m-nb"
if "$CORFS" mount --state "$T/s-nb" --stream=off --hold 10 --config "$T/nb.conf" "$T/m-nb" \
     > "$T/nb.out" 2>&1; then
  cleanup_fn _force_unmount "$T/s-nb" "$T/m-nb"
  fail "a backing file under an NBD image was resolved"
fi
cat "$T/nb.out"
grep -q "under an NBD image" "$T/nb.out" || fail "the refusal does not say why"
# mid.qcow2's own backing file would be a name under an NBD export too:
# the backing export serves it flattened onto base.raw by qemu-img.
qemu-img convert -q -f qcow2 -O qcow2 "$www/lib/mid.qcow2" "$T/midflat.qcow2"
start_nbdkit "$T/nbd-mid.pid" -r -U "$T/mid.sock" file "$T/midflat.qcow2"
printf 'backing-url = %s\n' "$(nbd_uri "$T/mid.sock")" >> "$T/nb.conf"
corfs_mount "$T/s-nb2" "$T/m-nb2" --hold 15 --config "$T/nb.conf"
cmp "$T/m-nb2/d" "$T/top.oracle" || fail "the chain over NBD with backing-url differs"
corfs_unmount "$T/m-nb2"

echo "=== format in the config file"
printf '[disk d]\nurl = %s\nformat = qcow2\n' "$(url_of http comp)" > "$T/q.conf"
corfs_mount "$T/sc" "$T/mc" --hold 15 --config "$T/q.conf"
cmp "$T/mc/d" "$T/comp.oracle" || fail "format = qcow2 from the config: the disk differs"
pf=$("$CORFS" status --state "$T/sc" d --json | jq -r '(if type == "array" then .[0] else . end).parent.format')
[ "$pf" = qcow2 ] || fail "status: parent.format is '$pf', expected qcow2"
corfs_unmount "$T/mc"

echo "=== guest writes persist across a remount"
cp "$T/comp.oracle" "$T/expect"
corfs_mount "$T/sw" "$T/mw" --hold 15 --format qcow2 --disk d="$(url_of http comp)"
twin_write "$T/mw/d" "$T/expect" $((3 * MiB + 512)) 70000 || fail "write 1 failed"
twin_write "$T/mw/d" "$T/expect" $((9 * MiB)) 4096 || fail "write 2 (zero cluster) failed"
twin_write "$T/mw/d" "$T/expect" $((SIZE - 8192)) 8192 || fail "write 3 (end) failed"
corfs_unmount "$T/mw"
corfs_mount "$T/sw" "$T/mw" --hold 15
cmp "$T/mw/d" "$T/expect" || fail "after a remount, the disk differs from what was written"
corfs_unmount "$T/mw"
mkdir -p "$T/mw"
if "$CORFS" mount --state "$T/sw" --stream=off --format raw --disk d="$(url_of http comp)" \
     "$T/mw" > "$T/fmt.out" 2>&1; then
  cleanup_fn _force_unmount "$T/sw" "$T/mw"
  fail "a remount with --format raw of a qcow2 disk succeeded"
fi
cat "$T/fmt.out"
grep -q "qcow2" "$T/fmt.out" || fail "the refusal does not name the recorded format"

echo "=== never probed: the qcow2 file without --format is presented raw"
corfs_mount "$T/sr" "$T/mr" --hold 15 --disk d="$(url_of http comp)"
cmp "$T/mr/d" "$www/comp.qcow2" || fail "without --format, the disk is not the file's bytes"
pf=$("$CORFS" status --state "$T/sr" d --json | jq -r '(if type == "array" then .[0] else . end).parent.format')
[ "$pf" = raw ] || fail "status: parent.format is '$pf', expected raw"
corfs_unmount "$T/mr"

refused () {  # NAME WANT1 WANT2 MOUNT-ARGS...: the mount fails, saying both
  local name=$1 w1=$2 w2=$3; shift 3
  mkdir -p "$T/s-$name" "$T/m-$name"
  if "$CORFS" mount --state "$T/s-$name" --stream=off --hold 10 "$@" "$T/m-$name" \
       > "$T/$name.out" 2>&1; then
    cleanup_fn _force_unmount "$T/s-$name" "$T/m-$name"
    fail "$name: the mount succeeded"
  fi
  cat "$T/$name.out"
  grep -qF -- "$w1" "$T/$name.out" || fail "$name: the refusal does not say \"$w1\""
  grep -qF -- "$w2" "$T/$name.out" || fail "$name: the refusal does not say \"$w2\""
}

echo "=== corrupted images are refused, naming the image and the fault"
cp "$www/plain.qcow2" "$www/enc.qcow2"
printf '\x00\x00\x00\x01' | dd of="$www/enc.qcow2" bs=1 seek=32 conv=notrunc status=none
refused enc "$http/enc.qcow2" "encrypted" --format qcow2 --disk d="$http/enc.qcow2"
cp "$www/plain.qcow2" "$www/l1.qcow2"
l1=$(od -An -tx1 -j40 -N8 "$www/l1.qcow2" | tr -d ' \n')
printf '\x00\x00\x10\x00\x00\x00\x00\x00' | dd of="$www/l1.qcow2" bs=1 seek=$((16#$l1)) \
  conv=notrunc status=none
refused l1 "file://$www/l1.qcow2" "L2 table of L1 entry 0" --format qcow2 \
  --disk d="file://$www/l1.qcow2"

echo "=== qcow2 with --incoming or --parent-owned is refused"
refused inc "qcow2" "incoming" --format qcow2 --incoming --disk d="$(url_of file plain)"
refused own "qcow2" "parent-owned" --format qcow2 --parent-owned --disk d="$(url_of file plain)"

echo "=== the stream completes, then the server is stopped"
corfs_mount "$T/ss" "$T/ms" --stream=on --hold 15 --format qcow2 --disk d="$(url_of http comp)"
rc=0; timeout 120 "$CORFS" stream --state "$T/ss" d --wait || rc=$?
[ $rc -eq 0 ] || fail "corfs stream d --wait exited $rc"
[ "$("$CORFS" status --state "$T/ss" d --json | jq -r '(if type == "array" then .[0] else . end).complete')" = true ] ||
  fail "status: not complete after stream --wait"
_stop_nginx "$T/nginx"
curl -s -o /dev/null "$http/comp.qcow2" && fail "nginx still answers after being stopped"
cmp "$T/ms/d" "$T/comp.oracle" || fail "after the server stopped, the disk differs"
corfs_unmount "$T/ms"
echo "OK"
