#!/usr/bin/env bash
# A `corfs sources --add` of a stalled source (nbdkit stopped: the
# connection hangs, nothing is refused) does not hold up an unmount
# (issue 21's review): the unmount cancels the add's check, as it
# cancels the sources' requests; the add fails, and the unmount ends
# well within the hold (20 s).
. "$(dirname "$0")/../functions.sh"
requires fusermount3 --version
requires nbdkit file --dump-plugin

MiB=1048576
head -c $((16 * MiB)) /dev/urandom > "$T/a.img"
cp "$T/a.img" "$T/b.img"
start_nbdkit "$T/n.pid" -r -U "$T/n.sock" file "$T/b.img"
kill -STOP "$(cat "$T/n.pid")"
cleanup_fn kill -CONT "$(cat "$T/n.pid")"

corfs_mount "$T/s" "$T/m" --hold 20 --readahead 0 --disk d="file://$T/a.img" \
  --disk d="file://$T/b.img"
"$CORFS" sources --state "$T/s" d --add "$(nbd_uri "$T/n.sock")" > "$T/add.out" 2>&1 &
add=$!
sleep 1
alive "$add" || fail "the add of a stalled source ended at once: $(cat "$T/add.out")"
t0=$(date +%s)
corfs_unmount "$T/m" || fail "unmount failed"
[ $(( $(date +%s) - t0 )) -le 8 ] || fail "the unmount took $(( $(date +%s) - t0 )) s (hold 20)"
for i in $(seq 100); do alive "$add" || break; sleep 0.1; done
alive "$add" && fail "the add still runs after the unmount"
wait "$add" && fail "the add of a stalled source succeeded: $(cat "$T/add.out")"
echo PASS
