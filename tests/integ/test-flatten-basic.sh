#!/usr/bin/env bash
# Flatten:
#  1. `flatten --wait` on a cold disk (--stream=off, a few writes) exits 0
#     once the disk is filled and detached: status says owner.state
#     standalone, parent.state detached, complete true; with the parent
#     (nbdkit) stopped every byte still reads as the image with the writes
#     applied, and a remount without the parent mounts and reads the same;
#     the standalone disk still takes writes (kept across a remount), a
#     second flatten and a merge are refused;
#  2. `flatten --to FILE --wait` on another cold disk whose parent is
#     sparse (256 MiB, mostly holes) writes FILE equal to the disk,
#     sparse (allocated bytes far below its size), and leaves the disk
#     attached to its parent (owner.state active); a relative --to path
#     is resolved against the caller's directory.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version

status () { local s=$1; shift; "$CORFS" status --state "$s" d --json | jq -r "$@"; }

# wr DISK EXPECTED OFF LEN: the same write to the mount (fsync'd) and the
# expected image.
wr () { twin_write "$@" || fail "write of $4 bytes at $3 failed"; }

### 1. Flatten in place.
size=$((32 * 1048576))
head -c $size /dev/urandom > $T/parent.img
cp $T/parent.img $T/expected.img
start_nbdkit $T/nbd.pid -r -U $T/sock file $T/parent.img
st=$T/state mnt=$T/mnt
corfs_mount $st $mnt --disk d="$(nbd_uri $T/sock)"
wr $mnt/d $T/expected.img 1000 5000
wr $mnt/d $T/expected.img $((7 * 1048576 - 100)) 300000
wr $mnt/d $T/expected.img $((size - 65536)) 65536
[ "$(status $st .complete)" = false ] || fail "the disk should start incomplete"
timeout 80 "$CORFS" flatten --state $st d --wait 2> $T/err || fail "flatten --wait failed: $(cat $T/err)"
js=$("$CORFS" status --state $st d --json)
echo "after flatten: owner $(jq -c .owner <<<"$js"), parent $(jq -c .parent <<<"$js"), complete $(jq -r .complete <<<"$js"), job $(jq -c .job <<<"$js")"
[ "$(jq -r .owner.state <<<"$js")" = standalone ] || fail "owner.state $(jq -r .owner.state <<<"$js") after flatten"
[ "$(jq -r .parent.state <<<"$js")" = detached ] || fail "parent.state $(jq -r .parent.state <<<"$js") after flatten"
[ "$(jq -r .complete <<<"$js")" = true ] || fail "not complete after flatten"
[ "$(jq -r .job.kind <<<"$js")/$(jq -r .job.state <<<"$js")" = flatten/done ] || fail "job $(jq -c .job <<<"$js")"

# The parent goes away: everything still reads.
kill_pid "$(cat $T/nbd.pid)"
wait_gone "$(cat $T/nbd.pid)"
cmp $mnt/d $T/expected.img || fail "the flattened disk differs from the expected image (parent stopped)"
[ "$(status $st .parent.state)" = detached ] || fail "parent.state $(status $st .parent.state) after the parent stopped"

# A standalone disk has nothing to flatten or merge into.
rc=0; "$CORFS" flatten --state $st d --wait 2> $T/err || rc=$?
[ $rc -ne 0 ] || fail "a second flatten of a standalone disk succeeded"
echo "second flatten refused: $(cat $T/err)"
rc=0; "$CORFS" merge --state $st d --parent-owned --wait 2> $T/err || rc=$?
[ $rc -ne 0 ] || fail "merge on a standalone disk succeeded"
grep -qi standalone $T/err || fail "the merge refusal does not say standalone: $(cat $T/err)"

