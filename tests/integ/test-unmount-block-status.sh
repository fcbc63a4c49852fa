#!/usr/bin/env bash
# Unmount while the streamer's block-status requests (NBD base:allocation)
# are stalled: remote_cancel must reach them.  nbdkit's delay filter holds
# every extents request 40 s; the streamer asks one before each chunk.
# Before the fix the block-status wait polled in one unsliced nbd_poll and
# never looked at the cancel flag, so the unmount waited for the stalled
# requests (about 40 s); it must now take a few seconds.  The daemon's log
# must not turn the cancelled requests into stream errors.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires nbdkit --filter=delay null --dump-plugin
requires fusermount3 --version

MiB=$((1 << 20))
img=$T/parent.img
head -c $((64 * MiB)) /dev/urandom > "$img"
start_nbdkit "$T/n.pid" -r -U "$T/n.sock" --filter=delay file "$img" delay-extents=40
st=$T/state mnt=$T/mnt
corfs_mount "$st" "$mnt" --hold 3 --stream=on --disk d="$(nbd_uri "$T/n.sock")"
sleep 2                             # every stream worker is in a block status now
pid=$(daemon_pid "$st")
t0=$(date +%s%N)
timeout 60 "$CORFS" unmount "$mnt" || fail "corfs unmount failed"
for i in $(seq 300); do alive "$pid" || break; sleep 0.1; done
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
echo "unmount with stalled block status took $ms ms"
alive "$pid" && fail "the daemon is still running $ms ms after corfs unmount"
[ $ms -lt 8000 ] || fail "unmount took $ms ms: the stalled block-status requests were not cancelled"
if grep -E "stream: offset .*(Operation canceled|Connection timed out)" "$st/corfs.log"; then
  fail "cancelled requests at shutdown were logged as stream errors"
fi
echo OK
