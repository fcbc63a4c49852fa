#!/usr/bin/env bash
# A mirror's `abort` copies to a slow parent (each parent write 1 s, eight
# blocks to copy: about 8 s).  Its copy runs as a job (kind "abort"), and
# the command's reply is its outcome:
#  - while it copies, `status` and `metrics` answer at once
#    (< 2 s), and status shows the job: kind abort, state running, with
#    its progress (total_bytes the bytes to copy);
#  - the abort's reply arrives only once the copy is done: not before the
#    parent got its last write, and then nothing is left dirty and the
#    disk is handed off;
#  - afterwards status shows the abort job done with every byte copied,
#    and the events stream (subscribed before) got `aborted`.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires nbdkit eval --dump-plugin
requires fusermount3 --version
requires jq --version

MiB=$((1 << 20))
HOLD=3 N=8
img=$T/parent.img
head -c $((32 * MiB)) /dev/urandom > "$img"
now_ms () { local t=${EPOCHREALTIME/./}; echo $(( t / 1000 )); }
start_nbdkit "$T/e.pid" -U "$T/e.sock" eval \
  thread_model='echo parallel' \
  get_size="stat -c %s '$img'" \
  pread="dd if='$img' skip=\$4 count=\$3 iflag=skip_bytes,count_bytes status=none" \
  pwrite="if [ -e '$T/fail' ]; then echo EPERM refused >&2; exit 1; fi
          if [ -e '$T/slow' ]; then sleep 1; fi
          dd of='$img' seek=\$4 bs=\$3 count=1 oflag=seek_bytes conv=notrunc status=none
          if [ -e '$T/slow' ]; then echo x >> '$T/writes'; fi" \
  flush="true" can_flush="exit 0" can_write="exit 0"
cleanup_fn rm -f "$T/fail" "$T/slow"
st=$T/state mnt=$T/mnt
corfs_mount "$st" "$mnt" --hold $HOLD --stream=paused --write-mode=mirror --parent-owned \
  --disk d="$(nbd_uri "$T/e.sock")"
status () { "$CORFS" status --state "$st" d --json | jq -r "$@"; }

"$CORFS" events --state "$st" > "$T/events" 2>&1 & epid=$!
cleanup_fn kill_pid $epid

# N blocks the parent lacks (their parent writes failed), apart: N runs.
touch "$T/fail"
for i in $(seq 0 $((N - 1))); do
  dd if=/dev/urandom of="$mnt/d" bs=4096 count=1 seek=$((i * 512)) oflag=direct conv=notrunc \
    status=none 2>/dev/null && fail "write $i succeeded although the parent failed it"
done
rm -f "$T/fail"
dirty=$(status .dirty_bytes)
[ "$dirty" -gt 0 ] || fail "nothing dirty"

touch "$T/slow"
t0=$(now_ms)
( rc=0; out=$(timeout 90 "$CORFS" abort --state "$st" d 2>&1) || rc=$?
  echo "$rc $(( $(now_ms) - t0 )) $out" > "$T/abort.tmp"; mv "$T/abort.tmp" "$T/abort.out" ) & ap=$!

# prompt WHAT CMD...: CMD answers, within 2 s.
prompt () {
  local what=$1 t rc=0 ms; shift
  t=$(now_ms)
  timeout 60 "$@" > "$T/p.txt" 2>&1 || rc=$?
  ms=$(( $(now_ms) - t ))
  [ $rc -eq 0 ] || fail "$what failed during the abort: $(cat "$T/p.txt")"
  [ $ms -lt 2000 ] || fail "$what took $ms ms during the abort"
  echo "$what answered in $ms ms"
}
sleep 1.5
seen_running=0
for k in 1 2 3; do
  prompt "status" "$CORFS" status --state "$st" d --json
  [ -e "$T/abort.out" ] && fail "the abort answered while it was still copying: $(cat "$T/abort.out")"
  job=$(jq -c .job "$T/p.txt")
  echo "job during the abort: $job"
  if [ "$(jq -r .kind <<<"$job")/$(jq -r .state <<<"$job")" = abort/running ]; then
    seen_running=1
    [ "$(jq -r .total_bytes <<<"$job")" -eq "$dirty" ] ||
      fail "the abort job's total_bytes is not the bytes to copy ($dirty): $job"
  fi
  prompt "metrics" "$CORFS" metrics --state "$st"
  prompt "status of every disk" "$CORFS" status --state "$st" --json
  sleep 0.5
done
[ $seen_running -eq 1 ] || fail "status never showed the abort job running"

wait $ap
read -r arc ams _ < "$T/abort.out"
writes=$(wc -l < "$T/writes")
echo "abort: rc $arc after $ams ms; the parent got $writes slow writes"
[ "$arc" -eq 0 ] || fail "abort failed: $(cat "$T/abort.out")"
[ "$writes" -ge $N ] || fail "the abort answered after $writes of $N parent writes"
[ "$ams" -ge $((N * 1000)) ] || fail "the abort answered after $ams ms, before its copy could be done"
js=$("$CORFS" status --state "$st" d --json)
echo "after the abort: $(jq -c '{owner, dirty_bytes, suspect_bytes, job}' <<<"$js")"
[ "$(jq -r .owner.state <<<"$js")" = handed-off ] || fail "not handed off after the abort's reply"
[ "$(jq -r .dirty_bytes <<<"$js")" -eq 0 ] || fail "dirty blocks left after the abort's reply"
[ "$(jq -r .job.kind <<<"$js")/$(jq -r .job.state <<<"$js")" = abort/done ] ||
  fail "status does not show the abort job done: $(jq -c .job <<<"$js")"
[ "$(jq -r .job.done_bytes <<<"$js")" -ge "$dirty" ] || fail "the abort job's done_bytes: $(jq -c .job <<<"$js")"
rm -f "$T/slow"
cmp "$mnt/d" "$img" || fail "the parent differs from the disk after the abort"
for i in $(seq 50); do grep -q '"event":"aborted"' "$T/events" && break; sleep 0.1; done
grep -q '"event":"aborted"' "$T/events" || { cat "$T/events"; fail "no aborted event"; }
echo OK
