#!/usr/bin/env bash
# Merge against a parent whose writes fail (nbdkit error filter):
#  1. random EIO on 20% of NBD writes: the failures are reported (by the
#     job: errors > 0 and last_error; or, when the remote layer retried
#     them before the job saw them, as parent.last_error and
#     counters.remote_retries), the failed writes are retried and the merge
#     reaches synced; then the parent file equals the disk;
#  2. every write failing (error-pwrite-rate=100% while the file
#     error-pwrite-file names exists): after 3 s the job is still running,
#     dirty_bytes is unchanged (no dirty bit cleared for a block that was
#     not written), done_bytes is 0, the parent file is untouched,
#     parent.last_error says why, and the job itself reports errors and
#     last_error; once the file is removed the same merge completes
#     (`merge --wait`) and the parent equals the disk.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version
nbdkit --filter=error null --dump-plugin >/dev/null 2>&1 || skip "nbdkit error filter not installed"

size=$((32 * 1048576))
head -c $size /dev/urandom > $T/orig.img

status () { local s=$1; shift; "$CORFS" status --state "$s" d --json | jq -r "$@"; }

# wr DISK EXPECTED OFF LEN: the same write to the mount (fsync'd) and the
# expected image.
wr () { twin_write "$@" || fail "write of $4 bytes at $3 failed"; }

# scatter DISK EXPECTED: 48 separate dirty runs (every 8th block, some
# unaligned), so that the merge makes many separate parent writes.
scatter () {
  local i
  for i in $(seq 0 47); do
    wr "$1" "$2" $((i * 8 * 65536 + (i % 3) * 1000)) $((65536 - (i % 2) * 30000))
  done
}

### 1. Random write errors.
cp $T/orig.img $T/parent.img; cp $T/orig.img $T/expected.img
start_nbdkit $T/nbd.pid -U $T/sock --filter=error file $T/parent.img \
  error-pwrite=EIO error-pwrite-rate=20%
st=$T/state mnt=$T/mnt
corfs_mount $st $mnt --disk d="$(nbd_uri $T/sock)"
scatter $mnt/d $T/expected.img
echo "dirty: $(status $st .dirty_bytes)"
timeout 80 "$CORFS" merge --state $st d --parent-owned --wait 2> $T/err \
  || fail "merge against a parent failing 20% of writes did not reach synced: $(cat $T/err); job $(status $st -c .job)"
js=$("$CORFS" status --state $st d --json)
echo "job: $(jq -c .job <<<"$js")"
[ "$(jq -r .job.state <<<"$js")" = synced ] || fail "job: $(jq -c .job <<<"$js")"
[ "$(jq -r .dirty_bytes <<<"$js")" = 0 ] || fail "dirty_bytes $(jq -r .dirty_bytes <<<"$js") after synced"
# The failures are reported: by the job, or (retried inside the remote
# layer before the job sees them) as the parent's last error and retries.
echo "parent: $(jq -c .parent <<<"$js"); remote_retries $(jq -r .counters.remote_retries <<<"$js")"
{ [ "$(jq -r .job.errors <<<"$js")" -gt 0 ] && [ -n "$(jq -r .job.last_error <<<"$js")" ]; } \
  || { [ "$(jq -r .counters.remote_retries <<<"$js")" -gt 0 ] && [ -n "$(jq -r .parent.last_error <<<"$js")" ]; } \
  || fail "write errors were injected but nothing reports them: job $(jq -c .job <<<"$js"), parent $(jq -c .parent <<<"$js")"
cmp $T/parent.img $T/expected.img || fail "the parent differs from the disk after a merge with write errors"
corfs_unmount $mnt || fail "unmount failed"

### 2. Persistent write errors, then none.
cp $T/orig.img $T/parent2.img; cp $T/orig.img $T/expected2.img
touch $T/inject
start_nbdkit $T/nbd2.pid -U $T/sock2 --filter=error file $T/parent2.img \
  error-pwrite=EIO error-pwrite-rate=100% error-pwrite-file=$T/inject
st2=$T/state2 mnt2=$T/mnt2
corfs_mount $st2 $mnt2 --disk d="$(nbd_uri $T/sock2)"
scatter $mnt2/d $T/expected2.img
dirty0=$(status $st2 .dirty_bytes)
"$CORFS" merge --state $st2 d --parent-owned || fail "merge did not start"
sleep 3
js=$("$CORFS" status --state $st2 d --json)
echo "after 3 s of failing writes: dirty_bytes $(jq -r .dirty_bytes <<<"$js"), job $(jq -c .job <<<"$js")"
[ "$(jq -r .dirty_bytes <<<"$js")" = "$dirty0" ] \
  || fail "dirty_bytes went from $dirty0 to $(jq -r .dirty_bytes <<<"$js") although no write reached the parent"
[ "$(jq -r .job.state <<<"$js")" = running ] || fail "the merge gave up: $(jq -c .job <<<"$js")"
[ -n "$(jq -r .parent.last_error <<<"$js")" ] \
  || fail "parent.last_error is empty while every write fails: $(jq -c .parent <<<"$js")"
# The job itself must say why it makes no progress (checked last, so that
# the rest of the test still runs when this is what fails).
problem=""
[ -n "$(jq -r .job.last_error <<<"$js")" ] && [ "$(jq -r .job.errors <<<"$js")" -gt 0 ] \
  || problem="after 3 s of failing parent writes the merge job reports no error (job $(jq -c .job <<<"$js"); parent.last_error: $(jq -r .parent.last_error <<<"$js"))"
[ "$(jq -r .job.done_bytes <<<"$js")" = 0 ] || fail "done_bytes counts unwritten data: $(jq -c .job <<<"$js")"
cmp -s $T/parent2.img $T/orig.img || fail "the parent changed although every write failed"
rm $T/inject
# The backoff is at most 30 s; --wait returns at the synced instant.
timeout 80 "$CORFS" merge --state $st2 d --wait 2> $T/err \
  || fail "merge did not complete once the writes succeed again: $(cat $T/err); job $(status $st2 -c .job)"
js=$("$CORFS" status --state $st2 d --json)
echo "then: $(jq -c .job <<<"$js")"
[ "$(jq -r .job.state <<<"$js")/$(jq -r .dirty_bytes <<<"$js")" = synced/0 ] \
  || fail "after the errors stopped: dirty_bytes $(jq -r .dirty_bytes <<<"$js"), job $(jq -c .job <<<"$js")"
cmp $T/parent2.img $T/expected2.img || fail "the parent differs from the disk after the errors stopped"
corfs_unmount $mnt2 || fail "unmount (2) failed"
[ -z "$problem" ] || fail "$problem"
echo OK
