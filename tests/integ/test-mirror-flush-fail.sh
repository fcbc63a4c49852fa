#!/usr/bin/env bash
# Mirror mode, a parent flush that fails.  A mirror write marks its blocks
# clean once the parent and the overlay both returned; if the parent's
# flush then fails (the parent crashed, or a connection that held
# unflushed writes dropped), the parent may lack writes that are marked
# clean, and an abort would hand the guest a parent without them.
# Checks, with the parent (nbdkit) killed with SIGKILL between a write and
# its fsync, and restarted:
#  - an fsync'd write before that leaves suspect_bytes 0;
#  - the fsync after the kill reports an error, the log names the disk and
#    the parent, and every block is suspect (suspect_bytes is the size);
#  - a later write with a good flush does not clear them;
#  - `corfs abort` copies them: suspect_bytes and dirty_bytes 0 after it,
#    and the parent file equals everything the guest wrote.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version

size=$((16 * 1048576))
head -c $size /dev/urandom > $T/parent.img
cp $T/parent.img $T/expected.img
start_nbdkit $T/nbd.pid -U $T/sock file $T/parent.img
st=$T/state mnt=$T/mnt
corfs_mount $st $mnt --write-mode=mirror --parent-owned --hold 5 --disk d="$(nbd_uri $T/sock)"
status () { "$CORFS" status --state $st d --json | jq -r "$@"; }

### 1. A good flush.
twin_write $mnt/d $T/expected.img $((1048576 + 100)) 50000 || fail "fsync'd write failed"
[ "$(status .suspect_bytes)" = 0 ] || fail "suspect_bytes $(status .suspect_bytes) after a good flush"

### 2. The parent dies between a write and its fsync.  The file stays
# open from the write to the fsync (a close would flush).
head -c 70000 /dev/urandom > $T/data
off=$((5 * 1048576 + 7))
python3 - $mnt/d $T/data $off $T > $T/fsync.out 2>&1 <<'PY' &
import os, sys, time
disk, data, off, t = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
fd = os.open(disk, os.O_WRONLY)
os.pwrite(fd, open(data, "rb").read(), off)
open(t + "/written", "w").close()
while not os.path.exists(t + "/go"):
    time.sleep(0.05)
try:
    os.fsync(fd)
    print("fsync: ok")
except OSError as e:
    print("fsync: " + e.strerror)
PY
writer=$!
for i in $(seq 100); do [ -e $T/written ] && break; sleep 0.1; done
[ -e $T/written ] || fail "the write before the kill did not return"
dd if=$T/data of=$T/expected.img bs=70000 count=1 seek=$off oflag=seek_bytes conv=notrunc status=none
kill -9 "$(cat $T/nbd.pid)"; wait_gone "$(cat $T/nbd.pid)"; rm -f $T/sock
start_nbdkit $T/nbd.pid -U $T/sock file $T/parent.img
touch $T/go
wait $writer || true
cat $T/fsync.out
grep -q "^fsync: " $T/fsync.out || fail "the writer did not finish: $(cat $T/fsync.out)"
grep -q "^fsync: ok" $T/fsync.out &&
  fail "fsync succeeded although the connection that wrote died before its flush"
[ "$(status .suspect_bytes)" = $size ] ||
  fail "suspect_bytes $(status .suspect_bytes) after a failed parent flush, expected $size"
grep -q "disk d: mirror: flushing the parent nbd+unix:.* failed" $st/corfs.log ||
  fail "the log does not name the disk and parent of the failed flush"

### 3. Good flushes again; the suspect blocks stay suspect.
twin_write $mnt/d $T/expected.img $((off + 1000)) 4096 || fail "write after the failure failed"
[ "$(status .suspect_bytes)" = $size ] ||
  fail "a mirror write cleared suspect blocks: suspect_bytes $(status .suspect_bytes)"
cmp $mnt/d $T/expected.img || fail "the disk differs from what was written"

### 4. Abort copies them.
"$CORFS" abort --state $st d || fail "abort failed"
[ "$(status .suspect_bytes)" = 0 ] || fail "suspect_bytes $(status .suspect_bytes) after abort"
[ "$(status .dirty_bytes)" = 0 ] || fail "dirty_bytes $(status .dirty_bytes) after abort"
corfs_unmount $mnt || fail "unmount failed"
cmp $T/parent.img $T/expected.img || fail "the parent lacks writes after abort"
echo "ok: a failed mirror flush made every block suspect, and abort copied them"
