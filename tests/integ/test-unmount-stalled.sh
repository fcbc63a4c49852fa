#!/usr/bin/env bash
# A clean unmount of several disks whose parents are slow waits for their
# requests in flight together, not disk after disk (cor_engine_free tells
# every streamer to stop before joining any):
#  - three disks, each on its own nbdkit limited to 2 MiB/s (rate filter: 16 Mbit/s),
#    streaming (3 workers, 2 MiB chunks); 0.5 s after the mount,
#    `corfs unmount` is timed;
#  - every stream worker has one chunk in flight, all of them due about
#    3 s after they started: stopped together, the unmount takes about
#    that (2.5 s here); stopped one disk at a time, the later disks'
#    workers start new chunks while the first disk's are waited for, and
#    the unmount takes 2 s more per disk (4.5 s with two disks, here).
#    The test wants under 4.5 s, and a remount that reads back every
#    disk equal to its image.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires nbdkit --filter=rate null --dump-plugin
requires fusermount3 --version

MiB=1048576
for n in a b c; do
  head -c $((16 * MiB)) /dev/urandom > "$T/$n.img"
  start_nbdkit "$T/$n.pid" -r -U "$T/$n.sock" --filter=rate file "$T/$n.img" rate=16M
done
st=$T/state mnt=$T/mnt
corfs_mount "$st" "$mnt" --stream=on --disk a="$(nbd_uri "$T/a.sock")" --disk b="$(nbd_uri "$T/b.sock")" \
  --disk c="$(nbd_uri "$T/c.sock")"
sleep 0.5
t0=$(date +%s%N)
corfs_unmount "$mnt" || fail "corfs unmount failed"
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
echo "unmount with 3 stalled streams took $ms ms"
[ $ms -lt 4500 ] || fail "unmount took $ms ms: the disks were stopped one after another (about 6.5 s) rather than together (about 2.5 s)"

# Nothing was lost: with the parents served again without the limit,
# both disks read back equal to their images.
for n in a b c; do
  kill_pid "$(cat "$T/$n.pid")"; wait_gone "$(cat "$T/$n.pid")"; rm -f "$T/$n.sock"
  start_nbdkit "$T/$n.pid" -r -U "$T/$n.sock" file "$T/$n.img"
done
corfs_mount "$st" "$mnt"
for n in a b c; do
  timeout 120 cmp "$mnt/$n" "$T/$n.img" || fail "disk $n differs from its image after the unmount"
done
corfs_unmount "$mnt" || fail "corfs unmount failed"
echo OK
