#!/usr/bin/env bash
# The destination of a migration (docs/design.md "Disk states", rule 10).
#  - `mount --incoming --stream=on`: owner state "incoming" (epoch 0), no
#    streaming; reads come from the parent as it is now, even after the
#    source changed it, and nothing is kept (present_bytes stays 0);
#    open O_RDWR, fsync, fdatasync and close succeed; write (buffered and
#    O_DIRECT), pwrite and fallocate (punch, zero) fail with EROFS;
#    `corfs stream` is refused.
#  - `activate` without --force is refused (with a message) while the NBD
#    export is writable; `--epoch 0`, a missing or a malformed --epoch are
#    CLI errors (exit 2).
#  - the source stops and the parent is served read-only (nbdkit restarted
#    with -r on the same socket): `activate --epoch 1` succeeds right away,
#    with no guest read in between (the check must ask the new server);
#    state active epoch 1, the streamer starts, writes succeed; the same
#    activate again is a no-op (exit 0); `stream --wait` completes and the
#    disk equals the source's final image plus the destination's writes,
#    and the parent image is untouched by them.
#  - epoch rules afterwards: activate of an active disk with a new epoch,
#    handoff with the current epoch (stale), reclaim of an active disk
#    fail; after `handoff --epoch 2`, activate --epoch 1/2 are refused.
#  - fencing: a disk that read the parent while it was served read-only
#    must not activate without --force once the parent is served writable
#    again (the check must not trust a dead connection's flags).
# Failures of single checks are collected (so one corfs bug does not hide
# the rest) and fail the test at the end.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version
requires python3 --version

MiB=1048576
size=$((16 * MiB))
img=$T/source.img exp=$T/expected.img
head -c $size /dev/urandom > "$img"
sock=$T/nbd.sock
url=$(nbd_uri "$sock")
start_nbdkit "$T/nbd.pid" -U "$sock" file "$img"          # writable: the source writes it

problems=()
soft () { echo "FAIL (continuing): $*" >&2; problems+=("$*"); }

# js STATE FILTER: one field of the disk's status.
js () {
  "$CORFS" status --state "$1" d --json | jq -r "(if type == \"array\" then .[0] else . end) | $2"
}
# src_write OFF LEN: the source changes its disk (LEN random bytes at OFF).
src_write () {
  head -c "$2" /dev/urandom | dd of="$img" bs="$2" count=1 seek="$1" iflag=fullblock oflag=seek_bytes \
    conv=notrunc status=none
}
# direct_cmp MNTFILE IMAGE WHAT: O_DIRECT read of the whole disk equals IMAGE
# (no page cache in between: what the daemon answers).
direct_cmp () {
  cmp <(dd if="$1" bs=1M iflag=direct status=none) "$2" || soft "$3"
}
# expect_erofs WHAT CMD...: CMD fails with "Read-only file system".
expect_erofs () {
  local what=$1 rc=0; shift
  "$@" > "$T/out" 2>&1 || rc=$?
  if [ $rc -eq 0 ]; then soft "$what succeeded on a read-only disk"
  elif ! grep -q "Read-only file system" "$T/out"; then
    soft "$what failed, but not with EROFS: $(cat "$T/out")"
  fi
}
# stop_parent: the source stops: nbdkit goes (TERM, then KILL), the socket too.
stop_parent () {
  local pid; pid=$(cat "$T/nbd.pid")
  kill_pid "$pid"; wait_gone "$pid"
  rm -f "$sock"
}

st=$T/state mnt=$T/mnt
corfs_mount "$st" "$mnt" --incoming --stream=on --disk d="$url"
disk=$mnt/d
[ "$(stat -c %s "$disk")" -eq $size ] || fail "incoming disk size $(stat -c %s "$disk"), expected $size"
[ "$(js "$st" .owner.state)" = incoming ] || fail "owner state $(js "$st" .owner.state), expected incoming"
[ "$(js "$st" .owner.epoch)" = 0 ] || soft "incoming epoch $(js "$st" .owner.epoch), expected 0"
sleep 1                                  # a streamer that would start, has started by now
s=$(js "$st" .stream.state)
[ "$s" != running ] && [ "$s" != complete ] || soft "stream state '$s' while incoming (--stream=on): nothing may be streamed"
rc=0; "$CORFS" stream --state "$st" d > "$T/out" 2>&1 || rc=$?
[ $rc -ne 0 ] || soft "corfs stream was accepted on an incoming disk"
echo "stream while incoming: exit $rc: $(cat "$T/out")"

# Reads come from the parent as it is now; nothing is kept.
direct_cmp "$disk" "$img" "incoming read differs from the source image"
cmp <(dd if="$disk" bs=64K skip=47 count=3 status=none) \
    <(dd if="$img" bs=64K skip=47 count=3 status=none) || soft "buffered incoming read differs"
