#!/usr/bin/env bash
# Concurrent readers of the same missing blocks fetch each block from the
# parent exactly once (the in-flight table dedups fetches).  The parent is
# slow (nbdkit delay filter) so the readers overlap; nbdkit's log filter
# records every parent read.  Round 1: 8 identical O_DIRECT readers of one
# 4 MiB range.  Round 2: readers of another range with different request
# sizes and offsets that straddle the fetches of the others.  For each
# round, every byte of the range is fetched exactly once, nothing else is
# fetched (but the identity samples of each new parent connection), the data is right, and counters.fetched_bytes agrees.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version

MiB=1048576
size=$((64 * MiB))
img=$T/parent.img
head -c "$size" /dev/urandom > "$img"
sock=$T/nbd.sock log=$T/nbdkit.log
# log is the outer filter, so it sees every request corfs sends.
start_nbdkit "$T/nbdkit.pid" -U "$sock" --filter=log --filter=delay \
  file "$img" logfile="$log" rdelay=200ms

st=$T/state mnt=$T/mnt
# No background streaming: only guest reads fetch.
# --readahead 0: nothing but what the readers ask for may be fetched.
corfs_mount "$st" "$mnt" --block-size 64K --stream=off --readahead 0 --disk disk="$(nbd_uri "$sock")"
disk=$mnt/disk

# reads_in LO HI: "offset count" (decimal) of each parent Read request in
# the log that intersects [LO, HI).
reads_in () {
  local lo=$1 hi=$2 o c
  # request lines look like: connection=1 Read id=4 offset=0x800000 count=0x100000 ...
  sed -n 's/.* Read id=[0-9]* offset=\(0x[0-9a-f]*\) count=\(0x[0-9a-f]*\) .*/\1 \2/p' "$log" |
  while read -r o c; do
    o=$((o)) c=$((c))
    [ $((o + c)) -gt "$lo" ] && [ "$o" -lt "$hi" ] && echo "$o $c"
  done
  return 0
}

# all_reads: every parent Read request except the identity samples
# (4 KiB at 0, size/2 and size-4K, taken on every new connection; corfs
# opens more connections under load), "offset count" in decimal.
all_reads () {
  sed -n 's/.* Read id=[0-9]* offset=\(0x[0-9a-f]*\) count=\(0x[0-9a-f]*\) .*/\1 \2/p' "$log" |
  while read -r o c; do
    o=$((o)) c=$((c))
    [ "$c" -eq 4096 ] && { [ "$o" -eq 0 ] || [ "$o" -eq $((size / 2)) ] || [ "$o" -eq $((size - 4096)) ]; } && continue
    echo "$o $c"
  done
  return 0
}

# check_once LO HI WHAT: the parent reads intersecting [LO, HI) tile it
# exactly: no byte twice, no byte missing, none sticking out.
check_once () {
  local lo=$1 hi=$2 what=$3 pos=$1 o c n=0
  while read -r o c; do
    n=$((n + 1))
    [ "$o" -ge "$lo" ] && [ $((o + c)) -le "$hi" ] \
      || fail "$what: parent read offset $o count $c sticks out of [$lo, $hi)"
    [ "$o" -ge "$pos" ] || fail "$what: byte $o fetched twice (parent read offset $o count $c overlaps an earlier one ending at $pos)"
    [ "$o" -eq "$pos" ] || fail "$what: bytes [$pos, $o) never fetched from the parent"
    pos=$((o + c))
  done < <(reads_in "$lo" "$hi" | sort -n)
  [ "$pos" -eq "$hi" ] || fail "$what: bytes [$pos, $hi) never fetched from the parent"
  echo "$what: $n parent reads tile [$lo, $hi) exactly once"
}

fetched_bytes () { "$CORFS" status --state "$st" disk --json | jq -r '(if type == "array" then .[0] else . end).counters.fetched_bytes'; }

