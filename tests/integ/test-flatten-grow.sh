#!/usr/bin/env bash
# `flatten --to FILE` while the disk grows (src/merge/copy.c): the copy
# reads the disk's size afresh at every piece, and at completion sizes the
# file to it (the grown range reads zeros, which the copy leaves holes):
# the finished file has the grown size, and equals the disk, data written
# into the grown range included.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --filter=delay null --dump-plugin
requires fusermount3 --version
requires jq --version

MiB=1048576
img=$T/parent.img
head -c $((64 * MiB)) /dev/urandom > $img
# Every parent read delayed: the copy of 64 cold MiB takes seconds.
start_nbdkit $T/nbd.pid -r -U $T/sock --filter=delay file $img rdelay=60ms
st=$T/state mnt=$T/mnt
corfs_mount $st $mnt --readahead 0 --disk d="$(nbd_uri $T/sock)"
status () { "$CORFS" status --state $st d --json | jq -r "$@"; }

"$CORFS" flatten --state $st d --to $T/out.img || fail "flatten --to did not start"
sleep 1
[ "$(status .job.kind)/$(status .job.state)" = copy/running ] \
  || fail "the copy is not running before the grow: $(status -c .job)"
truncate -s $((96 * MiB)) $mnt/d || fail "growing the disk failed"
head -c $MiB /dev/urandom > $T/data
dd if=$T/data of=$mnt/d bs=$MiB seek=80 conv=notrunc,fsync status=none \
  || fail "writing the grown range failed"
[ "$(status .job.kind)/$(status .job.state)" = copy/running ] \
  || fail "the copy ended before the grow was done: $(status -c .job)"
for i in $(seq 600); do [ "$(status .job.state)" = running ] || break; sleep 0.2; done
[ "$(status .job.kind)/$(status .job.state)" = copy/done ] || fail "the copy: $(status -c .job)"
[ "$(stat -c %s $T/out.img)" = $((96 * MiB)) ] \
  || fail "the copy is $(stat -c %s $T/out.img) bytes, not the grown $((96 * MiB))"
cmp $mnt/d $T/out.img || fail "the copy differs from the grown disk"
cmp -n $((64 * MiB)) $img $T/out.img || fail "the copy differs from the parent"
pid=$(daemon_pid $st)
corfs_unmount $mnt || fail "unmount failed"
wait_gone $pid
echo OK
