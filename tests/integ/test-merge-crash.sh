#!/usr/bin/env bash
# kill -9 the daemon in the middle of merges (docs/design.md rules 9 and 11): a
# crash at any point of a merge is resumed by running the merge again.
# Each round writes new random data (fsync'd) at random offsets, starts a
# slow merge (--rate 8M), kills the daemon after a random 0.1-1.0 s, and
#  - remounts: this must succeed although the parent was modified in the
#    middle of the merge (its identity no longer matches the pinned one;
#    the record says "merging"), and a cold read (which attaches the
#    parent) must return the parent's data, not fail closed as "changed";
#  - runs `merge --wait` (no --parent-owned: the ownership is recorded),
#    which must reach synced with dirty_bytes 0;
#  - compares the parent file and the disk with the expected image (the
#    original with every write applied): any difference is a mismatch.
# Kills: $MERGE_KILLS (default 15).  Ends with the line
# "merge crash summary: kills=N mid_merge=M mismatches=0".
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version

kills=${MERGE_KILLS:-15}
seed=${MERGE_SEED:-$RANDOM}
echo "merge crash test: $kills kills, seed $seed (MERGE_SEED=$seed to repeat)"
RANDOM=$seed

size=$((128 * 1048576)) cold=$((120 * 1048576))
head -c $size /dev/urandom > $T/parent.img
cp $T/parent.img $T/expected.img
start_nbdkit $T/nbd.pid -U $T/sock file $T/parent.img
st=$T/state mnt=$T/mnt
corfs_mount $st $mnt --parent-owned --disk d="$(nbd_uri $T/sock)"
disk=$mnt/d

status () { local s=$1; shift; "$CORFS" status --state "$s" d --json | jq -r "$@"; }

# wr OFF LEN: the same write to the disk (fsync'd) and the expected image.
wr () {
  twin_write $disk $T/expected.img "$1" "$2" || fail "write of $2 bytes at $1 failed"
  ranges+=("$1 $2")
}

# same_ranges: the ranges written this round read the same through the
# mount as in the expected image (reading only those keeps the disk
# incomplete, so every remount attaches the parent).
same_ranges () {
  local r o l
  for r in "${ranges[@]}"; do
    read -r o l <<<"$r"
    cmp -s <(dd if=$disk iflag=skip_bytes,count_bytes skip=$o count=$l bs=64K status=none) \
           <(dd if=$T/expected.img iflag=skip_bytes,count_bytes skip=$o count=$l bs=64K status=none) \
      || return 1
  done
}

k=0 mid=0 mismatches=0 first_mismatch=""
while [ $k -lt $kills ]; do
  k=$((k + 1))
  ranges=()
  # About 8 MiB of new data: 8 writes of 0.5-1.5 MiB, unaligned, some
  # overlapping earlier rounds' data.
  # The writes avoid the last 8 MiB (kept for cold reads after the
  # remount), and one always changes block 0, which the merge copies
  # first: the parent's NBD identity (size plus sampled blocks, one at 0)
  # no longer matches the pinned one once the kill comes.
  wr $((RANDOM % 4096)) $((1 + RANDOM % 8192))
  for _ in 1 2 3 4 5 6 7 8; do
    len=$(( 524288 + (RANDOM * 32 + RANDOM % 32) % 1048576 ))
    off=$(( (RANDOM * 32768 + RANDOM) % (cold - len) ))
    wr $off $len
  done
  "$CORFS" merge --state $st d --rate 8M || fail "round $k: merge --rate 8M did not start"
  ms=$((100 + RANDOM % 901))
  sleep "$((ms / 1000)).$(printf '%03d' $((ms % 1000)))"
  job=$(status $st .job.state 2>/dev/null || echo unknown)
  crash_unmount $st $mnt
  [ "$job" = running ] && mid=$((mid + 1))

  "$CORFS" mount --state $st --stream=off $mnt 2> $T/err \
    || fail "round $k: remount after a kill during a merge (job $job) failed: $(cat $T/err)"
  # A cold read (a block nobody wrote) attaches the modified parent.
  o=$((cold + (k % 128) * 65536 + RANDOM % 60000))
  cmp <(dd if=$disk iflag=skip_bytes,count_bytes skip=$o count=4096 bs=4096 status=none) \
      <(dd if=$T/expected.img iflag=skip_bytes,count_bytes skip=$o count=4096 bs=4096 status=none) \
    || fail "round $k: a cold read after the remount failed or differs (parent $(status $st .parent.state): $(status $st .parent.last_error))"
  [ "$(status $st .parent.state)" != changed ] \
    || fail "round $k: parent 'changed' after the remount: $(status $st .parent.last_error)"
  "$CORFS" merge --state $st d --wait 2> $T/err \
    || fail "round $k: merge --wait after the kill failed: $(cat $T/err)"
  js=$("$CORFS" status --state $st d --json)
  [ "$(jq -r .job.state <<<"$js")/$(jq -r .dirty_bytes <<<"$js")" = synced/0 ] \
    || fail "round $k: after merge --wait: dirty_bytes $(jq -r .dirty_bytes <<<"$js"), job $(jq -c .job <<<"$js")"
  bad=""
  cmp -s $T/parent.img $T/expected.img || bad="parent"
  same_ranges || bad="$bad disk"
  if [ -n "$bad" ]; then
    mismatches=$((mismatches + 1))
    [ -n "$first_mismatch" ] || first_mismatch="round $k (killed with the job $job): $bad differs; $(cmp $T/parent.img $T/expected.img 2>&1 | head -1)"
  fi
  echo "kill $k: job was $job; merged again: $(jq -c '.job | {done_bytes, passes, errors}' <<<"$js")${bad:+ MISMATCH:$bad}"
done
[ "$(status $st .complete)" = false ] || echo "note: the disk became complete"
cmp $disk $T/expected.img || { mismatches=$((mismatches + 1)); echo "MISMATCH: the whole disk differs from the expected image"; }
cmp $T/parent.img $disk || echo "MISMATCH: the parent differs from the whole disk"
corfs_unmount $mnt || fail "final unmount failed"
echo "merge crash summary: kills=$k mid_merge=$mid mismatches=$mismatches"
[ $mismatches -eq 0 ] || fail "$mismatches mismatches; first: $first_mismatch"
[ $mid -gt 0 ] || fail "no kill found a merge running (the rate limit did not hold?)"
