#!/usr/bin/env bash
# Mirror mode, an overlay write that fails (its filesystem is full), then a
# crash before the next index commit (src/cor/engine.c, mirror_write):
# the failed write's blocks are dropped from the overlay in memory only,
# so after the crash the index still says they are present.  They must
# then hold, at every byte, the old data or the failed write's, never
# zeros the guest did not write (and which abort would copy to the
# parent).  The state directory sits on a small tmpfs filled up just
# before the write:
#  - block A (present, random data) is written from its middle on, and the
#    write runs on into block B (missing, covered whole), whose overlay
#    space cannot be allocated: the O_DIRECT write fails;
#  - the daemon is killed at once, with the file still open (a close
#    commits), well within the 5 s commit interval counted from the fsync
#    just before;
#  - after a remount, A's first half (not written) still reads the old
#    data, and its second half the old or the new data.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version
[ "$(id -u)" = 0 ] || skip "needs root to mount a small tmpfs"

MiB=1048576 bs=65536
img=$T/parent.img
head -c $((8 * MiB)) /dev/urandom > "$img"
cp "$img" "$T/orig.img"
start_nbdkit "$T/nbd.pid" -U "$T/sock" file "$img"

small=$T/small st=$T/small/state mnt=$T/mnt
mkdir -p "$small"
mount -t tmpfs -o size=24M tmpfs "$small" || skip "cannot mount a tmpfs here"
cleanup_fn umount -l "$small"

corfs_mount "$st" "$mnt" --write-mode=mirror --parent-owned --hold 5 --disk d="$(nbd_uri "$T/sock")"
A=$((2 * MiB))                       # block A; B is the next one
dd if="$mnt/d" of=/dev/null bs=$bs skip=$((A / bs)) count=1 iflag=direct status=none \
  || fail "reading block A failed"
present=$("$CORFS" status --state "$st" d --json | jq -r .present_bytes)
[ "$present" = $bs ] || fail "present_bytes $present after reading block A, expected $bs"

# Commit now (the next periodic commit is then 5 s away), fill the
# filesystem, and write A's second half and all of B at once.
sync "$mnt/d"
dd if=/dev/zero of="$small/fill" bs=1M status=none 2>/dev/null || true
head -c $((bs / 2 + bs)) /dev/urandom > "$T/new"
# The file stays open until the daemon is dead: a close would commit.
python3 - "$mnt/d" "$T/new" $((A + bs / 2)) "$T" > "$T/write.out" 2>&1 <<'PY' &
import mmap, os, sys, time
disk, new, off, t = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
data = open(new, "rb").read()
buf = mmap.mmap(-1, len(data))
buf.write(data)
fd = os.open(disk, os.O_WRONLY | os.O_DIRECT)
try:
    os.pwrite(fd, buf, off)
    print("write: ok")
except OSError as e:
    print("write: " + e.strerror)
open(t + "/written", "w").close()
while not os.path.exists(t + "/killed"):
    time.sleep(0.05)
try:
    os.close(fd)
except OSError:
    pass
PY
writer=$!
for i in $(seq 100); do [ -e "$T/written" ] && break; sleep 0.1; done
pid=$(daemon_pid "$st")
kill -9 "$pid"
wait_gone "$pid"
touch "$T/killed"
wait $writer || true
echo "write into a full overlay: $(cat "$T/write.out")"
fusermount3 -u "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
grep -q "^write: " "$T/write.out" || fail "the writer did not finish: $(cat "$T/write.out")"
grep -q "^write: ok" "$T/write.out" && fail "the write into a full overlay succeeded: the test proves nothing"
grep -q "mirror: overlay write at offset" "$st/corfs.log" || fail "the overlay write did not fail"
rm -f "$small/fill"

corfs_mount "$st" "$mnt"
dd if="$mnt/d" of="$T/a" bs=$bs skip=$((A / bs)) count=1 iflag=direct status=none || fail "reading block A after the crash failed"
python3 - "$T/a" "$T/orig.img" "$T/new" $A $bs <<'EOF' || fail "block A after the crash is neither old nor new data"
import sys
a = open(sys.argv[1], "rb").read()
old = open(sys.argv[2], "rb").read()
new = open(sys.argv[3], "rb").read()
at, bs = int(sys.argv[4]), int(sys.argv[5])
half = bs // 2
if a[:half] != old[at:at + half]:
    sys.exit("the unwritten first half of block A changed (%s)" %
             ("zeros" if a[:half] == bytes(half) else "other data"))
for i in range(half, bs):
    if a[i] != old[at + i] and a[i] != new[i - half]:
        sys.exit("byte %d of block A is neither old nor new" % i)
print("block A: first half old, second half %s" %
      ("new" if a[half:] == new[:half] else "old" if a[half:] == old[at + half:at + bs] else "mixed"))
EOF
corfs_unmount "$mnt" || fail "unmount failed"
echo OK
