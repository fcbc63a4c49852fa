#!/usr/bin/env bash
# Stale reads across activation (no QEMU): the destination reads a range
# through the page cache while incoming (a buffered fd kept open, and an
# mmap of another range); the source then changes both ranges in the
# parent; after `activate --epoch 7 --force` (the parent is still writable
# here) the same fd, re-reading the range, and the same mapping, must see
# the NEW data: activation drops the kernel's cached pages (docs/design.md
# "Disk states", step 4).  Before activation a re-read may still show the
# old data (reported, not checked).  A fresh buffered read after activation
# must be new too.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version
requires python3 --version

MiB=1048576
size=$((16 * MiB))
img=$T/source.img
head -c $size /dev/urandom > "$img"
sock=$T/nbd.sock
start_nbdkit "$T/nbd.pid" -U "$sock" file "$img"            # writable: the source
st=$T/state mnt=$T/mnt
corfs_mount "$st" "$mnt" --incoming --stream=on --disk d="$(nbd_uri "$sock")"
disk=$mnt/d
[ "$(jq -r .owner.state <("$CORFS" status --state "$st" d --json))" = incoming ] \
  || fail "the disk is not incoming"

offA=$((4 * MiB)) offB=$((9 * MiB + 65536)) len=$MiB   # A: read(), B: mmap
sha () { dd if="$1" bs=64K iflag=skip_bytes,count_bytes skip="$2" count=$len status=none | sha256sum | cut -d' ' -f1; }
oldA=$(sha "$img" $offA) oldB=$(sha "$img" $offB)

# The reader: phase 1 reads A (pread on a buffered fd) and B (mmap) and
# keeps both; then, on each signal file, reads them again.  Every wait is
# bounded (60 s).
cat > "$T/reader.py" <<'PY'
import hashlib, mmap, os, sys, time
path, d, offA, offB, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def wait_for(name):
    for _ in range(1200):
        if os.path.exists(os.path.join(d, name)):
            return
        time.sleep(0.05)
    sys.exit("reader: timed out waiting for " + name)
def report(phase):
    a = os.pread(fd, n, offA)
    b = m[offB:offB + n]
    assert len(a) == n and len(b) == n, (len(a), len(b))
    tmp = os.path.join(d, phase + ".tmp")
    with open(tmp, "w") as f:
        f.write(hashlib.sha256(a).hexdigest() + " " + hashlib.sha256(b).hexdigest() + "\n")
    os.rename(tmp, os.path.join(d, phase))
fd = os.open(path, os.O_RDONLY)            # buffered: the page cache is in play
m = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
report("p1")
wait_for("go2"); report("p2")
wait_for("go3"); report("p3")
m.close(); os.close(fd)
PY
sig=$T/sig; mkdir -p "$sig"
python3 "$T/reader.py" "$disk" "$sig" $offA $offB $len > "$T/reader.out" 2>&1 &
rpid=$!
cleanup_fn kill_pid $rpid
# wait_file NAME: the reader wrote it (at most 60 s), or died.
wait_file () {
  local i
  for i in $(seq 600); do
    [ -f "$sig/$1" ] && return 0
    alive $rpid || { cat "$T/reader.out"; fail "the reader died before $1"; }
    sleep 0.1
  done
  fail "timed out waiting for the reader's $1"
}
wait_file p1
read -r a b < "$sig/p1"
[ "$a" = "$oldA" ] || fail "phase 1: read() of A differs from the source"
[ "$b" = "$oldB" ] || fail "phase 1: mmap of B differs from the source"

# The source changes both ranges (and a byte at each end of each).
for off in $offA $offB; do
  head -c $len /dev/urandom > "$T/new"
  dd if="$T/new" of="$img" bs=$len count=1 seek=$off oflag=seek_bytes conv=notrunc,fsync status=none
done
newA=$(sha "$img" $offA) newB=$(sha "$img" $offB)
[ "$newA" != "$oldA" ] && [ "$newB" != "$oldB" ] || fail "the source change did not change the image"

touch "$sig/go2"; wait_file p2
read -r a b < "$sig/p2"
echo "before activation: A reads $( [ "$a" = "$newA" ] && echo new || { [ "$a" = "$oldA" ] && echo old "(page cache)"; } || echo other), B reads $( [ "$b" = "$newB" ] && echo new || { [ "$b" = "$oldB" ] && echo old "(page cache)"; } || echo other)"

"$CORFS" activate --state "$st" d --epoch 7 --force || fail "activate --epoch 7 --force failed"
js=$("$CORFS" status --state "$st" d --json)
[ "$(jq -r '.owner.state + "/" + (.owner.epoch|tostring)' <<<"$js")" = active/7 ] \
  || fail "owner after activate: $(jq -c .owner <<<"$js"), expected active/7"

touch "$sig/go3"; wait_file p3
read -r a b < "$sig/p3"
bad=""
[ "$a" = "$newA" ] || bad+="read() on the fd opened before activation returns $( [ "$a" = "$oldA" ] && echo the OLD data || echo data that is neither old nor new) for A; "
[ "$b" = "$newB" ] || bad+="the mapping made before activation shows $( [ "$b" = "$oldB" ] && echo the OLD data || echo data that is neither old nor new) for B; "
wait $rpid || { cat "$T/reader.out"; fail "the reader failed"; }

# Fresh reads after activation: buffered and O_DIRECT.
[ "$(sha "$disk" $offA)" = "$newA" ] || bad+="a fresh buffered read of A after activation is stale; "
[ "$(dd if="$disk" bs=64K iflag=direct,skip_bytes,count_bytes skip=$offB count=$len status=none | sha256sum | cut -d' ' -f1)" = "$newB" ] \
  || bad+="an O_DIRECT read of B after activation is stale; "
cmp "$disk" "$img" || bad+="the whole disk differs from the source after activation; "
[ -z "$bad" ] || fail "stale data after activation: $bad"
corfs_unmount "$mnt" || fail "unmount failed"
echo OK
