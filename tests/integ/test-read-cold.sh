#!/usr/bin/env bash
# Cold reads return the parent's bytes exactly, for block sizes 4K, 64K and
# 1M, on a disk whose size is not a multiple of the block size: 200 random
# unaligned pieces (read while their blocks are still missing), then the
# whole disk with cmp; reads at and past EOF return nothing; after the whole
# disk was read every block is present; after unmount the daemon is gone
# and `status` no longer reaches it.  The background streamer is off so
# the reads really are cold; a last round (64K) repeats it with the
# streamer on, racing the guest reads.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version

size=$((48 * 1048576 + 12345))
img=$T/parent.img
head -c "$size" /dev/urandom > "$img"
sock=$T/nbd.sock
start_nbdkit "$T/nbdkit.pid" -U "$sock" file "$img"

seed=${SEED:-$$}
echo "random seed $seed (rerun with SEED=$seed)"
RANDOM=$seed

# alive PID: the process exists and is not a zombie (this machine's PID 1
# reaps orphans late, so an exited daemon can linger as a zombie).
alive () { local st; st=$(ps -o stat= -p "$1" 2>/dev/null) && [ "${st#Z}" = "$st" ]; }

# piece FILE OFF LEN: LEN bytes of FILE at byte offset OFF, on stdout.
piece () { dd if="$1" iflag=skip_bytes,count_bytes skip="$2" count="$3" bs=64K status=none; }

# json_field JSON EXPR: EXPR (jq syntax) applied to the disk object of
# `status NAME --json` (an object; an array of disks without NAME).
json_field () { jq -r "(if type == \"array\" then .[0] else . end)$2" <<<"$1"; }

for round in 4K 64K 1M 64K+stream; do
  bs=${round%+stream} stream=off
  [ "$round" = "$bs" ] || stream=on
  echo "=== block size $bs, stream $stream"
  st=$T/state-$round mnt=$T/mnt-$round
  corfs_mount "$st" "$mnt" --block-size "$bs" --stream=$stream --disk disk="$(nbd_uri "$sock")"
  disk=$mnt/disk
  [ -f "$disk" ] || fail "$round: $disk does not exist after mount"
  got=$(stat -c %s "$disk")
  [ "$got" -eq "$size" ] || fail "$round: disk size $got, expected $size"

  js=$("$CORFS" status --state "$st" disk --json)
  bsb=$(numfmt --from=iec "$bs")
  [ "$(json_field "$js" .block_size)" -eq "$bsb" ] \
    || fail "$round: status block_size $(json_field "$js" .block_size), expected $bsb"

  # 200 random unaligned pieces, read while their blocks are still missing.
  # A few are forced to touch the last (partial) block and EOF.
  for i in $(seq 200); do
    off=$(( ((RANDOM << 15) | RANDOM) % size ))
    len=$(( (((RANDOM << 15) | RANDOM) % 300000) + 1 ))
    case $i in
      1) off=$((size - 1)) len=1 ;;
      2) off=$((size - 12345 - 7)) len=20000 ;;   # crosses into the tail block
      3) off=0 len=1 ;;
      4) off=$(( (size / bsb) * bsb - 3 )) len=6 ;; # straddles the last block boundary
    esac
    [ $((off + len)) -le "$size" ] || len=$((size - off))
    if ! cmp -s <(piece "$disk" "$off" "$len") <(piece "$img" "$off" "$len"); then
      fail "$round: piece $i (offset $off, length $len) differs from the parent"
    fi
  done

  # Whole disk.
  cmp "$disk" "$img" || fail "$round: whole-disk read differs from the parent"

  # EOF: reading at or past EOF returns 0 bytes; a read crossing EOF is cut at EOF.
  n=$(dd if="$disk" iflag=skip_bytes skip="$size" bs=4096 count=4 status=none | wc -c)
  [ "$n" -eq 0 ] || fail "$round: read at EOF returned $n bytes, expected 0"
  n=$(dd if="$disk" iflag=skip_bytes skip=$((size + 100000)) bs=4096 count=4 status=none | wc -c)
  [ "$n" -eq 0 ] || fail "$round: read past EOF returned $n bytes, expected 0"
  n=$(dd if="$disk" iflag=skip_bytes,direct skip=$((size + 4096 * 10)) bs=4096 count=1 status=none | wc -c)
  [ "$n" -eq 0 ] || fail "$round: O_DIRECT read past EOF returned $n bytes, expected 0"
  n=$(dd if="$disk" iflag=skip_bytes skip=$((size - 100)) bs=4096 count=1 status=none | wc -c)
  [ "$n" -eq 100 ] || fail "$round: read crossing EOF returned $n bytes, expected 100"

  # Everything was read, so everything is present.
  js=$("$CORFS" status --state "$st" disk --json)
  blocks=$(( (size + bsb - 1) / bsb ))
  [ "$(json_field "$js" .blocks)" -eq "$blocks" ] \
    || fail "$round: status blocks $(json_field "$js" .blocks), expected $blocks"
  [ "$(json_field "$js" .present_blocks)" -eq "$blocks" ] \
    || fail "$round: present_blocks $(json_field "$js" .present_blocks) after reading the whole disk, expected $blocks"
  [ "$(json_field "$js" .complete)" = true ] || fail "$round: disk not complete after reading all of it"
  [ "$(json_field "$js" .dirty_bytes)" -eq 0 ] || fail "$round: dirty_bytes non-zero after reads only"
  [ "$(json_field "$js" .counters.fetch_errors)" -eq 0 ] || fail "$round: fetch_errors non-zero"

  pid=$(daemon_pid "$st")
  corfs_unmount "$mnt" || fail "$round: corfs unmount failed"
  ! alive "$pid" || fail "$round: daemon $pid still alive after corfs unmount returned"
  ! is_mounted "$mnt" || fail "$round: $mnt still mounted after corfs unmount"
  if "$CORFS" status --state "$st" --json >/dev/null 2>&1; then
    fail "$round: status still reaches a daemon after unmount"
  fi
done
echo OK