[ "$(js "$st" .present_bytes)" = 0 ] || soft "present_bytes $(js "$st" .present_bytes) after incoming reads, expected 0"
src_write $((3 * MiB)) $MiB
src_write $((10 * MiB + 12345)) 7000
src_write $((size - 100)) 100
direct_cmp "$disk" "$img" "incoming read after the source changed does not show the new data"
[ "$(js "$st" .present_bytes)" = 0 ] || soft "present_bytes $(js "$st" .present_bytes) after re-reads, expected 0"
# (Informational: a buffered re-read may be answered by the page cache,
# which activation drops.)
if cmp -s <(dd if="$disk" bs=64K skip=47 count=3 status=none) <(dd if="$img" bs=64K skip=47 count=3 status=none)
then echo "note: buffered re-read while incoming: current"; else echo "note: buffered re-read while incoming: page cache"; fi

# Writes fail with EROFS; open O_RDWR, fsync, close succeed.
head -c 65536 /dev/urandom > "$T/w"
expect_erofs "buffered write while incoming" dd if="$T/w" of="$disk" bs=64K seek=2 conv=notrunc status=none
expect_erofs "O_DIRECT write while incoming" dd if="$T/w" of="$disk" bs=64K seek=2 oflag=direct conv=notrunc status=none
expect_erofs "fallocate --punch-hole while incoming" fallocate -p -o 65536 -l 65536 "$disk"
expect_erofs "fallocate --zero-range while incoming" fallocate -z -o 65536 -l 65536 "$disk"
python3 - "$disk" > "$T/py.out" 2>&1 <<'PY' || soft "O_RDWR/fsync while incoming: $(cat "$T/py.out")"
import errno, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)           # must succeed (QEMU reopens read-write)
try:
    os.pwrite(fd, b"x" * 4096, 8192)
    sys.exit("pwrite succeeded while incoming")
except OSError as e:
    if e.errno != errno.EROFS:
        sys.exit("pwrite failed with %s, expected EROFS" % errno.errorcode.get(e.errno))
os.fsync(fd)
os.fdatasync(fd)
assert len(os.pread(fd, 4096, 0)) == 4096
os.close(fd)
PY
direct_cmp "$disk" "$img" "incoming disk changed by refused writes"
[ "$(js "$st" .present_bytes)" = 0 ] || soft "present_bytes $(js "$st" .present_bytes), expected 0"
[ "$(js "$st" .dirty_bytes)" = 0 ] || soft "dirty_bytes $(js "$st" .dirty_bytes) while incoming, expected 0"

# CLI: epochs are positive integers, always given.
for bad in 0 -1 abc 1x ""; do
  rc=0; "$CORFS" activate --state "$st" d --epoch "$bad" > "$T/out" 2>&1 || rc=$?
  [ $rc -eq 2 ] || soft "activate --epoch '$bad': exit $rc, expected 2 ($(cat "$T/out"))"
done
rc=0; "$CORFS" activate --state "$st" d > "$T/out" 2>&1 || rc=$?
[ $rc -eq 2 ] || soft "activate without --epoch: exit $rc, expected 2"
grep -qi epoch "$T/out" || soft "activate without --epoch: message does not mention the epoch: $(cat "$T/out")"

# Refused while the parent is writable (the source may still write it).
rc=0; "$CORFS" activate --state "$st" d --epoch 1 > "$T/out" 2>&1 || rc=$?
echo "activate with a writable parent: exit $rc: $(cat "$T/out")"
[ $rc -ne 0 ] || fail "activate succeeded while the NBD export is writable (no --force)"
grep -qi writable "$T/out" || soft "the refusal does not say the parent is writable: $(cat "$T/out")"
[ "$(js "$st" .owner.state)/$(js "$st" .owner.epoch)" = incoming/0 ] \
  || soft "a refused activate changed the owner: $(js "$st" ".owner|tostring")"

# The source's last writes, then it stops; the parent is served read-only.
src_write $((5 * MiB + 4096)) 300000
stop_parent
start_nbdkit "$T/nbd.pid" -r -U "$sock" file "$img"
cp "$img" "$exp"
rc=0; "$CORFS" activate --state "$st" d --epoch 1 > "$T/out" 2>&1 || rc=$?
if [ $rc -ne 0 ]; then
  soft "activate --epoch 1 right after the parent was re-served read-only failed (exit $rc): $(cat "$T/out")"
  # Work around to exercise the rest: a read makes corfs reconnect.
  dd if="$disk" of=/dev/null bs=64K count=1 iflag=direct status=none || true
  "$CORFS" activate --state "$st" d --epoch 1 || fail "activate --epoch 1 failed even after a reconnect"
fi
[ "$(js "$st" .owner.state)" = active ] || fail "owner state $(js "$st" .owner.state) after activate, expected active"
[ "$(js "$st" .owner.epoch)" = 1 ] || soft "epoch $(js "$st" .owner.epoch) after activate --epoch 1"
s=$(js "$st" .stream.state)
case $s in running|complete) ;; *) soft "stream state '$s' after activate with --stream=on, expected running or complete";; esac

