#!/usr/bin/env bash
# Merge into an NFS parent (nfs-ganesha VFS on 127.0.0.1, tests/servers/ganesha.sh):
#  - NFSv3, mounted with --parent-owned: writes through the mount (aligned,
#    unaligned, spanning blocks, into blocks never fetched, the last bytes),
#    then `corfs merge --state S d --wait` exits 0 and the exported file
#    equals the disk byte for byte; dirty_bytes 0, job merge/synced, parent
#    not "changed";
#  - NFSv4: `corfs merge --parent-owned` fails, saying NFSv4 is read-only,
#    writes nothing and leaves the disk dirty.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/../servers/ganesha.sh"
requires fusermount3 --version
requires jq --version
ganesha_requires

MiB=1048576 size=$((32 * 1048576))
exp=$T/export
mkdir -p $exp
head -c $size /dev/urandom > $T/orig.img
cp $T/orig.img $exp/v3.img; cp $T/orig.img $exp/v4.img; cp $T/orig.img $T/expected.img
start_ganesha $exp

status () { "$CORFS" status --state "$1" d --json | jq -r "(if type == \"array\" then .[0] else . end) | $2"; }

# wr DISK EXPECTED OFF LEN [oflag]: the same write to the mount (fsync'd)
# and to the expected image.
wr () { twin_write "$@" || fail "write of $4 bytes at $3 to $1 failed"; }

### 1. NFSv3, owned: merged.
st=$T/st3 mnt=$T/mnt3
corfs_mount $st $mnt --parent-owned --disk d="$(nfs3_url $exp/v3.img)"
d=$mnt/d
dd if=$d of=/dev/null bs=64K count=16 status=none || fail "v3: reading the first blocks failed"
wr $d $T/expected.img $((3 * 65536)) 65536                  # aligned, one block
wr $d $T/expected.img $((5 * 65536 - 3)) 9                  # across a block boundary
wr $d $T/expected.img $((MiB + 123)) 200000                 # unaligned, spanning blocks
wr $d $T/expected.img $((8 * MiB)) 131072                   # missing blocks, whole
wr $d $T/expected.img $((12 * MiB + 999)) 1234              # a missing block, partial
wr $d $T/expected.img $((20 * MiB + 4096)) 8192 direct      # missing, O_DIRECT
wr $d $T/expected.img $((size - 5)) 5                       # the last bytes
cmp -s $exp/v3.img $T/orig.img || fail "v3: the parent changed before the merge"
[ "$(status $st .dirty_bytes)" -gt 0 ] || fail "v3: dirty_bytes is 0 after writes"

rc=0; timeout 80 "$CORFS" merge --state $st d --wait > $T/m3.out 2> $T/m3.err || rc=$?
[ $rc -eq 0 ] || fail "v3: merge --wait exited $rc: $(cat $T/m3.err)"
cmp $exp/v3.img $T/expected.img || fail "v3: the exported file differs from the disk after merge"
cmp $d $T/expected.img || fail "v3: the disk reads differently after merge"
[ "$(status $st .dirty_bytes)" = 0 ] || fail "v3: dirty_bytes $(status $st .dirty_bytes) after merge"
[ "$(status $st .job.kind)/$(status $st .job.state)" = merge/synced ] \
  || fail "v3: job after merge --wait: $(status $st .job.kind)/$(status $st .job.state)"
[ "$(status $st .parent.state)" != changed ] \
  || fail "v3: parent 'changed' after the merge: $(status $st .parent.last_error)"
cmp -s $exp/v4.img $T/orig.img || fail "the v3 merge touched another file"
pid=$(daemon_pid $st)
corfs_unmount $mnt || fail "v3: unmount failed"
wait_gone "$pid"
echo "v3: merged; the exported file equals the disk"

### 2. NFSv4: refused, read-only.
st=$T/st4 mnt=$T/mnt4
corfs_mount $st $mnt --disk d="$(nfs4_url $exp/v4.img)"
head -c 65536 /dev/urandom > $T/blk
dd if=$T/blk of=$mnt/d bs=64K seek=7 conv=notrunc,fsync status=none || fail "v4: write failed"
dirty=$(status $st .dirty_bytes)
[ "$dirty" -gt 0 ] || fail "v4: dirty_bytes is 0 after a write"
rc=0; timeout 60 "$CORFS" merge --state $st d --parent-owned --wait > $T/m4.out 2> $T/m4.err || rc=$?
echo "v4: merge --parent-owned exit $rc, stderr: $(cat $T/m4.err)"
[ $rc -ne 0 ] || fail "v4: merge into an NFSv4 parent succeeded"
[ $rc -ne 124 ] || fail "v4: merge into an NFSv4 parent hung"
cmp -s $exp/v4.img $T/orig.img || fail "v4: a refused merge changed the parent"
[ "$(status $st .dirty_bytes)" = "$dirty" ] || fail "v4: a refused merge changed dirty_bytes"
[ "$(status $st .job.state)" != synced ] || fail "v4: a refused merge says synced"
grep -qi "read-only" $T/m4.err || fail "v4: the refusal does not say read-only: $(cat $T/m4.err)"
grep -qi "nfsv4" $T/m4.err \
  || fail "v4: the refusal does not say that NFSv4 parents are read-only: $(cat $T/m4.err)"
pid=$(daemon_pid $st)
corfs_unmount $mnt || fail "v4: unmount failed"
wait_gone "$pid"
echo PASS