# The identity samples taken at connect are the only reads so far; the
# ranges below stay clear of them.
[ -z "$(all_reads)" ] || fail "parent reads before any guest read: $(all_reads)"
f0=$(fetched_bytes)

# Round 1: 8 identical O_DIRECT readers of [8 MiB, 12 MiB).
lo=$((8 * MiB)) hi=$((12 * MiB))
pids=()
for i in $(seq 8); do
  dd if="$disk" of="$T/r1.$i" iflag=direct bs=1M skip=8 count=4 status=none & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || fail "round 1: reader $p failed"; done
for i in $(seq 8); do
  cmp "$T/r1.$i" <(dd if="$img" bs=1M skip=8 count=4 status=none) \
    || fail "round 1: reader $i got wrong data"
done
check_once "$lo" "$hi" "round 1"
f1=$(fetched_bytes)
[ $((f1 - f0)) -eq $((hi - lo)) ] \
  || fail "round 1: counters.fetched_bytes grew by $((f1 - f0)), expected $((hi - lo))"

# Round 2: [20 MiB, 24 MiB), mixed O_DIRECT request sizes and offsets,
# all started together.
lo=$((20 * MiB)) hi=$((24 * MiB))
pids=()
for i in 1 2 3; do
  dd if="$disk" of=/dev/null iflag=direct bs=1M skip=20 count=4 status=none & pids+=($!)
done
for i in 1 2 3; do  # 256 KiB requests starting half-way into the first MiB
  dd if="$disk" of=/dev/null iflag=direct,skip_bytes,count_bytes bs=256K \
    skip=$((lo + MiB / 2)) count=$((3 * MiB)) status=none & pids+=($!)
done
for i in 1 2; do    # 64 KiB requests, backwards over the range's last MiB
  ( for b in $(seq 15 -1 0); do
      dd if="$disk" of=/dev/null iflag=direct bs=64K skip=$(( (hi - MiB) / 65536 + b )) count=1 status=none || exit 1
    done ) & pids+=($!)
done
# 192 KiB requests from 64 KiB in (O_DIRECT only: buffered readahead
# would legitimately fetch past the range).
dd if="$disk" of="$T/r2" iflag=direct,skip_bytes,count_bytes bs=192K \
  skip=$((lo + 65536)) count=$((3 * MiB)) status=none & pids+=($!)
for p in "${pids[@]}"; do wait "$p" || fail "round 2: reader $p failed"; done
cmp "$T/r2" <(dd if="$img" iflag=skip_bytes,count_bytes bs=192K \
  skip=$((lo + 65536)) count=$((3 * MiB)) status=none) \
  || fail "round 2: reader got wrong data"
check_once "$lo" "$hi" "round 2"
f2=$(fetched_bytes)
[ $((f2 - f1)) -eq $((hi - lo)) ] \
  || fail "round 2: counters.fetched_bytes grew by $((f2 - f1)), expected $((hi - lo))"

# Nothing was fetched outside the two ranges (besides the identity samples).
n=$(all_reads | wc -l)
n1=$(reads_in $((8 * MiB)) $((12 * MiB)) | wc -l)
n2=$(reads_in $((20 * MiB)) $((24 * MiB)) | wc -l)
[ "$n" -eq $((n1 + n2)) ] \
  || fail "parent reads outside the test ranges: $(all_reads | awk -v a=$((8*MiB)) -v b=$((12*MiB)) -v c=$((20*MiB)) -v d=$((24*MiB)) '!(($1>=a && $1<b) || ($1>=c && $1<d))')"

# The present map is exactly the two ranges.
maps=$("$CORFS" status --state "$st" disk --json --maps \
  | jq -r '(if type == "array" then .[0] else . end).maps.present[] | "\(.offset) \(.length)"')
[ "$maps" = "$((8 * MiB)) $((4 * MiB))
$((20 * MiB)) $((4 * MiB))" ] || fail "present map is not exactly the two ranges read: $maps"

corfs_unmount "$mnt" || fail "corfs unmount failed"
echo OK
