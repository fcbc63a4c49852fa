#!/usr/bin/env bash
# Crashes around the migration switch-over (docs/design.md "Disk states", rule 10).
#  A. incoming -> activate --epoch 2 -> fsync'd writes -> kill -9 ->
#     remount: active, epoch 2, every acknowledged write there, the rest
#     reads as the parent; writes work.  Mounting the active disk with
#     --incoming (with or without --disk) is refused with a message, and
#     leaves no mount and no daemon.
#  B. kill -9 while incoming (after reads, an O_RDWR open and an fsync);
#     the source changes its image; remount without --incoming, then with
#     --incoming --disk: still incoming (epoch 0), nothing present, reads
#     show the source's current data, writes fail with EROFS; activation
#     (--force: the parent is writable) still works afterwards.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version
requires python3 --version

MiB=1048576
size=$((16 * MiB))
problems=()
soft () { echo "FAIL (continuing): $*" >&2; problems+=("$*"); }
# js STATE FILTER
js () {
  "$CORFS" status --state "$1" d --json | jq -r "(if type == \"array\" then .[0] else . end) | $2"
}
owner () { js "$1" '.owner.state + "/" + (.owner.epoch|tostring)'; }
direct_read () { dd if="$1" bs=1M iflag=direct status=none; }
mnt=$T/mnt; mkdir -p "$mnt"; mnt=$(realpath "$mnt")
disk=$mnt/d
# expect_mount_refused WHAT REGEX STATE ARGS...: `corfs mount` fails,
# says REGEX, leaves no FUSE mount and no daemon.
expect_mount_refused () {
  local what=$1 re=$2 state=$3 rc=0 i; shift 3
  "$CORFS" mount --state "$state" --stream=off "$@" "$mnt" > "$T/out" 2>&1 || rc=$?
  echo "$what: exit $rc: $(cat "$T/out")"
  if [ $rc -eq 0 ]; then
    soft "$what: the mount succeeded (owner $(owner "$state"))"
    cleanup_fn _force_unmount "$state" "$mnt"
    local pid; pid=$(daemon_pid "$state")
    corfs_unmount "$mnt"; wait_gone "$pid"
    return
  fi
  grep -qiE "$re" "$T/out" || soft "$what: the refusal does not match /$re/: $(cat "$T/out")"
  ! is_mounted "$mnt" || { fusermount3 -u "$mnt"; soft "$what: a refused mount left $mnt mounted"; }
  for i in $(seq 50); do flock -n "$state/corfs.pid" true 2>/dev/null && break; sleep 0.1; done
  flock -n "$state/corfs.pid" true || soft "$what: a daemon still holds $state after the refusal"
}

# ---- A: crash after activation ----
imgA=$T/a.img expA=$T/a.expected
head -c $size /dev/urandom > "$imgA"
cp "$imgA" "$expA"
start_nbdkit "$T/a.pid" -r -U "$T/a.sock" file "$imgA"
urlA=$(nbd_uri "$T/a.sock")
stA=$T/stateA
corfs_mount "$stA" "$mnt" --incoming --stream=on --disk d="$urlA"
[ "$(owner "$stA")" = incoming/0 ] || fail "A: owner $(owner "$stA"), expected incoming/0"
cmp <(dd if="$disk" bs=64K count=16 iflag=direct status=none) <(head -c $MiB "$imgA") \
  || soft "A: incoming read differs"
"$CORFS" activate --state "$stA" d --epoch 2 || fail "A: activate --epoch 2 (parent read-only) failed"
"$CORFS" stream --state "$stA" d --pause > /dev/null 2>&1 || true   # keep some blocks missing
wr () { twin_write "$disk" "$expA" "$1" "$2" ${3:+"$3"} || fail "A: write of $2 bytes at $1 failed"; }
wr 0 65536
wr $((MiB + 123)) 70000
wr $((8 * MiB)) 131072 direct
wr $((13 * MiB + 5)) 3000
wr $((size - 4096)) 4096 direct
pid=$(daemon_pid "$stA")
crash_unmount "$stA" "$mnt"
corfs_mount "$stA" "$mnt"
[ "$(owner "$stA")" = active/2 ] || soft "A: owner after kill -9 and remount: $(owner "$stA"), expected active/2"
cmp <(direct_read "$disk") "$expA" || soft "A: after kill -9: the disk (O_DIRECT) differs from the parent plus the acknowledged writes"
cmp "$disk" "$expA" || soft "A: after kill -9: the disk (buffered) differs from the parent plus the acknowledged writes"
dd if=/dev/urandom of="$disk" bs=4096 count=1 seek=100 conv=notrunc,fsync status=none \
  || soft "A: write after the remount failed"
