#!/usr/bin/env bash
# Writes land in the overlay and persist, and never reach the parent:
# aligned whole-block writes, unaligned writes with odd offsets and sizes
# spanning block boundaries, partial writes into missing and into present
# blocks, O_DIRECT writes, writes in the partial last block, all with
# fsync.  The same writes go to a local copy of the image.  Checks: the
# mount equals the copy (buffered and O_DIRECT reads); the dirty map is
# exactly the written blocks; the parent image is unchanged; after a
# remount WITHOUT --disk (the recorded disk comes back) the mount still
# equals the copy, also while the streamer fills the rest; once every
# block is present, the disk mounts and reads
# back identical with the parent (nbdkit) gone, takes fsync'd writes, and
# keeps them across a kill -9 of the daemon.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version

bs=65536
size=$((32 * 1048576 + 5000))   # last block is partial
img=$T/parent.img copy=$T/expected.img
head -c "$size" /dev/urandom > "$img"
cp "$img" "$copy"
sum0=$(sha256sum < "$img")
sock=$T/nbd.sock
# nbdkit is started here rather than by start_nbdkit because the test
# kills it half-way: the cleanup must not signal its PID once it is gone
# (PIDs wrap quickly on this machine).
nbdkit_pid=
stop_parent () {
  [ -n "$nbdkit_pid" ] && [ "$(cat "/proc/$nbdkit_pid/comm" 2>/dev/null)" = nbdkit ] \
    && kill_pid "$nbdkit_pid"
  nbdkit_pid=
}
cleanup_fn stop_parent
nbdkit -P "$T/nbdkit.pid" -U "$sock" file "$img"   # writable: a stray write would show
for i in $(seq 100); do [ -s "$T/nbdkit.pid" ] && break; sleep 0.1; done
[ -s "$T/nbdkit.pid" ] || fail "nbdkit did not start"
nbdkit_pid=$(cat "$T/nbdkit.pid")

st=$T/state mnt=$T/mnt
# Streamer off, so the writes below meet really missing blocks.
corfs_mount "$st" "$mnt" --block-size 64K --stream=off --disk disk="$(nbd_uri "$sock")"
disk=$mnt/disk

declare -A written=()   # block numbers written

# wr OFF LEN [direct]: write LEN random bytes at OFF to the mount (one
# write call, then fsync) and to the copy; remember the blocks touched.
wr () {
  local off=$1 len=$2 flag=${3:-} b
  twin_write "$disk" "$copy" "$off" "$len" $flag || fail "write of $len bytes at $off ${flag:+($flag) }failed"
  for (( b = off / bs; b <= (off + len - 1) / bs; b++ )); do written[$b]=1; done
}
# rd OFF LEN: read through the mount (makes those blocks present).
rd () { dd if="$disk" of=/dev/null bs=4096 iflag=skip_bytes,count_bytes skip="$1" count="$2" status=none; }

M=1048576
wr $((1 * M)) $((4 * bs))                 # aligned whole blocks, missing
rd $((2 * M)) $bs; wr $((2 * M)) $bs      # aligned whole block, present
wr $((3 * M + bs - 7)) 13                 # tiny, odd, spans two missing blocks
wr $((4 * M + 12345)) 200001              # odd, spans 5 blocks, partial at both ends
wr $((4 * M + 13345)) 50                  # overwrite inside the previous write
wr $((6 * M + 100)) 100                   # partial write into a missing block
rd $((7 * M)) $bs; wr $((7 * M + 333)) 1000  # partial write into a present block
rd $((5 * M + bs)) 10; wr $((5 * M + bs - 100)) 300  # spans a missing and a present block
wr $((8 * M)) $((2 * bs)) direct          # O_DIRECT, whole blocks
wr $((9 * M + 4096)) 12288 direct         # O_DIRECT, part of a missing block
wr $((10 * M + bs - 4096)) 8192 direct    # O_DIRECT, across a block boundary
wr $((11 * M + 512)) 1024 direct          # O_DIRECT, 512-byte aligned
wr 0 1                                    # first byte (an identity sample block)
wr $((size / 2)) 4096                     # the middle identity sample
wr $(( (size / bs) * bs - 10 )) 20        # into the partial last block
wr $((size - 3000)) 3000                  # up to EOF
wr $((size - 1)) 1                        # last byte

# check_same WHAT: the mount equals the copy, read buffered and O_DIRECT.
check_same () {
  cmp "$disk" "$copy" || fail "$1: mount differs from the expected image (buffered read)"
  cmp <(dd if="$disk" iflag=direct bs=1M status=none) "$copy" \
    || fail "$1: mount differs from the expected image (O_DIRECT read)"
  local got; got=$(stat -c %s "$disk")
  [ "$got" -eq "$size" ] || fail "$1: disk size $got, expected $size"
}

# check_dirty WHAT [cover]: the dirty map is exactly the blocks written
# (with "cover": at least those; after a crash it may be wider).
check_dirty () {
  local exp got b
  exp=$(printf '%s\n' "${!written[@]}" | sort -n)
  got=$("$CORFS" status --state "$st" disk --json --maps \
    | jq -r '(if type == "array" then .[0] else . end).maps.dirty[] | "\(.offset) \(.length)"' \
    | while read -r o l; do
        (( o % bs == 0 )) || echo "unaligned-extent-$o"
        for (( b = o / bs; b <= (o + l - 1) / bs; b++ )); do echo "$b"; done
      done | sort -n)
  if [ "${2:-}" = cover ]; then
    for b in $exp; do
      grep -qx "$b" <<<"$got" || fail "$1: written block $b is not dirty (dirty blocks {$(echo $got)})"
    done
  else
    [ "$got" = "$exp" ] || fail "$1: dirty blocks {$(echo $got)}, expected the written blocks {$(echo $exp)}"
  fi
}

check_same "after writes"
check_dirty "after writes"

pid=$(daemon_pid "$st")
corfs_unmount "$mnt" || fail "corfs unmount failed"
[ "$(sha256sum < "$img")" = "$sum0" ] || fail "the parent image changed: corfs wrote to its parent"

# Remount without --disk: the recorded disk comes back with its writes.
# The streamer is on now (the default): it fills the blocks still missing
# and must not overwrite written ones.
wait_gone "$pid"
corfs_mount "$st" "$mnt"
[ -f "$disk" ] || fail "recorded disk did not come back on a mount without --disk: $(ls -la "$mnt")"
check_same "after remount"
check_dirty "after remount"

# The whole disk has been read, so every block is present.
complete=$("$CORFS" status --state "$st" disk --json | jq -r '(if type == "array" then .[0] else . end).complete')
[ "$complete" = true ] || fail "disk not complete after reading all of it"
pid=$(daemon_pid "$st")
corfs_unmount "$mnt" || fail "corfs unmount (2) failed"
[ "$(sha256sum < "$img")" = "$sum0" ] || fail "the parent image changed after the remount"

# Parent gone: a complete disk must mount and serve without it.
p=$nbdkit_pid
stop_parent
wait_gone "$p"
wait_gone "$pid"
corfs_mount "$st" "$mnt" || fail "a complete disk did not mount without its parent"
check_same "parent gone"
wr $((12 * M + 777)) 70000                # writes still work, and are durable after fsync
wr $((2 * M + 5)) 5
check_same "parent gone, after writes"
crash_unmount "$st" "$mnt"
corfs_mount "$st" "$mnt" || fail "did not remount after kill -9 (parent gone)"
check_same "after kill -9 of the daemon"
check_dirty "after kill -9 of the daemon" cover
corfs_unmount "$mnt" || fail "corfs unmount (3) failed"
echo OK
