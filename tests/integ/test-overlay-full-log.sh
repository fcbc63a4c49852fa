#!/usr/bin/env bash
# A full overlay is logged once, not once per read (src/cor/engine.c
# fetch_blocks): over a parent that alternates 1 MiB of data and 1 MiB of
# zeros, with the overlay's filesystem full, every data fetch fails to be
# stored while every zero fetch (a punch) succeeds.  Only a data write
# that succeeds means the overlay has room again: before, each punch
# reset the once-only message, and it was logged for every other read.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
[ "$(id -u)" = 0 ] || skip "needs root to mount a small tmpfs"

MiB=1048576
img=$T/parent.img sock=$T/nbd.sock
: > $img
for i in $(seq 32); do head -c $MiB /dev/urandom >> $img; head -c $MiB /dev/zero >> $img; done
start_nbdkit $T/nbd.pid -r -U $sock file $img

small=$T/small st=$T/small/state mnt=$T/mnt
mkdir -p $small
mount -t tmpfs -o size=12M tmpfs $small || skip "cannot mount a tmpfs here"
cleanup_fn umount -l $small
corfs_mount $st $mnt --readahead 0 --disk d="$(nbd_uri $sock)"
cmp $mnt/d $img || fail "a read with the overlay full failed or returned wrong data"
n=$(grep -c "reads are served from the parent without keeping the data" $st/corfs.log || true)
echo "full-overlay messages: $n"
[ "$n" -ge 1 ] || fail "the overlay never filled up: the test proves nothing"
[ "$n" -le 2 ] || fail "the full overlay was logged $n times (a punch reset the message)"
pid=$(daemon_pid $st)
corfs_unmount $mnt || fail "unmount failed"
wait_gone $pid
echo OK