dd if="$disk" of="$expA" bs=4096 count=1 skip=100 seek=100 conv=notrunc status=none
"$CORFS" activate --state "$stA" d --epoch 2 || soft "A: activate --epoch 2 again after the remount is not a no-op"
pid=$(daemon_pid "$stA")
corfs_unmount "$mnt" || fail "A: unmount failed"
wait_gone "$pid"

# An active disk is not incoming again.
expect_mount_refused "A: mount --incoming --disk of an active disk" incoming "$stA" --incoming --disk d="$urlA"
expect_mount_refused "A: mount --incoming of an active disk (recorded, no --disk)" incoming "$stA" --incoming
corfs_mount "$stA" "$mnt"
[ "$(owner "$stA")" = active/2 ] || soft "A: owner after the refused mounts: $(owner "$stA")"
cmp "$disk" "$expA" || soft "A: data changed by the refused mounts"
pid=$(daemon_pid "$stA")
corfs_unmount "$mnt" || fail "A: unmount (2) failed"
wait_gone "$pid"

# ---- B: crash while incoming ----
imgB=$T/b.img
head -c $size /dev/urandom > "$imgB"
start_nbdkit "$T/b.pid" -U "$T/b.sock" file "$imgB"       # writable: the source runs
urlB=$(nbd_uri "$T/b.sock")
stB=$T/stateB
corfs_mount "$stB" "$mnt" --incoming --stream=on --disk d="$urlB"
cmp <(direct_read "$disk") "$imgB" || soft "B: incoming read differs"
cmp <(head -c $((4 * MiB)) "$disk") <(head -c $((4 * MiB)) "$imgB") || soft "B: buffered incoming read differs"
python3 - "$disk" <<'PY' || soft "B: O_RDWR open + fsync while incoming failed"
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR); os.pread(fd, 4096, 0); os.fsync(fd); os.close(fd)
PY
pid=$(daemon_pid "$stB")
crash_unmount "$stB" "$mnt"
# The source keeps writing meanwhile.
head -c $((2 * MiB)) /dev/urandom > "$T/new"
dd if="$T/new" of="$imgB" bs=1M seek=1 conv=notrunc status=none
check_incoming () {
  [ "$(owner "$stB")" = incoming/0 ] || soft "B ($1): owner $(owner "$stB"), expected incoming/0"
  [ "$(js "$stB" .present_bytes)" = 0 ] || soft "B ($1): present_bytes $(js "$stB" .present_bytes), expected 0"
  cmp <(direct_read "$disk") "$imgB" || soft "B ($1): reads do not show the source's current data"
  [ "$(js "$stB" .present_bytes)" = 0 ] || soft "B ($1): present_bytes $(js "$stB" .present_bytes) after reads, expected 0"
  local s; s=$(js "$stB" .stream.state)
  [ "$s" != running ] && [ "$s" != complete ] || soft "B ($1): stream state '$s' while incoming"
  if dd if=/dev/zero of="$disk" bs=4096 count=1 seek=10 conv=notrunc status=none 2> "$T/out"; then
    soft "B ($1): a write succeeded while incoming"
  else
    grep -q "Read-only file system" "$T/out" || soft "B ($1): write failed, but not with EROFS: $(cat "$T/out")"
  fi
}
rc=0; "$CORFS" mount --state "$stB" --stream=on "$mnt" > "$T/out" 2>&1 || rc=$?
if [ $rc -ne 0 ]; then
  fail "B: remount of an incoming disk after kill -9 (the source changed the parent meanwhile) failed (exit $rc): $(cat "$T/out")"
fi
cleanup_fn _force_unmount "$stB" "$mnt"
check_incoming "remount without --incoming"
dd if="$T/new" of="$imgB" bs=1M seek=9 conv=notrunc status=none     # more source writes
pid=$(daemon_pid "$stB")
crash_unmount "$stB" "$mnt"
corfs_mount "$stB" "$mnt" --incoming --stream=on --disk d="$urlB"
check_incoming "remount with --incoming --disk"
# Still activatable (the parent is writable: --force).
"$CORFS" activate --state "$stB" d --epoch 1 --force || fail "B: activate --epoch 1 --force after the crashes failed"
[ "$(owner "$stB")" = active/1 ] || soft "B: owner after activate: $(owner "$stB")"
cmp "$disk" "$imgB" || soft "B: after activation the disk differs from the source's image"
dd if=/dev/urandom of="$disk" bs=4096 count=1 seek=10 conv=notrunc,fsync status=none \
  || soft "B: write after activation failed"
pid=$(daemon_pid "$stB")
corfs_unmount "$mnt" || fail "B: unmount failed"
wait_gone "$pid"

if [ ${#problems[@]} -ne 0 ]; then
  printf 'FAILED CHECK: %s\n' "${problems[@]}" >&2
  fail "${#problems[@]} check(s) failed"
fi
echo OK