# Still writable, and it all survives a remount without the parent.
wr $mnt/d $T/expected.img $((12 * 1048576 + 3)) 100000
pid=$(daemon_pid $st)
corfs_unmount $mnt || fail "unmount failed"
wait_gone $pid
"$CORFS" mount --state $st --stream=off $mnt 2> $T/err \
  || fail "the flattened disk did not mount without its parent: $(cat $T/err)"
cmp $mnt/d $T/expected.img || fail "the flattened disk differs after the remount"
js=$("$CORFS" status --state $st d --json)
[ "$(jq -r .owner.state <<<"$js")/$(jq -r .parent.state <<<"$js")/$(jq -r .complete <<<"$js")" = standalone/detached/true ] \
  || fail "after the remount: owner $(jq -c .owner <<<"$js"), parent $(jq -c .parent <<<"$js")"
pid=$(daemon_pid $st)
corfs_unmount $mnt || fail "unmount (2) failed"
wait_gone $pid

### 2. flatten --to FILE from a sparse parent.
size2=$((256 * 1048576))
truncate -s $size2 $T/sparse.img
for o in 0 $((3 * 1048576 + 17)) $((100 * 1048576)) $((size2 - 70000)); do
  head -c 70000 /dev/urandom | dd of=$T/sparse.img bs=70000 count=1 seek=$o iflag=fullblock \
    oflag=seek_bytes conv=notrunc status=none
done
cp --sparse=always $T/sparse.img $T/expected2.img
start_nbdkit $T/nbd2.pid -r -U $T/sock2 file $T/sparse.img
st2=$T/state2 mnt2=$T/mnt2
corfs_mount $st2 $mnt2 --disk d="$(nbd_uri $T/sock2)"
wr $mnt2/d $T/expected2.img $((50 * 1048576 + 5)) 200000
wr $mnt2/d $T/expected2.img $((size2 - 2)) 2

timeout 80 "$CORFS" flatten --state $st2 d --to $T/copy.img --wait 2> $T/err \
  || fail "flatten --to FILE --wait failed: $(cat $T/err)"
[ "$(stat -c %s $T/copy.img)" = $size2 ] || fail "FILE has size $(stat -c %s $T/copy.img), expected $size2"
cmp $T/copy.img $T/expected2.img || fail "FILE differs from the disk's contents"
alloc=$(( $(stat -c %b $T/copy.img) * $(stat -c %B $T/copy.img) ))
echo "FILE: $size2 bytes, $alloc allocated"
[ $alloc -lt $((16 * 1048576)) ] || fail "FILE is not sparse: $alloc bytes allocated for about 1 MiB of data"
js=$("$CORFS" status --state $st2 d --json)
[ "$(jq -r .job.kind <<<"$js")/$(jq -r .job.state <<<"$js")" = copy/done ] || fail "job $(jq -c .job <<<"$js")"
[ "$(jq -r .owner.state <<<"$js")" = active ] || fail "flatten --to changed owner.state to $(jq -r .owner.state <<<"$js")"
[ "$(jq -r .parent.state <<<"$js")" != detached ] || fail "flatten --to detached the parent"

# A relative --to path, resolved against the caller's directory.
mkdir $T/out
( cd $T/out && timeout 80 "$CORFS" flatten --state $st2 d --to rel.img --wait ) 2> $T/err \
  || fail "flatten --to rel.img --wait failed: $(cat $T/err)"
[ -f $T/out/rel.img ] || fail "flatten --to rel.img (run in $T/out) did not create $T/out/rel.img"
cmp $T/out/rel.img $T/expected2.img || fail "the relative --to FILE differs from the disk's contents"
( cd $T && timeout 80 "$CORFS" flatten --state $st2 d --to out/../out/rel2.img --wait ) 2> $T/err \
  || fail "flatten --to out/../out/rel2.img --wait failed: $(cat $T/err)"
cmp $T/out/rel2.img $T/expected2.img || fail "flatten --to out/../out/rel2.img differs from the disk's contents"
corfs_unmount $mnt2 || fail "unmount (sparse) failed"
echo OK
