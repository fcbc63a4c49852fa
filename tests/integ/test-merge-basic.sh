#!/usr/bin/env bash
# Merge writes the disk's dirty blocks back into a parent the disk owns:
#  - without --parent-owned (not given at mount nor at merge) `corfs merge`
#    is refused with a message naming --parent-owned, and nothing is written;
#  - with --parent-owned, `merge --wait` exits 0 and the parent file equals
#    the disk byte for byte (aligned writes, unaligned ones, writes spanning
#    blocks, whole and partial writes into blocks never fetched, the last
#    bytes, discards: punched holes and zeroed ranges, into missing and
#    present blocks); status says dirty_bytes 0 and job merge/synced;
#  - the parent's identity is re-pinned at the synced instant: a clean
#    remount (of a disk that still needs its parent) mounts, reads the same
#    and is not refused or failed closed as "parent changed"; the ownership
#    is recorded: a later merge needs no --parent-owned;
#  - merging into a read-only NBD export (nbdkit -r) is refused with a
#    message saying it is read-only, and the disk stays dirty;
#  - a file:///PATH parent, owned from `mount --parent-owned`, merges the
#    same way (and remounts, though the merge changed the file's mtime).
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version

size=$((32 * 1048576))
head -c $size /dev/urandom > $T/orig.img

# status STATE [JQ-OPTS] JQ-EXPR: one field of the disk's status.
status () { local s=$1; shift; "$CORFS" status --state "$s" d --json | jq -r "$@"; }

# wr DISK EXPECTED OFF LEN [oflag]: the same write to the mount (fsync'd)
# and to the expected image.
wr () {
  twin_write "$@" || fail "write of $4 bytes at $3 to $1 failed"
  ranges+=("$3 $4")
}
ranges=()

# check_written DISK EXPECTED: the written ranges (and a little around
# them) read the same; reads only a few blocks, so the disk stays
# incomplete and a remount still needs the parent.
check_written () {
  local disk=$1 exp=$2 r o l off len
  for r in "${ranges[@]}"; do
    read -r o l <<<"$r"
    off=$(( o > 100 ? o - 100 : 0 )); len=$(( l + 200 ))
    [ $((off + len)) -le $size ] || len=$((size - off))
    cmp <(dd if="$disk" iflag=skip_bytes,count_bytes skip=$off count=$len bs=64K status=none) \
        <(dd if="$exp" iflag=skip_bytes,count_bytes skip=$off count=$len bs=64K status=none) \
      || fail "$disk: $len bytes at $off differ from $exp"
  done
}

# writes DISK EXPECTED: the mix of writes every part uses.
writes () {
  dd if="$1" of=/dev/null bs=64K count=16 status=none       # blocks 0-15 present
  wr "$1" "$2" $((3 * 65536)) 65536                          # aligned, one block
  wr "$1" "$2" $((5 * 65536 - 3)) 9                          # across a block boundary
  wr "$1" "$2" $((1048576 + 123)) 200000                     # unaligned, spanning blocks
  wr "$1" "$2" $((8 * 1048576)) 131072                       # missing blocks, whole
  wr "$1" "$2" $((12 * 1048576 + 999)) 1234                  # a missing block, partial
  wr "$1" "$2" $((20 * 1048576 + 4096)) 8192 direct          # missing, O_DIRECT
  wr "$1" "$2" $((size - 5)) 5                               # the last bytes
  # Discards read as zeros and must reach the parent too.
  punch "$1" "$2" -p $((2 * 1048576)) 262144                 # missing blocks, whole
  punch "$1" "$2" -p $((4 * 1048576 + 100)) 1000             # a missing block, partial
  punch "$1" "$2" -z $((6 * 1048576)) 131072                 # zero range, whole blocks
  punch "$1" "$2" -p $((65536 + 10)) 70000                   # present blocks, unaligned
}

# punch DISK EXPECTED -p|-z OFF LEN: the same fallocate (punch hole or
# zero range) on the mount and the expected image, then fsync.
punch () {
  fallocate $3 -o $4 -l $5 "$1" || fail "fallocate $3 of $5 bytes at $4 on $1 failed"
  fallocate $3 -o $4 -l $5 "$2" || fail "fallocate $3 on $2 failed"
  sync "$1" || fail "fsync of $1 failed"
  ranges+=("$4 $5")
}

### 1. A writable NBD export of a copy of the image.
cp $T/orig.img $T/parent.img; cp $T/orig.img $T/expected.img
start_nbdkit $T/nbd.pid -U $T/sock file $T/parent.img
st=$T/state mnt=$T/mnt
corfs_mount $st $mnt --disk d="$(nbd_uri $T/sock)"
writes $mnt/d $T/expected.img
check_written $mnt/d $T/expected.img
dirty0=$(status $st .dirty_bytes)
[ "$dirty0" -gt 0 ] || fail "dirty_bytes is $dirty0 after writes"

