#!/usr/bin/env bash
# Merge while the guest keeps writing: a rate-limited merge runs while a
# writer puts fsync'd random data at random offsets of the disk; once the
# writer stops, `merge --wait` (steering the running job to full speed, or
# starting a new one if it had already synced) reaches synced, and then:
#  - the parent file equals the disk byte for byte, and both equal the
#    expected image (the original with every write applied);
#  - dirty_bytes is 0.
# Writes landing behind the merge re-dirty their blocks, and the merge
# takes more passes to catch up ("following").  With fio installed, a
# second round writes with fio --verify=crc32c during a merge and then runs
# fio --verify_only over the PARENT file with the same job parameters.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version

size=$((64 * 1048576))
head -c $size /dev/urandom > $T/parent.img
cp $T/parent.img $T/expected.img
start_nbdkit $T/nbd.pid -U $T/sock file $T/parent.img
st=$T/state mnt=$T/mnt
corfs_mount $st $mnt --parent-owned --disk d="$(nbd_uri $T/sock)"
disk=$mnt/d

status () { local s=$1; shift; "$CORFS" status --state "$s" d --json | jq -r "$@"; }

# wr OFF LEN: the same fsync'd write to the disk and to the expected image.
wr () { twin_write $disk $T/expected.img "$1" "$2" || fail "write of $2 bytes at $1 failed"; }

# Give the merge plenty to do: 24 MiB dirty in 1 MiB pieces.
for i in $(seq 0 2 47); do wr $((i * 1048576 + 512)) 1048576; done
dirty0=$(status $st .dirty_bytes)
echo "dirty before the merge: $dirty0"

# A slow merge (several seconds for what is dirty now), and the writer
# meanwhile (bounded: 6 s or 3000 writes).
"$CORFS" merge --state $st d --rate 3M || fail "merge --rate 3M failed to start"
writes=0 end=$((SECONDS + 6))
while [ $SECONDS -lt $end ] && [ $writes -lt 3000 ]; do
  len=$(( (RANDOM % 32 + 1) * 4096 - RANDOM % 4096 ))
  off=$(( (RANDOM * 32768 + RANDOM) % (size - len) ))
  wr $off $len
  writes=$((writes + 1))
done
js=$("$CORFS" status --state $st d --json)
echo "writer: $writes writes; job then: $(jq -c .job <<<"$js")"
[ $writes -ge 20 ] || fail "the writer managed only $writes writes"
[ "$(jq -r .job.kind <<<"$js")" = merge ] || fail "no merge job: $(jq -c .job <<<"$js")"
[ "$(jq -r .job.state <<<"$js")" = running ] \
  || fail "the rate-limited merge should still have been running when the writer stopped: $(jq -c .job <<<"$js")"
[ "$(jq -r .job.errors <<<"$js")" = 0 ] || fail "merge errors: $(jq -c .job <<<"$js")"

# Catch up: full speed, wait for the synced instant.
"$CORFS" merge --state $st d --rate 0 --wait || fail "merge --wait after the writer did not reach synced"
js=$("$CORFS" status --state $st d --json)
echo "after: $(jq -c .job <<<"$js")"
[ "$(jq -r .job.state <<<"$js")" = synced ] || fail "job: $(jq -c .job <<<"$js")"
[ "$(jq -r .dirty_bytes <<<"$js")" = 0 ] || fail "dirty_bytes $(jq -r .dirty_bytes <<<"$js") after synced"
cmp $T/parent.img $T/expected.img || fail "the parent differs from the expected image after synced"
cmp $disk $T/expected.img || fail "the disk differs from the expected image"

### fio, verifying through the parent.
if ! fio --version >/dev/null 2>&1; then
  echo "fio not installed: the fio round is skipped"
  corfs_unmount $mnt || fail "unmount failed"
  echo OK; exit 0
fi
cd $T    # fio may leave state files in the working directory
job=(--name=live --ioengine=psync --rw=randwrite --bs=64k --size=32M --offset=16M
     --verify=crc32c --randrepeat=1 --randseed=4242 --verify_state_save=0)
# fio writes at 8 MiB/s (about 4 s); the merge starts once it is under way.
fio "${job[@]}" --filename=$disk --do_verify=0 --end_fsync=1 --rate=8m > $T/fio-write.out 2>&1 &
fpid=$!
sleep 1
"$CORFS" merge --state $st d --rate 4M || fail "merge for the fio round failed to start"
wait $fpid || { cat $T/fio-write.out; fail "fio write through the mount failed"; }
echo "fio wrote; job then: $(status $st -c .job)"
[ "$(status $st .job.done_bytes)" -gt 0 ] || fail "the merge did not copy anything while fio wrote"
"$CORFS" merge --state $st d --rate 0 --wait || fail "merge --wait after fio did not reach synced"
[ "$(status $st .dirty_bytes)" = 0 ] || fail "dirty_bytes after the fio round"
fio "${job[@]}" --filename=$T/parent.img --verify_only > $T/fio-verify.out 2>&1 \
  || { cat $T/fio-verify.out; fail "fio --verify_only over the parent file failed"; }
grep -q "err= 0" $T/fio-verify.out || { cat $T/fio-verify.out; fail "fio verify reported errors"; }
grep -q "io=32.0MiB" $T/fio-verify.out || { cat $T/fio-verify.out; fail "fio did not verify all 32 MiB"; }
echo "fio --verify_only over the parent: $(grep -m1 'READ:' $T/fio-verify.out)"
cmp $disk $T/parent.img || fail "after the fio round the disk differs from the parent"
corfs_unmount $mnt || fail "unmount failed"
echo OK
