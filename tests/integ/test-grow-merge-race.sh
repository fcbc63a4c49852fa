#!/usr/bin/env bash
# A merge started while a grow is in progress is refused.  ctl's "was
# grown" check looks at the size, which a grow publishes only at its end,
# under the owner lock; the merge's record updates (the --parent-owned
# declaration, the merging mark) wait for that lock and must check the
# record again there:
#  - a parent of 8 MiB + 1000 bytes (its last block short), whose read of
#    that block stalls: `truncate -s +1M` holds the grow in that fetch;
#  - `merge --parent-owned` issued meanwhile fails, saying grown;
#  - the grow completes; no merge ran (no "merging" log line, the parent
#    file unchanged), and nothing was recorded: the disk is not
#    parent-owned nor merging (a second grow is accepted, which either
#    would refuse).
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires nbdkit eval --dump-plugin
requires fusermount3 --version
requires jq --version

HOLD=5 bs=65536 psize=$((8 * 1048576 + 1000))
img=$T/parent.img
head -c $psize /dev/urandom > "$img"
cp "$img" $T/orig.img
# While $T/stall exists, a read of the short last block says so
# ($T/tail-read) and sleeps 3 s: the grow's fetch of it.
tail_off=$((psize / bs * bs))
start_eval_parent $T/e.sock "$img" --write --before-read \
  "if [ -e '$T/stall' ] && [ \$4 -ge $tail_off ]; then touch '$T/tail-read'; sleep 3; fi"
st=$T/state mnt=$T/mnt
corfs_mount $st $mnt --hold $HOLD --block-size 64K --disk d="$(nbd_uri $T/e.sock)"
cleanup_fn rm -f $T/stall
log=$st/corfs.log
dd if=$mnt/d of=/dev/null bs=64K count=1 iflag=direct status=none   # parent attached

echo "=== merge --parent-owned during a grow"
touch $T/stall
( rc=0; truncate -s +1M $mnt/d || rc=$?; echo $rc > $T/trunc ) &
tp=$!
for i in $(seq 100); do [ -e $T/tail-read ] && break; sleep 0.1; done
[ -e $T/tail-read ] || fail "the grow did not fetch the short last block"
rm -f $T/stall
[ ! -e $T/trunc ] || fail "the grow ended before the merge was issued"
rc=0; "$CORFS" merge --state $st d --parent-owned > $T/mout 2>&1 || rc=$?
wait $tp
echo "merge: rc $rc: $(cat $T/mout)"
[ "$(cat $T/trunc)" = 0 ] || fail "the grow failed (rc $(cat $T/trunc))"
[ $rc -ne 0 ] || fail "a merge issued during a grow was accepted"
grep -q "grown" $T/mout || fail "the merge refusal does not say grown: $(cat $T/mout)"

echo "=== nothing merged, nothing recorded"
new=$((psize + 1048576))
[ "$(stat -c %s $mnt/d)" = $new ] || fail "size $(stat -c %s $mnt/d) after the grow, expected $new"
sleep 1
if grep -q "merge: disk d: merging" $log; then fail "a merge ran on the grown disk"; fi
state=$("$CORFS" status --state $st d --json | jq -r .job.state)
[ "$state" != running ] || fail "a merge job is running on the grown disk"
cmp $T/orig.img "$img" || fail "the parent was written"
truncate -s +64K $mnt/d || fail "a second grow was refused: the disk was recorded parent-owned or merging"
corfs_unmount $mnt
echo "PASS"