# Not owned: refused, with a message that says how to declare it.
rc=0; "$CORFS" merge --state $st d --wait > $T/out 2> $T/err || rc=$?
[ $rc -ne 0 ] || fail "merge without --parent-owned succeeded"
grep -q -- "parent-owned" $T/err || fail "the refusal does not mention --parent-owned: $(cat $T/err)"
echo "refused (exit $rc): $(cat $T/err)"
cmp -s $T/parent.img $T/orig.img || fail "a refused merge changed the parent"
[ "$(status $st .dirty_bytes)" = "$dirty0" ] || fail "a refused merge changed dirty_bytes"

# Owned: merged.
"$CORFS" merge --state $st d --parent-owned --wait || fail "merge --parent-owned --wait failed"
[ "$(status $st .dirty_bytes)" = 0 ] || fail "dirty_bytes $(status $st .dirty_bytes) after synced"
[ "$(status $st .job.kind)/$(status $st .job.state)" = merge/synced ] \
  || fail "job after merge --wait: $(status $st -c .job)"
[ "$(status $st .job.done_bytes)" -ge "$dirty0" ] || fail "job.done_bytes < $dirty0: $(status $st -c .job)"
cmp $T/parent.img $T/expected.img || fail "the parent file differs from the disk after merge"
check_written $mnt/d $T/expected.img
[ "$(status $st .parent.state)" != changed ] || fail "the parent is 'changed' after the merge"

# Clean remount: the re-pinned identity matches the modified parent.
pid=$(daemon_pid $st)
corfs_unmount $mnt || fail "unmount failed"
wait_gone $pid
"$CORFS" mount --state $st --stream=off $mnt 2> $T/err \
  || fail "remount after the merge failed: $(cat $T/err)"
[ "$(status $st .complete)" = false ] || fail "the disk should still need its parent"
cmp $mnt/d $T/expected.img || fail "the disk reads differently after the remount"
[ "$(status $st .parent.state)" != changed ] \
  || fail "parent 'changed' after remount: $(status $st .parent.last_error)"
[ "$(status $st .dirty_bytes)" = 0 ] || fail "dirty_bytes after the remount: $(status $st .dirty_bytes)"

# Ownership was recorded: another write merges without --parent-owned.
wr $mnt/d $T/expected.img $((30 * 1048576 + 77)) 70000
"$CORFS" merge --state $st d --wait || fail "a second merge (ownership recorded) failed"
cmp $T/parent.img $T/expected.img || fail "the parent differs from the disk after the second merge"
pid=$(daemon_pid $st)
corfs_unmount $mnt || fail "unmount (2) failed"
wait_gone $pid

### 2. A read-only export: refused, saying so.
cp $T/orig.img $T/ro.img
start_nbdkit $T/nbd-ro.pid -r -U $T/sock-ro file $T/ro.img
st2=$T/state-ro mnt2=$T/mnt-ro
corfs_mount $st2 $mnt2 --disk d="$(nbd_uri $T/sock-ro)"
echo hello | dd of=$mnt2/d bs=6 seek=4242 oflag=seek_bytes conv=notrunc,fsync status=none \
  || fail "write on the read-only-parent disk failed"
rc=0; "$CORFS" merge --state $st2 d --parent-owned --wait > $T/out 2> $T/err || rc=$?
[ $rc -ne 0 ] || fail "merge into a read-only export succeeded"
grep -qi "read-only" $T/err || fail "the refusal does not say read-only: $(cat $T/err)"
echo "refused (exit $rc): $(cat $T/err)"
[ "$(status $st2 .dirty_bytes)" -gt 0 ] || fail "dirty bits cleared by a refused merge"
[ "$(status $st2 .job.state)" != synced ] || fail "a refused merge says synced"
cmp -s $T/ro.img $T/orig.img || fail "the read-only parent changed"
pid=$(daemon_pid $st2)
corfs_unmount $mnt2 || fail "unmount (read-only) failed"
wait_gone $pid

### 3. A file:/// parent, owned from the mount.
ranges=()
cp $T/orig.img $T/fparent.img; cp $T/orig.img $T/fexpected.img
st3=$T/state-file mnt3=$T/mnt-file
corfs_mount $st3 $mnt3 --parent-owned --disk d="file://$T/fparent.img"
writes $mnt3/d $T/fexpected.img
"$CORFS" merge --state $st3 d --wait || fail "merge into a file:// parent (owned at mount) failed"
[ "$(status $st3 .dirty_bytes)" = 0 ] || fail "file parent: dirty_bytes after synced"
[ "$(status $st3 .job.state)" = synced ] || fail "file parent: job $(status $st3 -c .job)"
cmp $T/fparent.img $T/fexpected.img || fail "the file parent differs from the disk after merge"
pid=$(daemon_pid $st3)
corfs_unmount $mnt3 || fail "unmount (file) failed"
wait_gone $pid
"$CORFS" mount --state $st3 --stream=off $mnt3 2> $T/err \
  || fail "remount of the file-parent disk after the merge failed: $(cat $T/err)"
cmp $mnt3/d $T/fexpected.img || fail "file parent: the disk reads differently after the remount"
[ "$(status $st3 .parent.state)" != changed ] \
  || fail "file parent 'changed' after remount: $(status $st3 .parent.last_error)"
corfs_unmount $mnt3 || fail "unmount (file, 2) failed"
echo OK
