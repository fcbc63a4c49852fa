#!/usr/bin/env bash
# The source of a migration (docs/design.md "Disk states", rule 10): an active
# disk (parent served read-only) takes fsync'd writes; `handoff --epoch 3`
# makes it read-only: writes (also on an fd opened read-write before the
# hand-off), fallocate and O_RDWR/O_WRONLY opens fail with EROFS, reads
# still work; status says handed-off epoch 3.  The same handoff again is a
# no-op (exit 0); handoff --epoch 2 is stale; reclaim --epoch 3 (not above
# the hand-off's) and activate are refused; reclaim --epoch 4 makes it
# writable.  State and epoch survive a clean remount, a handed-off disk
# stays handed-off and read-only across a remount, and a hand-off is
# durable (it flushes): after a kill -9 right after it, unsynced writes
# made before it are there and the disk is still handed-off.  A missing
# or non-positive --epoch is a CLI error (exit 2).
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version
requires python3 --version

MiB=1048576
size=$((16 * MiB))
img=$T/parent.img exp=$T/expected.img
head -c $size /dev/urandom > "$img"
cp "$img" "$exp"
sock=$T/nbd.sock
start_nbdkit "$T/nbd.pid" -r -U "$sock" file "$img"
st=$T/state mnt=$T/mnt
corfs_mount "$st" "$mnt" --disk d="$(nbd_uri "$sock")"
disk=$mnt/d

problems=()
soft () { echo "FAIL (continuing): $*" >&2; problems+=("$*"); }
js () {
  "$CORFS" status --state "$st" d --json | jq -r "(if type == \"array\" then .[0] else . end) | $1"
}
owner () { js '.owner.state + "/" + (.owner.epoch|tostring)'; }
# wr OFF LEN [SYNC]: LEN random bytes at OFF, to the disk and the expected
# image; SYNC "fsync" (default) or "nosync".
wr () {
  local conv=notrunc,fsync
  [ "${3:-fsync}" = nosync ] && conv=notrunc
  head -c "$2" /dev/urandom > "$T/data"
  dd if="$T/data" of="$disk" bs="$2" count=1 seek="$1" oflag=seek_bytes conv=$conv status=none \
    || fail "write of $2 bytes at $1 failed ($(owner))"
  dd if="$T/data" of="$exp" bs="$2" count=1 seek="$1" oflag=seek_bytes conv=notrunc status=none
}
# expect_erofs WHAT CMD...: CMD fails with "Read-only file system".
expect_erofs () {
  local what=$1 rc=0; shift
  "$@" > "$T/out" 2>&1 || rc=$?
  if [ $rc -eq 0 ]; then soft "$what succeeded on a handed-off disk"
  elif ! grep -q "Read-only file system" "$T/out"; then
    soft "$what failed, but not with EROFS: $(cat "$T/out")"
  fi
}
# expect_cmd_fail WHAT REGEX CMD...: CMD exits non-zero saying REGEX.
expect_cmd_fail () {
  local what=$1 re=$2 rc=0; shift 2
  "$@" > "$T/out" 2>&1 || rc=$?
  echo "$what: exit $rc: $(cat "$T/out")"
  [ $rc -ne 0 ] || { soft "$what succeeded"; return; }
  grep -qiE "$re" "$T/out" || soft "$what: message does not match /$re/: $(cat "$T/out")"
}
# read_only_checks WHEN: everything a handed-off disk refuses, and reads.
read_only_checks () {
  head -c 65536 /dev/urandom > "$T/w"
  expect_erofs "$1: buffered write" dd if="$T/w" of="$disk" bs=64K seek=3 conv=notrunc status=none
  expect_erofs "$1: O_DIRECT write" dd if="$T/w" of="$disk" bs=64K seek=3 oflag=direct conv=notrunc status=none
  expect_erofs "$1: fallocate --punch-hole" fallocate -p -o 65536 -l 65536 "$disk"
  python3 - "$disk" > "$T/py.out" 2>&1 <<'PY' || soft "$1: $(cat "$T/py.out")"
import errno, os, sys
for name, flags in (("O_RDWR", os.O_RDWR), ("O_WRONLY", os.O_WRONLY)):
    try:
        fd = os.open(sys.argv[1], flags)
        os.close(fd)
        sys.exit("open %s succeeded on a handed-off disk" % name)
    except OSError as e:
        if e.errno != errno.EROFS:
            sys.exit("open %s failed with %s, expected EROFS" % (name, errno.errorcode.get(e.errno)))
fd = os.open(sys.argv[1], os.O_RDONLY)
assert len(os.pread(fd, 65536, 5 * 1048576)) == 65536
os.close(fd)
PY
  cmp "$disk" "$exp" || soft "$1: the handed-off disk does not read as the data written before the hand-off"
  cmp <(dd if="$disk" bs=1M iflag=direct status=none) "$exp" \
    || soft "$1: O_DIRECT read of the handed-off disk differs"
}

