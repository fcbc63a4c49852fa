#!/usr/bin/env bash
# A writable NBD parent that offers no FLUSH (nbdkit's eval plugin over a
# file, with no can_flush): nothing written to it can be made durable, so
#  - `corfs merge` never says synced: the job keeps retrying with an error
#    that names the parent and says it offers no flush, dirty_bytes stays,
#    and the daemon log says so too;
#  - mirror mode is refused: at mount, and at activation of an incoming
#    disk, naming the disk and the parent (before, it was accepted, and
#    every guest fsync failed and marked the whole disk suspect again).
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version

size=$((4 * 1048576))
# noflush_nbdkit PIDFILE SOCKET IMAGE: the image, writable, without flush.
noflush_nbdkit () {
  start_nbdkit "$1" -U "$2" eval \
    get_size="echo $size" \
    pread="dd if=$3 skip=\$4 count=\$3 iflag=skip_bytes,count_bytes status=none" \
    pwrite="dd of=$3 seek=\$4 oflag=seek_bytes conv=notrunc status=none" \
    can_write='exit 0'
}

### 1. Merge.
head -c $size /dev/urandom > $T/parent.img
noflush_nbdkit $T/nbd.pid $T/sock $T/parent.img
st=$T/state mnt=$T/mnt
status () { "$CORFS" status --state $st d --json | jq -r "$@"; }
corfs_mount $st $mnt --parent-owned --disk d="$(nbd_uri $T/sock)"
head -c 100000 /dev/urandom > $T/data
dd if=$T/data of=$mnt/d bs=100000 seek=$((1048576 + 77)) oflag=seek_bytes conv=notrunc,fsync \
   status=none || fail "write to the disk failed"
dirty0=$(status .dirty_bytes)
[ "$dirty0" -gt 0 ] || fail "dirty_bytes is $dirty0 after a write"
"$CORFS" merge --state $st d || fail "merge start failed"
for i in $(seq 300); do
  [ "$(status .job.state)" = synced ] && break
  [ "$(status .job.errors)" -ge 2 ] && break
  sleep 0.1
done
echo "job: $(status -c .job)"
[ "$(status .job.state)" != synced ] || fail "merge into a parent without flush says synced"
[ "$(status .dirty_bytes)" = "$dirty0" ] || fail "dirty_bytes $(status .dirty_bytes), was $dirty0"
status .job.last_error | grep -q "offers no flush" || fail "the job's error does not say the parent offers no flush"
status .job.last_error | grep -qF "socket=$T/sock" || fail "the job's error does not name the parent"
grep -q "disk d: parent .*offers no flush" $st/corfs.log || fail "the log does not name the disk, the parent and the missing flush"
"$CORFS" merge --state $st d --cancel || fail "merge cancel failed"
pid=$(daemon_pid $st)
corfs_unmount $mnt || fail "unmount failed"
wait_gone $pid

### 2. Mirror mode: refused at mount, and at activation (every guest fsync
# would fail and mark the whole disk suspect again).
head -c $size /dev/urandom > $T/parent2.img
noflush_nbdkit $T/nbd2.pid $T/sock2 $T/parent2.img
st=$T/state2 mnt=$T/mnt2
mkdir -p $mnt
rc=0
"$CORFS" mount --state $st --stream=off --write-mode=mirror --parent-owned --hold 5 \
  --disk d="$(nbd_uri $T/sock2)" $mnt > $T/mount.out 2>&1 || rc=$?
echo "mirror mount over a parent without flush: exit $rc: $(cat $T/mount.out)"
if is_mounted $mnt; then cleanup_fn _force_unmount $st $mnt; fi
[ $rc -ne 0 ] || fail "mirror mode was accepted over a parent that offers no flush"
grep -q "disk d: mirror mode needs a parent that can flush: .*socket=$T/sock2" \
  $T/mount.out $st/corfs.log || fail "the refusal does not name the disk, the parent and the missing flush"
st=$T/state3 mnt=$T/mnt3
corfs_mount $st $mnt --incoming --write-mode=mirror --parent-owned --hold 5 --disk d="$(nbd_uri $T/sock2)"
rc=0; "$CORFS" activate --state $st d --epoch 1 --force 2> $T/err || rc=$?
echo "activating a mirror disk over a parent without flush: exit $rc: $(cat $T/err)"
[ $rc -ne 0 ] || fail "a mirror disk over a parent without flush was activated"
grep -q "mirror mode needs a parent that can flush" $T/err || fail "the refusal does not say why: $(cat $T/err)"
[ "$(status .owner.state)" = incoming ] || fail "owner state $(status .owner.state) after the refusal"
pid=$(daemon_pid $st)
corfs_unmount $mnt || fail "unmount (mirror) failed"
wait_gone $pid
echo OK
