#!/usr/bin/env bash
# `corfs unmount` while a mirror's `abort` copies dirty blocks to a slow
# parent (each write 1 s): the copy is cancelled (remote_cancel), and
#  - the abort's client gets the documented shutdown message ("interrupted
#    at offset N by the daemon's shutdown; the mirror is still active"),
#    not a copy failure;
#  - the cancelled requests are not logged as errors;
#  - after a remount the disk is an active mirror, the blocks not yet
#    copied are still dirty, and nothing was marked suspect (a cancelled
#    flush would mark every block); a second abort completes.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires nbdkit eval --dump-plugin
requires fusermount3 --version
requires jq --version

MiB=$((1 << 20))
# test-abort-shutdown-slow.sh runs this with a parent write slower than
# the stop's wait for the disk (5 s): the identity cannot be sealed then,
# and the remount must still work (it once compared a stale one).
HOLD=${ABORT_HOLD:-3} SLOW=${ABORT_SLOW:-1} WAIT=${ABORT_WAIT:-2.5}
img=$T/parent.img
head -c $((32 * MiB)) /dev/urandom > "$img"
start_eval_parent "$T/e.sock" "$img" --fail-writes "$T/fail" --slow-writes "$T/slow" "$SLOW"
cleanup_fn rm -f "$T/fail" "$T/slow"
st=$T/state mnt=$T/mnt
corfs_mount "$st" "$mnt" --hold $HOLD --stream=paused --write-mode=mirror --parent-owned \
  --disk d="$(nbd_uri "$T/e.sock")"
touch "$T/fail"
for i in $(seq 0 11); do
  dd if=/dev/urandom of="$mnt/d" bs=4096 count=1 seek=$((i * 512)) oflag=direct conv=notrunc \
    status=none 2>/dev/null && fail "write $i succeeded although the parent failed it"
done
rm -f "$T/fail"
touch "$T/slow"
( rc=0; out=$(timeout 60 "$CORFS" abort --state "$st" d 2>&1) || rc=$?
  echo "$rc $out" > "$T/abort.out" ) & ap=$!
sleep "$WAIT"                             # a few blocks copied, one in flight
timeout 60 "$CORFS" unmount "$mnt" || fail "corfs unmount failed"
wait $ap
echo "abort: $(cat "$T/abort.out")"
read -r arc _ < "$T/abort.out"
[ "$arc" -ne 0 ] || fail "the abort completed before the unmount (test broken)"
grep -q "abort: interrupted at offset [0-9]* by the daemon's shutdown; the mirror is still active" "$T/abort.out" ||
  fail "the abort cut short by the shutdown did not say so: $(cat "$T/abort.out")"
if grep -E "error: .*(Operation canceled|cancelled)" "$st/corfs.log"; then
  fail "requests cancelled at shutdown were logged as errors"
fi
rm -f "$T/slow"
corfs_mount "$st" "$mnt" --hold $HOLD
is_mounted "$mnt" || { tail -5 "$st/corfs.log"; fail "the remount after the interrupted abort failed"; }
js=$("$CORFS" status --state "$st" d --json)
echo "after the remount: $(jq -c '{owner, dirty_bytes, suspect_bytes}' <<<"$js")"
[ "$(jq -r .owner.state <<<"$js")" = active ] || fail "not an active mirror after the interrupted abort"
[ "$(jq -r .dirty_bytes <<<"$js")" -gt 0 ] || fail "no dirty blocks left: the abort was not interrupted (test broken)"
[ "$(jq -r .suspect_bytes <<<"$js")" -lt $((32 * MiB)) ] || fail "the whole disk was marked suspect"
"$CORFS" abort --state "$st" d || fail "the second abort failed"
echo OK
