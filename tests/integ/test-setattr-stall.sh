#!/usr/bin/env bash
# chmod and chown never wait for an owner-state change (review of issue 15
# item 5): a `handoff` that waits for the streamer's fetch from a stalled
# parent holds the disk's state lock for seconds, and the kernel holds
# the inode's lock across a chmod, so a chmod that waited there would
# stall every write to the disk too.  Here:
#  - chmod and chown during such a handoff return at once (< 3 s, the
#    stall is 8 s and the hold 15 s);
#  - the handoff, which read the record before the chmod and writes it
#    after, does not roll the mode and owner back: they are kept after
#    the handoff and after a remount;
#  - chmod with a setuid, setgid or sticky bit is refused (EPERM), not
#    silently dropped.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires nbdkit eval --dump-plugin
requires fusermount3 --version

MiB=$((1 << 20))
now_ms () { local t=${EPOCHREALTIME/./}; echo $(( t / 1000 )); }
img=$T/parent.img sock=$T/nbd.sock
head -c $((16 * MiB)) /dev/urandom > "$img"
start_eval_parent "$sock" "$img" -r --stall "$T/stall" 8
cleanup_fn rm -f "$T/stall"
st=$T/st mnt=$T/mnt f=$T/mnt/d
corfs_mount "$st" "$mnt" --hold 15 --stream=paused --disk d="$(nbd_uri "$sock")"
attrs () { stat -c '%a %u %g' "$f"; }
[ "$(attrs)" = "600 0 0" ] || fail "new disk: $(attrs)"

echo "=== setuid, setgid and sticky bits are refused"
for m in 4600 2600 1600; do
  chmod $m "$f" 2> "$T/err" && fail "chmod $m succeeded: $(attrs)"
  grep -q "Operation not permitted" "$T/err" || { cat "$T/err"; fail "chmod $m: not EPERM"; }
done
[ "$(attrs)" = "600 0 0" ] || fail "after refused chmods: $(attrs)"

echo "=== chmod and chown while a handoff waits for a stalled fetch"
touch "$T/stall"
"$CORFS" stream --state "$st" d --resume > /dev/null
sleep 2    # the streamer is now inside a fetch that takes 8 s
"$CORFS" status --state "$st" | grep -q "stream.*running" || fail "the streamer is not running"
"$CORFS" handoff --state "$st" d --epoch 5 > "$T/ho.out" 2>&1 & ho=$!
sleep 1
t0=$(now_ms)
timeout 30 chmod 640 "$f" || fail "chmod failed"
timeout 30 chown 0:4242 "$f" || fail "chown failed"
ms=$(( $(now_ms) - t0 ))
echo "chmod + chown took $ms ms during the handoff"
rm -f "$T/stall"
kill -0 $ho 2>/dev/null || fail "the handoff was not waiting (it ended before the chmod returned): $(cat "$T/ho.out")"
[ $ms -lt 3000 ] || fail "chmod + chown waited $ms ms for the handoff"
[ "$(attrs)" = "640 0 4242" ] || fail "after chmod/chown: $(attrs)"
wait $ho || fail "handoff failed: $(cat "$T/ho.out")"
"$CORFS" status --state "$st" | grep -q "handed-off" || fail "not handed off: $("$CORFS" status --state "$st")"
[ "$(attrs)" = "640 0 4242" ] || fail "the handoff rolled the mode/owner back: $(attrs)"

echo "=== remount: kept"
corfs_unmount "$mnt"
corfs_mount "$st" "$mnt"
[ "$(attrs)" = "640 0 4242" ] || fail "after remount: $(attrs)"
corfs_unmount "$mnt"
echo OK
