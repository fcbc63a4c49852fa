#!/usr/bin/env bash
# A file:///abs/path parent: cold reads equal the file, writes stay in the
# overlay (the parent's content and mtime are unchanged), a remount keeps
# the writes; re-attaching an incomplete state directory to a parent whose
# size changed is refused: `corfs mount` exits non-zero, says so on stderr
# (mentioning the size), leaves nothing mounted and no daemon running;
# while a complete one still mounts and serves its data without the parent.
. "$(dirname "$0")/../functions.sh"
requires fusermount3 --version
requires jq --version

size=$((16 * 1048576))
img=$T/parent.img copy=$T/expected.img
head -c "$size" /dev/urandom > "$img"
cp "$img" "$copy"
sum0=$(sha256sum < "$img")
mtime0=$(stat -c %Y.%y "$img")

st=$T/state mnt=$T/mnt
corfs_mount "$st" "$mnt" --stream=off --disk disk="file://$img"   # cold reads really cold
disk=$mnt/disk
got=$(stat -c %s "$disk")
[ "$got" -eq "$size" ] || fail "disk size $got, expected $size"

# Cold reads: a few unaligned pieces first, then everything but the tail.
for p in "12345 100" "65530 20" "$((5 * 1048576 + 7)) 300000" "$((size - 10)) 10"; do
  set -- $p
  cmp <(dd if="$disk" iflag=skip_bytes,count_bytes skip="$1" count="$2" bs=64K status=none) \
      <(dd if="$img" iflag=skip_bytes,count_bytes skip="$1" count="$2" bs=64K status=none) \
    || fail "cold read of $2 bytes at $1 differs from the parent file"
done
cmp <(head -c $((12 * 1048576)) "$disk") <(head -c $((12 * 1048576)) "$img") \
  || fail "cold read of the first 12 MiB differs from the parent file"

# wr OFF LEN [direct]: the same write to the mount (fsync'd) and the copy.
wr () { twin_write "$disk" "$copy" "$1" "$2" ${3:+"$3"} || fail "write of $2 bytes at $1 failed"; }
wr 0 65536
wr $((65536 - 3)) 9                      # across a block boundary
wr $((3 * 1048576 + 1)) 150000           # present blocks, unaligned
wr $((14 * 1048576 + 999)) 1234          # a missing block, partial
wr $((15 * 1048576)) 131072 direct       # missing blocks, whole, O_DIRECT
wr $((size - 5)) 5                       # the last bytes
cmp "$disk" "$copy" || fail "mount differs from the expected image after writes"
[ "$(sha256sum < "$img")" = "$sum0" ] || fail "writes reached the parent file"

pid=$(daemon_pid "$st")
corfs_unmount "$mnt" || fail "corfs unmount failed"
[ "$(sha256sum < "$img")" = "$sum0" ] || fail "the parent file changed"
[ "$(stat -c %Y.%y "$img")" = "$mtime0" ] || fail "the parent file's mtime changed"

# Remount (the recorded disk comes back without --disk): writes persist.
wait_gone "$pid"
corfs_mount "$st" "$mnt"
cmp "$disk" "$copy" || fail "mount differs from the expected image after remount"
pid=$(daemon_pid "$st")
corfs_unmount "$mnt" || fail "corfs unmount (2) failed"
[ "$(sha256sum < "$img")" = "$sum0" ] || fail "the parent file changed (2)"
wait_gone "$pid"

# A second state directory on the same parent that is NOT complete (one
# block read, one written; no streaming).
st2=$T/state2
corfs_mount "$st2" "$mnt" --stream=off --disk disk="file://$img"
dd if="$disk" of=/dev/null bs=64K count=1 skip=7 status=none || fail "read on state2 failed"
echo hello | dd of="$disk" bs=6 seek=1000 oflag=seek_bytes conv=notrunc,fsync status=none \
  || fail "write on state2 failed"
js=$("$CORFS" status --state "$st2" disk --json)
[ "$(jq -r '(if type == "array" then .[0] else . end).complete' <<<"$js")" = false ] \
  || fail "state2 should not be complete: $js"
pid=$(daemon_pid "$st2")
corfs_unmount "$mnt" || fail "corfs unmount (state2) failed"
wait_gone "$pid"

# The parent grows to 20 MiB: mounting state2 (which still needs the
# parent) must be refused.
truncate -s 20M "$img"
st=$st2
rc=0
"$CORFS" mount --state "$st" "$mnt" > "$T/out" 2> "$T/err" || rc=$?
if [ "$rc" -eq 0 ]; then
  cleanup_fn _force_unmount "$st" "$mnt"
  fail "mount over a parent whose size changed (16M -> 20M) succeeded; stderr: $(cat "$T/err")"
fi
echo "refused (exit $rc): $(cat "$T/err")"
grep -qi size "$T/err" || fail "the refusal does not mention the size; stderr: $(cat "$T/err") stdout: $(cat "$T/out")"
! is_mounted "$mnt" || { fusermount3 -u "$mnt"; fail "refused mount left $mnt mounted"; }
if [ -s "$st/corfs.pid" ] && ps -o stat= -p "$(cat "$st/corfs.pid")" 2>/dev/null | grep -qv Z; then
  sleep 1
  ps -o stat= -p "$(cat "$st/corfs.pid")" 2>/dev/null | grep -qv Z \
    && fail "a daemon ($(cat "$st/corfs.pid")) is still running after the refused mount"
fi

# Also with the disk named again on the command line.
rc=0
"$CORFS" mount --state "$st" --disk disk="file://$img" "$mnt" > "$T/out" 2> "$T/err" || rc=$?
if [ "$rc" -eq 0 ]; then
  cleanup_fn _force_unmount "$st" "$mnt"
  fail "mount --disk over a parent whose size changed succeeded"
fi
grep -qi size "$T/err" || fail "the refusal (with --disk) does not mention the size; stderr: $(cat "$T/err")"
! is_mounted "$mnt" || { fusermount3 -u "$mnt"; fail "refused mount (with --disk) left $mnt mounted"; }

# The complete state directory does not need its parent: it still mounts
# (DESIGN: a disk recorded complete mounts without contacting its parent)
# and serves its own data, at its recorded size.
st=$T/state
corfs_mount "$st" "$mnt" || fail "a complete disk did not mount after its parent changed"
got=$(stat -c %s "$disk")
[ "$got" -eq "$size" ] || fail "complete disk: size $got after the parent grew, expected $size"
cmp "$disk" "$copy" || fail "complete disk: content differs after the parent changed"
corfs_unmount "$mnt" || fail "corfs unmount (3) failed"
echo OK
