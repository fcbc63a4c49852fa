#!/usr/bin/env bash
# A grow (truncate; QEMU's block_resize) is a guest request: it ends
# within its one hold, whatever it waits on (the short last block's
# fetch, then the claims in flight), not a fresh hold for each wait:
#  - --hold 3; a parent of 8 MiB + 1000 bytes (its last block short)
#    whose reads take 2.8 s while $T/stall exists;
#  - `truncate -s +64M` fetches the short block (2.8 s); 1.5 s into that
#    fetch a cold read of another block starts (2.8 s too), which the
#    grow must then wait for: the truncate fails (EIO) within the hold
#    plus 1 s, rather than at the read's end;
#  - the disk keeps its old size (stat, status size), the failure is
#    logged naming the disk;
#  - once the parent answers, the same grow succeeds.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires nbdkit eval --dump-plugin
requires fusermount3 --version
requires jq --version

HOLD=3 bs=65536 psize=$((8 * 1048576 + 1000)) grow=$((64 * 1048576))
img=$T/parent.img
head -c $psize /dev/urandom > "$img"
now_ms () { local t=${EPOCHREALTIME/./}; echo $(( t / 1000 )); }
# While $T/stall exists every read sleeps 2.8 s; the short last block's
# read says so first ($T/tail-read).
tail_off=$((psize / bs * bs))
start_eval_parent $T/e.sock "$img" --before-read \
  "if [ -e '$T/stall' ]; then [ \$4 -lt $tail_off ] || touch '$T/tail-read'; sleep 2.8; fi"
st=$T/state mnt=$T/mnt
corfs_mount $st $mnt --hold $HOLD --block-size 64K --disk d="$(nbd_uri $T/e.sock)"
cleanup_fn rm -f $T/stall
log=$st/corfs.log
js () { "$CORFS" status --state $st d --json | jq -r "$@"; }
dd if=$mnt/d of=/dev/null bs=64K count=1 iflag=direct status=none   # parent attached

echo "=== a grow that waits on the short block's fetch, then on a cold read"
touch $T/stall
t0=$(now_ms)
( rc=0; truncate -s +$grow $mnt/d 2> $T/terr || rc=$?
  echo "$rc $(( $(now_ms) - t0 ))" > $T/trunc ) &
tp=$!
for i in $(seq 100); do [ -e $T/tail-read ] && break; sleep 0.05; done
[ -e $T/tail-read ] || fail "the grow did not fetch the short last block"
sleep 1.5
( dd if=$mnt/d of=/dev/null bs=64K count=1 skip=50 iflag=direct status=none || true ) &
rp=$!
wait $tp
read -r rc ms < $T/trunc
echo "truncate: rc $rc after $ms ms (hold ${HOLD} s): $(cat $T/terr)"
[ $rc -ne 0 ] || fail "the grow succeeded after $ms ms, past its hold of $HOLD s"
[ $ms -le $(( (HOLD + 1) * 1000 )) ] || fail "the grow took $ms ms, past its hold of $HOLD s + 1"
grep -q "Input/output error" $T/terr || fail "the grow did not fail with EIO: $(cat $T/terr)"
[ "$(stat -c %s $mnt/d)" = $psize ] || fail "size $(stat -c %s $mnt/d) after the failed grow"
[ "$(js .size)" = $psize ] || fail "status size $(js .size) after the failed grow"
grep -q "disk d: resize from $psize to $((psize + grow)) bytes refused" $log \
  || fail "no log line for the failed grow"

echo "=== once the parent answers, the grow succeeds"
rm -f $T/stall
wait $rp
truncate -s +$grow $mnt/d || fail "the grow failed with the parent answering"
[ "$(stat -c %s $mnt/d)" = $((psize + grow)) ] || fail "size $(stat -c %s $mnt/d) after the grow"
[ "$(js .size)" = $((psize + grow)) ] || fail "status size $(js .size) after the grow"
corfs_unmount $mnt
echo "PASS"
