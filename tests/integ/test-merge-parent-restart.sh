#!/usr/bin/env bash
# The parent dies in the middle of a merge and comes back (docs/design.md rules
# 9 and 11).  A merge writes several pieces at once, on several NBD
# connections; a connection that dies with unflushed writes must fail the
# flush that would have vouched for them, so those blocks stay dirty and
# are written again.  Checks, for an 80 MiB disk of scattered and whole
# dirty runs, merged at 8 MiB/s while the parent (nbdkit) is killed with
# SIGKILL twice and restarted on the same socket:
#  - the running job does not give up (state "running" while the parent
#    is down) and reports the failure (job.errors or parent.last_error);
#  - `merge --wait` then reaches synced with dirty_bytes 0;
#  - the parent file equals the disk (every write of the guest in it).
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version

size=$((80 * 1048576))
head -c $size /dev/urandom > $T/orig.img
cp $T/orig.img $T/parent.img; cp $T/orig.img $T/expected.img

status () { "$CORFS" status --state $T/state d --json | jq -r "$@"; }
parent_up () { start_nbdkit $T/nbd.pid -U $T/sock file $T/parent.img; }
parent_kill () {
  kill -9 "$(cat $T/nbd.pid)"; wait_gone "$(cat $T/nbd.pid)"
  rm -f $T/sock $T/nbd.pid
}

parent_up
corfs_mount $T/state $T/mnt --disk d="$(nbd_uri $T/sock)"
# Dirty data: 64 MiB in one run (the merge's parallel pieces), then 64
# small unaligned runs spread over the rest.
twin_write $T/mnt/d $T/expected.img 0 $((64 * 1048576)) || fail "writing 64 MiB through the mount failed"
for i in $(seq 0 63); do
  twin_write $T/mnt/d $T/expected.img $((64 * 1048576 + i * 4 * 65536 + (i % 5) * 777)) \
    $((40000 + (i % 3) * 9000)) || fail "write $i failed"
done
cmp $T/mnt/d $T/expected.img || fail "the disk differs from what was written before the merge"
echo "dirty before the merge: $(status .dirty_bytes)"

"$CORFS" merge --state $T/state d --parent-owned --rate 8M || fail "merge did not start"
for round in 1 2; do
  sleep 0.7
  parent_kill
  echo "round $round: parent killed at $(status .job.done_bytes) of $(status .job.total_bytes) bytes"
  sleep 1.5
  # 68 MiB at 8 MiB/s: still running at the second kill (about 3 s of
  # merging), so the job is running unless it gave up.
  [ "$(status .job.state)" = running ] || fail "the merge is not running while the parent is down: $(status -c .job)"
  parent_up
done
timeout 60 "$CORFS" merge --state $T/state d --wait 2> $T/err ||
  fail "merge did not reach synced once the parent was back: $(cat $T/err); job $(status -c .job)"
js=$("$CORFS" status --state $T/state d --json)
echo "job: $(jq -c .job <<<"$js"); parent: $(jq -c .parent <<<"$js")"
[ "$(jq -r .job.state <<<"$js")" = synced ] || fail "job: $(jq -c .job <<<"$js")"
[ "$(jq -r .dirty_bytes <<<"$js")" = 0 ] || fail "dirty_bytes $(jq -r .dirty_bytes <<<"$js") after synced"
{ [ "$(jq -r .job.errors <<<"$js")" -gt 0 ] || [ "$(jq -r .counters.remote_retries <<<"$js")" -gt 0 ]; } ||
  fail "the parent was killed twice but nothing reports it: $(jq -c .job <<<"$js")"
corfs_unmount $T/mnt || fail "unmount failed"
kill "$(cat $T/nbd.pid)"
cmp $T/parent.img $T/expected.img || fail "the parent differs from the disk after the merge"
echo "ok: merged through two parent restarts"
