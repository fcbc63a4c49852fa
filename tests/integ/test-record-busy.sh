#!/usr/bin/env bash
# Record writers other than an owner-state transition wait for one at most
# the hold.  A mirror's `abort` holds the record (owner_lock) through its
# whole copy, here about 16 s (16 dirty blocks, each parent write 1 s).
# Meanwhile:
#  - `status` answers at once, and `merge` is refused at once (it runs as a
#    long command, one per disk);
#  - the streamer, resumed during the copy, completes and must record it:
#    it waits at most the hold (3 s), then says the record is busy and
#    retries, instead of waiting for the whole copy;
#  - the abort itself succeeds.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires nbdkit eval --dump-plugin
requires fusermount3 --version
requires jq --version

MiB=$((1 << 20))
HOLD=3
img=$T/parent.img
head -c $((32 * MiB)) /dev/urandom > "$img"
now_ms () { local t=${EPOCHREALTIME/./}; echo $(( t / 1000 )); }
start_eval_parent "$T/e.sock" "$img" --fail-writes "$T/fail" --slow-writes "$T/slow" 1
cleanup_fn rm -f "$T/fail" "$T/slow"
st=$T/state mnt=$T/mnt
corfs_mount "$st" "$mnt" --hold $HOLD --stream=paused --write-mode=mirror --parent-owned \
  --disk d="$(nbd_uri "$T/e.sock")"
# Sixteen blocks the parent lacks (their parent writes failed).
touch "$T/fail"
for i in $(seq 0 15); do
  dd if=/dev/urandom of="$mnt/d" bs=4096 count=1 seek=$((i * 512)) oflag=direct conv=notrunc \
    status=none 2>/dev/null && fail "write $i succeeded although the parent failed it"
done
rm -f "$T/fail"
[ "$("$CORFS" status --state "$st" d --json | jq -r .dirty_bytes)" -gt 0 ] || fail "nothing dirty"
touch "$T/slow"
t0=$(now_ms)
( rc=0; out=$(timeout 90 "$CORFS" abort --state "$st" d 2>&1) || rc=$?
  echo "$rc $(( $(now_ms) - t0 )) $out" > "$T/abort.out" ) & ap=$!
sleep 1
t=$(now_ms)
"$CORFS" status --state "$st" d --json > /dev/null || fail "status failed during the abort"
ms=$(( $(now_ms) - t )); echo "status answered in $ms ms"
[ $ms -lt 2000 ] || fail "status took $ms ms during the abort"
t=$(now_ms); rc=0
out=$(timeout 60 "$CORFS" merge --state "$st" d --parent-owned 2>&1) || rc=$?
ms=$(( $(now_ms) - t )); echo "merge: rc $rc after $ms ms: $out"
[ $rc -ne 0 ] || fail "merge started during the abort"
[ $ms -lt 2000 ] || fail "merge took $ms ms to answer during the abort"
"$CORFS" stream --state "$st" d >/dev/null || fail "stream resume failed"
t=$(now_ms)
for i in $(seq 200); do
  grep -q "recording completion: disk d: the record is busy" "$st/corfs.log" && break
  [ -e "$T/abort.out" ] && break
  sleep 0.1
done
ms=$(( $(now_ms) - t ))
[ -e "$T/abort.out" ] && fail "the streamer's record update waited for the whole abort copy (hold $HOLD s): $(cat "$T/abort.out")"
grep -q "recording completion: disk d: the record is busy" "$st/corfs.log" ||
  fail "the streamer's record update still waited after $ms ms (hold $HOLD s)"
echo "the streamer's record update gave up after about $ms ms"
wait $ap
echo "abort: $(cat "$T/abort.out")"
read -r arc ams _ < "$T/abort.out"
[ "$arc" -eq 0 ] || fail "abort failed: $(cat "$T/abort.out")"
[ "$("$CORFS" status --state "$st" d --json | jq -r .owner.state)" = handed-off ] || fail "not handed off"
rm -f "$T/slow"
echo OK