# Writes succeed now (fsync'd); the parent does not see them.
sum=$(sha256sum < "$img")
wr () { twin_write "$disk" "$exp" "$1" "$2" ${3:+"$3"} || soft "write of $2 bytes at $1 after activate failed"; }
wr 0 65536
wr $((3 * MiB - 7)) 20000
wr $((11 * MiB)) 131072 direct
wr $((size - 3)) 3
python3 - "$disk" <<'PY' || soft "O_RDWR pwrite/fsync after activate failed"
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
os.pwrite(fd, b"activated!" * 100, 2 * 1048576 + 17)
os.fsync(fd); os.close(fd)
PY
python3 - "$exp" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
os.pwrite(fd, b"activated!" * 100, 2 * 1048576 + 17); os.close(fd)
PY

# The same activate again: a no-op.  Other transitions: refused.
rc=0; "$CORFS" activate --state "$st" d --epoch 1 > "$T/out" 2>&1 || rc=$?
[ $rc -eq 0 ] || soft "repeated activate --epoch 1: exit $rc, expected 0 (no-op): $(cat "$T/out")"
rc=0; "$CORFS" activate --state "$st" d --epoch 1 --force > "$T/out" 2>&1 || rc=$?
[ $rc -eq 0 ] || soft "repeated activate --epoch 1 --force: exit $rc, expected 0 (no-op)"
rc=0; "$CORFS" activate --state "$st" d --epoch 2 > "$T/out" 2>&1 || rc=$?
[ $rc -ne 0 ] || soft "activate --epoch 2 of an active disk succeeded"
echo "activate --epoch 2 of an active disk: exit $rc: $(cat "$T/out")"
rc=0; "$CORFS" handoff --state "$st" d --epoch 1 > "$T/out" 2>&1 || rc=$?
[ $rc -ne 0 ] || soft "handoff --epoch 1 (the epoch the disk was activated with) succeeded"
grep -qi stale "$T/out" || soft "handoff --epoch 1 after activate 1: no 'stale' in: $(cat "$T/out")"
rc=0; "$CORFS" reclaim --state "$st" d --epoch 5 > "$T/out" 2>&1 || rc=$?
[ $rc -ne 0 ] || soft "reclaim of an active disk succeeded"
[ "$(js "$st" .owner.state)/$(js "$st" .owner.epoch)" = active/1 ] \
  || soft "owner after refused transitions: $(js "$st" ".owner|tostring"), expected active/1"

# Streaming completes: the disk is the source's final image plus our writes.
timeout 60 "$CORFS" stream --state "$st" d --wait > /dev/null || soft "stream --wait failed"
[ "$(js "$st" .present_bytes)" = $size ] || soft "present_bytes $(js "$st" .present_bytes) after stream --wait, expected $size"
[ "$(js "$st" .stream.state)" = complete ] || soft "stream state $(js "$st" .stream.state) after stream --wait"
cmp "$disk" "$exp" || soft "buffered read of the activated disk differs from the source image plus the destination's writes"
direct_cmp "$disk" "$exp" "O_DIRECT read of the activated disk differs from the expected image"
[ "$(sha256sum < "$img")" = "$sum" ] || soft "the destination's writes reached the parent image"

# A stale activate after a later hand-off.
"$CORFS" handoff --state "$st" d --epoch 2 || soft "handoff --epoch 2 failed"
for e in 1 2; do
  rc=0; "$CORFS" activate --state "$st" d --epoch $e > "$T/out" 2>&1 || rc=$?
  [ $rc -ne 0 ] || soft "activate --epoch $e after handoff --epoch 2 succeeded"
  echo "activate --epoch $e after handoff 2: exit $rc: $(cat "$T/out")"
done
grep -qi stale <("$CORFS" activate --state "$st" d --epoch 1 2>&1) \
  || soft "activate --epoch 1 after handoff --epoch 2 does not say stale"
[ "$(js "$st" .owner.state)/$(js "$st" .owner.epoch)" = handed-off/2 ] \
  || soft "owner $(js "$st" ".owner|tostring") after the stale activates, expected handed-off/2"
pid=$(daemon_pid "$st")
corfs_unmount "$mnt" || fail "unmount failed"
wait_gone "$pid"

# Fencing: an incoming disk connected while the parent was served
# read-only; then the parent is served writable again (a source restarted
# by mistake).  activate without --force must be refused.
st2=$T/state2
corfs_mount "$st2" "$mnt" --incoming --disk d="$url"
direct_cmp "$disk" "$img" "incoming read (state2) differs from the source image"
stop_parent
start_nbdkit "$T/nbd.pid" -U "$sock" file "$img"           # writable again
rc=0; "$CORFS" activate --state "$st2" d --epoch 1 > "$T/out" 2>&1 || rc=$?
[ $rc -ne 0 ] || soft "activate (no --force) succeeded although the parent is served writable again (nbdkit restarted without -r): the writability check used the old connection"
echo "activate after the parent became writable: exit $rc: $(cat "$T/out")"
pid=$(daemon_pid "$st2")
corfs_unmount "$mnt" || fail "unmount (state2) failed"
wait_gone "$pid"

if [ ${#problems[@]} -ne 0 ]; then
  printf 'FAILED CHECK: %s\n' "${problems[@]}" >&2
  fail "${#problems[@]} check(s) failed"
fi
echo OK
