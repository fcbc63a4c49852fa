#!/usr/bin/env bash
# A mirror handed off, unmounted and mounted again: the mount clears the
# identity recorded at the last stop once verified (the mirror's writes
# move it), so hand-off records the parent's identity as it leaves it;
# without that the handed-off disk could not be mounted again (no
# identity: --repin demanded) or was refused as changed (a stale one).
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
img=$T/p.img; head -c $((8<<20)) /dev/urandom > $img
start_nbdkit $T/n.pid -U $T/s file $img
st=$T/st mnt=$T/mnt
corfs_mount $st $mnt --write-mode=mirror --parent-owned --disk d="$(nbd_uri $T/s)"
dd if=/dev/urandom of=$mnt/d bs=64K count=1 conv=notrunc,fsync status=none
"$CORFS" handoff --state $st d --epoch 2 || fail "handoff"
corfs_unmount $mnt
corfs_mount $st $mnt
is_mounted $mnt || { tail -5 $st/corfs.log; fail "remount of a handed-off mirror refused"; }
"$CORFS" status --state $st d | head -5
corfs_unmount $mnt
echo OK
