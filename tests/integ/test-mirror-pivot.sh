#!/usr/bin/env bash
# Mirror, then pivot: a disk mounted with --write-mode=mirror --parent-owned
# over a writable nbdkit export takes writes while a slowed streamer copies
# it; `stream --wait` completes (mirror-ready event); `corfs pivot` exits 0;
# status is standalone with the parent detached; with nbdkit stopped every
# byte still reads and equals the parent file; a remount without the
# parent serves the same bytes; writes after the pivot work and leave the
# parent file alone.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version

size=$((48 * 1048576))
head -c $size /dev/urandom > $T/parent.img
cp $T/parent.img $T/expected.img
start_nbdkit $T/nbd.pid -U $T/sock file $T/parent.img
st=$T/state mnt=$T/mnt
corfs_mount $st $mnt --stream=paused --write-mode=mirror --parent-owned \
  --disk d="$(nbd_uri $T/sock)"
disk=$mnt/d
status () { "$CORFS" status --state $st d --json | jq -r "$@"; }

"$CORFS" events --state $st > $T/events 2>&1 &
epid=$!
cleanup_fn kill_pid $epid

# wr OFF LEN: the same fsync'd write to the disk and to the expected image.
wr () { twin_write $disk $T/expected.img "$1" "$2" || fail "write of $2 bytes at $1 failed"; }

# Pivot before the copy completes is refused (the full refusal checks are
# in test-mirror-refusals.sh).
"$CORFS" pivot --state $st d > $T/pivot0.out 2>&1 && fail "pivot before the copy succeeded"

"$CORFS" stream --state $st d --rate 8M || fail "stream --rate 8M failed"
# Writes during the copy (bounded: 60 writes), spread over the disk.
for i in $(seq 60); do
  len=$(( (RANDOM % 32 + 1) * 4096 - RANDOM % 4096 ))
  off=$(( (RANDOM * 32768 + RANDOM) % (size - len) ))
  wr $off $len
done
js=$("$CORFS" status --state $st d --json)
echo "after the writes: stream $(jq -c .stream <<<"$js")"
[ "$(jq -r .dirty_bytes <<<"$js")" = 0 ] || fail "dirty_bytes $(jq -r .dirty_bytes <<<"$js") during the mirror"
cmp $T/parent.img $T/expected.img || fail "the parent file lacks acknowledged mirror writes"

"$CORFS" stream --state $st d --rate 0 --wait || fail "stream --wait did not complete"
for i in $(seq 50); do grep -q '"event":"mirror-ready"' $T/events && break; sleep 0.1; done
grep -q '"event":"mirror-ready"' $T/events || { cat $T/events; fail "no mirror-ready event"; }
[ "$(status .complete)" = true ] || fail "not complete after stream --wait"

# A last write between mirror-ready and the pivot also goes to both.
wr $((size - 5000)) 5000

"$CORFS" pivot --state $st d > $T/pivot.out 2>&1 || { cat $T/pivot.out; fail "corfs pivot failed"; }
js=$("$CORFS" status --state $st d --json)
echo "after pivot: owner $(jq -c .owner <<<"$js"), parent $(jq -c .parent <<<"$js")"
[ "$(jq -r .owner.state <<<"$js")" = standalone ] || fail "owner state $(jq -r .owner.state <<<"$js") after pivot, expected standalone"
[ "$(jq -r .parent.state <<<"$js")" = detached ] || fail "parent state $(jq -r .parent.state <<<"$js") after pivot, expected detached"
[ "$(jq -r .complete <<<"$js")" = true ] || fail "not complete after pivot"
for i in $(seq 50); do grep -q '"event":"pivoted"' $T/events && break; sleep 0.1; done
grep -q '"event":"pivoted"' $T/events || { cat $T/events; fail "no pivoted event"; }
# A second pivot is refused (not a mirror any more), and so is abort.
"$CORFS" pivot --state $st d > $T/pivot2.out 2>&1 && fail "a second pivot succeeded"
"$CORFS" abort --state $st d > $T/abort.out 2>&1 && fail "abort after pivot succeeded"
echo "pivot again: $(cat $T/pivot2.out); abort: $(cat $T/abort.out)"

cmp $T/parent.img $T/expected.img || fail "the parent at the pivot differs from the expected image"
cp $T/parent.img $T/parent-at-pivot.img

# The old storage goes away: every byte still reads.
kill_pid "$(cat $T/nbd.pid)"
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
cmp $disk $T/parent-at-pivot.img || fail "after the pivot and nbdkit stopped, the disk differs from the parent"

# Writes after the pivot work and do not touch the parent file.
wr $((3 * 1048576 + 77)) 200000
wr 0 4096
cmp $disk $T/expected.img || fail "the disk differs from the expected image after post-pivot writes"
cmp $T/parent.img $T/parent-at-pivot.img || fail "a post-pivot write changed the parent file"
[ "$(status .owner.state)" = standalone ] || fail "owner state changed after writes"

corfs_unmount $mnt || fail "unmount failed"

# Remount without the parent (nbdkit is gone): it mounts and reads the same.
corfs_mount $st $mnt || fail "remount after the pivot (no parent) failed"
js=$("$CORFS" status --state $st d --json)
echo "after remount: owner $(jq -c .owner <<<"$js"), parent $(jq -c .parent <<<"$js"), complete $(jq -r .complete <<<"$js")"
[ "$(jq -r .owner.state <<<"$js")" = standalone ] || fail "owner state $(jq -r .owner.state <<<"$js") after remount"
cmp $disk $T/expected.img || fail "after remount the disk differs from the expected image"
wr $((20 * 1048576)) 65536
cmp $disk $T/expected.img || fail "a write after the remount did not read back"
cmp $T/parent.img $T/parent-at-pivot.img || fail "the parent file changed after the remount"
corfs_unmount $mnt || fail "second unmount failed"
echo OK
