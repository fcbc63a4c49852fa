#!/usr/bin/env bash
# Mirror mode refusals and a parent write failure:
#  - --write-mode=mirror without --parent-owned: mount refused, the
#    message names parent-owned;
#  - a read-only export (nbdkit -r) with mirror: mount refused;
#  - pivot before the copy completes: non-zero, "not complete";
#  - pivot / abort on a writeback disk: refused;
#  - remounting a mirror disk with --write-mode=writeback: refused;
#  - a parent write fails (nbdkit error filter): the guest write fails with
#    EIO and the blocks stay dirty; once the parent heals, abort copies
#    the dirty blocks: the parent file equals the disk.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version

size=$((16 * 1048576))
head -c $size /dev/urandom > $T/parent.img
start_nbdkit $T/nbd.pid -U $T/sock file $T/parent.img
url=$(nbd_uri $T/sock)

# expect_refused WHAT PATTERN CMD...: CMD exits non-zero and its output
# matches the (extended, case-insensitive) PATTERN.
expect_refused () {
  local what=$1 pat=$2; shift 2
  if "$@" > $T/out 2>&1; then cat $T/out; fail "$what: succeeded, expected a refusal"; fi
  grep -Eqi "$pat" $T/out || { cat $T/out; fail "$what: the message does not match /$pat/"; }
  echo "$what: refused: $(head -c 300 $T/out | tr '\n' ' ')"
}

### mirror without --parent-owned.
mkdir -p $T/m0
expect_refused "mirror without --parent-owned" "parent-owned" \
  "$CORFS" mount --state $T/s0 --stream=off --write-mode=mirror --disk d="$url" $T/m0
is_mounted $T/m0 && { fusermount3 -u $T/m0; fail "the refused mount is mounted"; }

### mirror over a read-only export.
start_nbdkit $T/ro.pid -r -U $T/rosock file $T/parent.img
mkdir -p $T/m1
expect_refused "mirror over a read-only export" "writable|read-only|readonly" \
  "$CORFS" mount --state $T/s1 --stream=off --write-mode=mirror --parent-owned \
  --disk d="$(nbd_uri $T/rosock)" $T/m1
is_mounted $T/m1 && { fusermount3 -u $T/m1; fail "the refused mount is mounted"; }

### pivot before completion; remount with a conflicting write mode.
st=$T/state mnt=$T/mnt
corfs_mount $st $mnt --write-mode=mirror --parent-owned --disk d="$url"
expect_refused "pivot before the copy is complete" "not complete" \
  "$CORFS" pivot --state $st d
[ "$(jq -r .owner.state <<<"$("$CORFS" status --state $st d --json)")" = active ] \
  || fail "a refused pivot changed the owner state"
corfs_unmount $mnt || fail "unmount failed"
expect_refused "remount a mirror disk with --write-mode=writeback" "mirror|write.mode|conflict" \
  "$CORFS" mount --state $st --stream=off --write-mode=writeback $mnt
is_mounted $mnt && { fusermount3 -u $mnt; fail "the refused remount is mounted"; }

### pivot / abort on a writeback disk.
wst=$T/wstate wmnt=$T/wmnt
corfs_mount $wst $wmnt --disk d="$url"
expect_refused "pivot on a writeback disk" "mirror" "$CORFS" pivot --state $wst d
expect_refused "abort on a writeback disk" "mirror|nothing to abort" "$CORFS" abort --state $wst d
"$CORFS" stream --state $wst d --rate 0 --wait || fail "stream --wait on the writeback disk"
expect_refused "pivot on a complete writeback disk" "mirror" "$CORFS" pivot --state $wst d
[ "$(jq -r .owner.state <<<"$("$CORFS" status --state $wst d --json)")" = active ] \
  || fail "a refused pivot/abort changed the writeback disk's owner state"
corfs_unmount $wmnt || fail "unmount of the writeback disk failed"

### A parent write failure keeps the blocks dirty; abort copies them.
cp $T/parent.img $T/parent2.img
touch $T/inject
start_nbdkit $T/err.pid -U $T/esock --filter=error file $T/parent2.img \
  error-pwrite=EIO error-pwrite-rate=100% error-pwrite-file=$T/inject
est=$T/estate emnt=$T/emnt
corfs_mount $est $emnt --write-mode=mirror --parent-owned --hold 2 --disk d="$(nbd_uri $T/esock)"
head -c 65536 /dev/urandom > $T/data
off=$((5 * 1048576))
if dd if=$T/data of=$emnt/d bs=65536 count=1 seek=$off oflag=seek_bytes \
     conv=notrunc,fsync status=none 2>$T/dd.err; then
  fail "a mirror write succeeded while the parent fails writes"
fi
grep -qi "input/output error" $T/dd.err || { cat $T/dd.err; fail "the failed write is not EIO"; }
js=$("$CORFS" status --state $est d --json)
echo "after the failed write: dirty $(jq -r .dirty_bytes <<<"$js"), owner $(jq -r .owner.state <<<"$js")"
[ "$(jq -r .dirty_bytes <<<"$js")" -gt 0 ] || fail "dirty_bytes is 0 after a failed parent write"
cmp -s -n 65536 -i $off:0 $T/parent2.img $T/data && fail "the parent has the data of a failed write"

# While the parent still fails, abort fails and the mirror stays active.
expect_refused "abort while the parent fails writes" "fail|error|try again" \
  "$CORFS" abort --state $est d
[ "$(jq -r .owner.state <<<"$("$CORFS" status --state $est d --json)")" = active ] \
  || fail "a failed abort left the disk not active"

rm -f $T/inject
# Heal: abort copies the dirty blocks to the parent.
"$CORFS" abort --state $est d > $T/abort.out 2>&1 || { cat $T/abort.out; fail "abort after the parent healed failed"; }
js=$("$CORFS" status --state $est d --json)
echo "after abort: dirty $(jq -r .dirty_bytes <<<"$js"), owner $(jq -r .owner.state <<<"$js")"
[ "$(jq -r .owner.state <<<"$js")" = handed-off ] || fail "owner state $(jq -r .owner.state <<<"$js") after abort"
[ "$(jq -r .dirty_bytes <<<"$js")" = 0 ] || fail "dirty_bytes $(jq -r .dirty_bytes <<<"$js") after abort"
cmp $emnt/d $T/parent2.img || fail "after abort the parent differs from the disk"
# The disk shows what the failed write put in the overlay, or the old data.
if cmp -s -n 65536 -i $off:0 $T/parent2.img $T/data; then
  echo "the failed write's data was copied to the parent by abort"
else
  echo "note: the failed write's data is not on the disk (the overlay dropped it)"
fi
corfs_unmount $emnt || fail "unmount failed"
echo OK