# CLI: the epoch is always given, a positive integer.
for cmd in handoff reclaim activate; do
  rc=0; "$CORFS" $cmd --state "$st" d > "$T/out" 2>&1 || rc=$?
  [ $rc -eq 2 ] || soft "$cmd without --epoch: exit $rc, expected 2: $(cat "$T/out")"
  grep -qi epoch "$T/out" || soft "$cmd without --epoch: message does not mention the epoch"
  for bad in 0 -3 x; do
    rc=0; "$CORFS" $cmd --state "$st" d --epoch $bad > "$T/out" 2>&1 || rc=$?
    [ $rc -eq 2 ] || soft "$cmd --epoch $bad: exit $rc, expected 2: $(cat "$T/out")"
  done
done
[ "$(owner)" = active/0 ] || fail "a new disk is $(owner), expected active/0"

# Active: fsync'd writes, and a writer with an fd open across the hand-off.
wr 0 65536
wr $((2 * MiB + 5)) 100000
wr $((7 * MiB)) 4096
wr $((size - 65536)) 65536
cat > "$T/writer.py" <<'PY'
import errno, os, sys, time
path, d = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_RDWR)
os.pwrite(fd, b"before" * 1000, 9 * 1048576); os.fsync(fd)
open(os.path.join(d, "opened"), "w").close()
for _ in range(1200):
    if os.path.exists(os.path.join(d, "go")): break
    time.sleep(0.05)
else:
    sys.exit("writer: timed out")
try:
    os.pwrite(fd, b"after!" * 1000, 9 * 1048576)
    print("pwrite after hand-off: succeeded")
except OSError as e:
    print("pwrite after hand-off: " + errno.errorcode.get(e.errno, str(e.errno)))
os.close(fd)
PY
python3 - "$exp" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR); os.pwrite(fd, b"before" * 1000, 9 * 1048576); os.close(fd)
PY
sig=$T/sig; mkdir -p "$sig"
python3 "$T/writer.py" "$disk" "$sig" > "$T/writer.out" 2>&1 &
wpid=$!
cleanup_fn kill_pid $wpid
for i in $(seq 300); do [ -f "$sig/opened" ] || ! alive $wpid && break; sleep 0.1; done
[ -f "$sig/opened" ] || { cat "$T/writer.out"; fail "the writer did not open the disk"; }

"$CORFS" handoff --state "$st" d --epoch 3 || fail "handoff --epoch 3 failed"
[ "$(owner)" = handed-off/3 ] || soft "owner after handoff --epoch 3: $(owner)"
touch "$sig/go"
wait $wpid || { cat "$T/writer.out"; fail "the writer failed"; }
grep -q "pwrite after hand-off: EROFS" "$T/writer.out" \
  || soft "a write on an fd opened before the hand-off: $(cat "$T/writer.out"), expected EROFS"
read_only_checks "after handoff 3"

