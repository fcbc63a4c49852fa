#!/usr/bin/env bash
# A parent that reports an absurd size gets a clear error, never an
# abort (issue 15 item 12), also when the size is asked again under a
# running disk: the re-pin at activation.  A small HTTP server on
# loopback refuses HEAD (405), so the size comes from the total of a
# ranged GET's Content-Range, which a mode file switches between the
# real size, -1 and 2^63-1.  Incoming disk, 4 MiB:
#  - with the real size: reads return the image;
#  - total -1, then 2^63-1: `activate` fails with a message naming the
#    parent and Content-Range; the daemon lives and answers status; the
#    disk is not active; a read fails with EIO;
#  - the real size again: the same `activate` (same epoch) succeeds and
#    the disk reads the image.
# And an NBD export of 2^63-1 bytes (nbdkit null): the mount is refused
# with a message naming the parent and the size (63d3432: "Cannot
# allocate memory" from the index).
. "$(dirname "$0")/../functions.sh"
requires fusermount3 --version
requires jq --version
requires python3 --version

MiB=1048576
img=$T/disk.img
head -c $((4 * MiB)) /dev/urandom > "$img"
echo ok > "$T/mode"
cat > "$T/srv.py" <<'PY'
import os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
img, modef, portf = sys.argv[1:4]
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_HEAD(self):
        self.send_response(405); self.send_header("Content-Length", "0"); self.end_headers()
    def do_GET(self):
        size = os.path.getsize(img)
        mode = open(modef).read().strip()
        total = {"ok": str(size), "neg": "-1", "huge": "9223372036854775807"}[mode]
        a, b = self.headers["Range"].split("=", 1)[1].split("-")
        first, last = int(a), min(int(b), size - 1)
        with open(img, "rb") as f:
            f.seek(first); body = f.read(last - first + 1)
        self.send_response(206)
        self.send_header("Content-Range", "bytes %d-%d/%s" % (first, last, total))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
open(portf + ".tmp", "w").write(str(s.server_address[1])); os.rename(portf + ".tmp", portf)
s.serve_forever()
PY
python3 "$T/srv.py" "$img" "$T/mode" "$T/port" 2> "$T/srv.log" &
srvpid=$!
cleanup_fn kill_pid "$srvpid"
for i in $(seq 100); do [ -s "$T/port" ] && break; sleep 0.1; done
[ -s "$T/port" ] || fail "server did not start: $(cat "$T/srv.log")"
url=http://127.0.0.1:$(cat "$T/port")/disk.img

js () { "$CORFS" status --state "$st" d --json | jq -r "(if type == \"array\" then .[0] else . end) | $1"; }
piece () { dd if="$1" iflag=skip_bytes,count_bytes,direct skip="$2" count="$3" bs=64K status=none; }
st=$T/state mnt=$T/mnt
corfs_mount "$st" "$mnt" --incoming --hold 5 --disk d="$url"
pid=$(daemon_pid "$st")
cmp <(piece "$mnt/d" 0 $MiB) <(head -c $MiB "$img") || fail "incoming read differs"

for mode in neg huge; do
  echo $mode > "$T/mode"
  rc=0; "$CORFS" activate --state "$st" d --epoch 1 > "$T/out" 2>&1 || rc=$?
  echo "activate with total '$mode': exit $rc: $(cat "$T/out")"
  alive "$pid" || fail "$mode: the daemon died (status $(cat "$T/out"); log: $(tail -n 5 "$st/corfs.log"))"
  [ $rc -ne 0 ] || fail "$mode: activate succeeded with an absurd parent size"
  grep -qF "$url" "$T/out" || fail "$mode: the error does not name the parent: $(cat "$T/out")"
  grep -q "Content-Range" "$T/out" || fail "$mode: the error does not say what was wrong: $(cat "$T/out")"
  [ "$(js .owner.state)" != active ] || fail "$mode: the disk is active after a failed activation"
  if piece "$mnt/d" $((2 * MiB)) 65536 > /dev/null 2> "$T/dd.err"; then
    fail "$mode: a read succeeded while the parent reports an absurd size"
  fi
  grep -q "Input/output error" "$T/dd.err" || fail "$mode: the read failed, but not with EIO: $(cat "$T/dd.err")"
  alive "$pid" || fail "$mode: the daemon died on a read"
done

echo ok > "$T/mode"
rc=0; "$CORFS" activate --state "$st" d --epoch 1 > "$T/out" 2>&1 || rc=$?
[ $rc -eq 0 ] || fail "activate --epoch 1 again with a sane parent failed: $(cat "$T/out")"
[ "$(js '.owner.state + "/" + (.owner.epoch|tostring)')" = active/1 ] \
  || fail "owner $(js '.owner|tostring') after the repeated activate, expected active/1"
cmp "$mnt/d" "$img" || fail "the activated disk differs from the image"
# The failures before no longer describe the parent (63d3432 kept the
# last one, and "down", after the successful re-pin).
[ -z "$(js .parent.last_error)" ] \
  || fail "status still shows an earlier failure after a successful re-pin: $(js .parent.last_error)"
case $(js .parent.state) in retrying|down|changed) fail "parent state $(js .parent.state) after a successful re-pin";; esac
corfs_unmount "$mnt" || fail "unmount failed"
wait_gone "$pid"

if nbdkit --version > /dev/null 2>&1; then
  start_nbdkit "$T/nbd.pid" -r -U "$T/nbd.sock" null size=9223372036854775807
  rc=0
  "$CORFS" mount --state "$T/st-nbd" --stream=off --disk d="$(nbd_uri "$T/nbd.sock")" "$mnt" \
    > "$T/out" 2>&1 || rc=$?
  echo "NBD export of 2^63-1 bytes: exit $rc: $(cat "$T/out")"
  if [ $rc -eq 0 ]; then
    cleanup_fn _force_unmount "$T/st-nbd" "$mnt"
    fail "NBD: a parent of 2^63-1 bytes was attached"
  fi
  grep -qF "nbd.sock" "$T/out" && grep -q "9223372036854775807" "$T/out" \
    || fail "NBD: the refusal does not name the parent and its size: $(cat "$T/out")"
  # 2^60 bytes (within the remote layer's 1 EiB) and 2^50: more blocks
  # than the index can keep bitmaps for.  63d3432: "meta: open disk:
  # Cannot allocate memory" naming nothing, and 2^50 spent seconds
  # allocating.  Refused at once, naming the parent and the size.
  for size in 1152921504606846976 1125899906842624; do
    kill_pid "$(cat "$T/nbd.pid")"; rm -f "$T/nbd.sock"
    start_nbdkit "$T/nbd.pid" -r -U "$T/nbd.sock" null size=$size
    rc=0; start=$(date +%s)
    timeout 60 "$CORFS" mount --state "$T/st-$size" --stream=off \
      --disk d="$(nbd_uri "$T/nbd.sock")" "$mnt" > "$T/out" 2>&1 || rc=$?
    took=$(( $(date +%s) - start ))
    echo "NBD export of $size bytes: exit $rc after $took s: $(cat "$T/out")"
    if [ $rc -eq 0 ]; then
      cleanup_fn _force_unmount "$T/st-$size" "$mnt"
      fail "NBD: a parent of $size bytes was attached"
    fi
    grep -qF "nbd.sock" "$T/out" && grep -q "$size" "$T/out" \
      || fail "NBD $size: the refusal does not name the parent and its size: $(cat "$T/out")"
    [ $took -le 5 ] || fail "NBD $size: the refusal took $took s"
  done
else
  echo "(nbdkit missing: NBD case skipped)"
fi
echo OK