"$CORFS" handoff --state "$st" d --epoch 3 || soft "repeated handoff --epoch 3: not a no-op (exit $?)"
expect_cmd_fail "handoff --epoch 2 after handoff 3" stale "$CORFS" handoff --state "$st" d --epoch 2
expect_cmd_fail "reclaim --epoch 3 after handoff 3" "stale|above" "$CORFS" reclaim --state "$st" d --epoch 3
expect_cmd_fail "reclaim --epoch 2 after handoff 3" stale "$CORFS" reclaim --state "$st" d --epoch 2
expect_cmd_fail "activate --epoch 9 of a handed-off disk" "handed-off|incoming" "$CORFS" activate --state "$st" d --epoch 9 --force
[ "$(owner)" = handed-off/3 ] || soft "owner after refused transitions: $(owner), expected handed-off/3"
read_only_checks "after refused transitions"

"$CORFS" reclaim --state "$st" d --epoch 4 || fail "reclaim --epoch 4 failed"
[ "$(owner)" = active/4 ] || soft "owner after reclaim --epoch 4: $(owner)"
"$CORFS" reclaim --state "$st" d --epoch 4 || soft "repeated reclaim --epoch 4: not a no-op"
expect_cmd_fail "handoff --epoch 4 (the reclaim's epoch)" stale "$CORFS" handoff --state "$st" d --epoch 4
wr $((3 * MiB)) 65536
wr $((12 * MiB + 999)) 5000
python3 - "$disk" <<'PY' || soft "O_RDWR open/pwrite/fsync after reclaim failed"
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR); os.pwrite(fd, b"R" * 512, 512); os.fsync(fd); os.close(fd)
PY
python3 - "$exp" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR); os.pwrite(fd, b"R" * 512, 512); os.close(fd)
PY
cmp "$disk" "$exp" || soft "disk differs from the expected image after reclaim and writes"

# Clean remount: active/4 and the data.
remount () {
  local pid; pid=$(daemon_pid "$st")
  corfs_unmount "$mnt" || fail "unmount failed"
  wait_gone "$pid"
  corfs_mount "$st" "$mnt"
}
remount
[ "$(owner)" = active/4 ] || soft "owner after remount: $(owner), expected active/4"
cmp "$disk" "$exp" || soft "data written before/after the hand-off lost over a remount"

# A handed-off disk stays handed-off (and read-only) over a remount.
"$CORFS" handoff --state "$st" d --epoch 5 || fail "handoff --epoch 5 failed"
remount
[ "$(owner)" = handed-off/5 ] || soft "owner after handoff 5 and a remount: $(owner), expected handed-off/5"
read_only_checks "after handoff 5 and a remount"
expect_cmd_fail "reclaim --epoch 5 after the remount" "stale|above" "$CORFS" reclaim --state "$st" d --epoch 5
"$CORFS" reclaim --state "$st" d --epoch 6 || fail "reclaim --epoch 6 failed"
[ "$(owner)" = active/6 ] || soft "owner after reclaim --epoch 6: $(owner)"

# The hand-off flushes: unsynced writes, handoff, kill -9, remount.
wr $((6 * MiB + 100)) 200000 nosync
wr $((15 * MiB)) 65536 nosync
"$CORFS" handoff --state "$st" d --epoch 7 || fail "handoff --epoch 7 failed"
pid=$(daemon_pid "$st")
crash_unmount "$st" "$mnt"
corfs_mount "$st" "$mnt"
[ "$(owner)" = handed-off/7 ] || soft "owner after handoff 7 and kill -9: $(owner), expected handed-off/7"
read_only_checks "after handoff 7 and kill -9"
pid=$(daemon_pid "$st")
corfs_unmount "$mnt" || fail "final unmount failed"
wait_gone "$pid"

if [ ${#problems[@]} -ne 0 ]; then
  printf 'FAILED CHECK: %s\n' "${problems[@]}" >&2
  fail "${#problems[@]} check(s) failed"
fi
echo OK
