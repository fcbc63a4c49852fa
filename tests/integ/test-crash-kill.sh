#!/usr/bin/env bash
# kill -9 the daemon at random moments during mixed reads and fsync'd
# writes, remount, and check docs/design.md rules 1-4 from the outside:
#  - every write acknowledged by a returned fsync/fdatasync is there;
#  - every 4 KiB sector holds its last acknowledged content (or the
#    parent's, if never acknowledged-written) or the content of a later
#    write, nothing else (crashtool verify: in particular no block is
#    marked present without its data, which would read as zeros);
#  - every extent `status --maps` reports present lies inside the disk.
# Kills: $CRASH_KILLS (default 50), in epochs of 5 with a fresh state
# directory each, cycling block sizes 4K/64K/1M and buffered/O_DIRECT, and
# with the background streamer running (rate-limited, so that the kill
# finds it mid-disk) in every other epoch.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
[ -x "$TOOLS/crashtool" ] || fail "crashtool not built ($TOOLS/crashtool)"

kills=${CRASH_KILLS:-50}
size=$((96 * 1024 * 1024))
seed=${CRASH_SEED:-$RANDOM}
echo "crash test: $kills kills, seed $seed (CRASH_SEED=$seed to repeat)"
RANDOM=$seed

head -c $size /dev/urandom > $T/parent.img
start_nbdkit $T/nbd.pid -r -U $T/sock file $T/parent.img
url=$(nbd_uri $T/sock)
mnt=$T/mnt; mkdir -p $mnt

acked_total=0 writes_total=0 k=0 epoch=0
bss=(4K 64K 1M)
while [ $k -lt $kills ]; do
  bs=${bss[$((epoch % 3))]}
  stream=--stream=off; [ $((epoch % 2)) -eq 1 ] && stream=--stream=on
  state=$T/state$epoch log=$T/log$epoch
  corfs_mount $state $mnt --disk d="$url" --block-size $bs $stream
  [ $stream = --stream=on ] && "$CORFS" stream --state $state d --rate 40M
  for i in 1 2 3 4 5; do
    [ $k -lt $kills ] || break
    k=$((k + 1))
    direct=""; [ $((k % 2)) -eq 0 ] && direct=--direct
    rm -f $T/ready
    CRASHTOOL_READY=$T/ready "$TOOLS/crashtool" write $mnt/d $log $((seed * 100 + k)) $direct 2>$T/writer.err &
    wpid=$!
    # The kill must land after the writer opened the disk (a loaded
    # machine may take a while to start it): at most 30 s.
    for w in $(seq 300); do [ -e $T/ready ] || ! kill -0 $wpid 2>/dev/null && break; sleep 0.1; done
    [ -e $T/ready ] || { cat $T/writer.err; fail "writer did not open the disk within 30 s"; }
    # Kill at a random moment between 50 ms and 1.2 s into the run.
    sleep "0.$(printf '%03d' $((50 + RANDOM % 950)))"
    [ $((RANDOM % 4)) -eq 0 ] && sleep 0.2
    pid=$(daemon_pid $state)
    kill -0 $wpid 2>/dev/null || { cat $T/writer.err; fail "writer ended before the kill"; }
    crash_unmount $state $mnt
    wait $wpid || { cat $T/writer.err; fail "writer failed (not by the crash)"; }
    wait_gone $pid
    # Remount (the disk is recorded: no --disk needed) and verify.
    "$CORFS" mount --state $state $stream $mnt || fail "remount after kill $k failed"
    [ $stream = --stream=on ] && "$CORFS" stream --state $state d --rate 40M
    "$CORFS" status --state $state d --json --maps > $T/status.json || fail "status after kill $k"
    python3 - "$T/status.json" $size <<'PY' || fail "status --maps after kill $k is inconsistent"
import json, sys
st = json.load(open(sys.argv[1])); size = int(sys.argv[2])
assert st["size"] == size, st["size"]
n = 0
for e in st["maps"]["present"]:
    assert 0 <= e["offset"] and e["length"] > 0 and e["offset"] + e["length"] <= size, e
    n += e["length"]
for e in st["maps"]["dirty"]:
    assert e["offset"] + e["length"] <= size, e
assert st["widened"] is True, "an unclean shutdown must widen the changed map"
PY
    "$TOOLS/crashtool" verify $mnt/d $log $T/parent.img > $T/verify.out 2>&1 || {
      cat $T/verify.out; fail "kill $k (block size $bs, ${direct:-buffered}): verify failed"; }
    echo "kill $k (bs $bs ${direct:-buffered} $stream): $(head -n1 $T/verify.out)"
  done
  stats=$("$TOOLS/crashtool" stats $log)
  acked_total=$((acked_total + $(echo "$stats" | sed -n 's/.*acked_writes=\([0-9]*\).*/\1/p')))
  writes_total=$((writes_total + $(echo "$stats" | sed -n 's/^writes=\([0-9]*\).*/\1/p')))
  corfs_unmount $mnt
  epoch=$((epoch + 1))
done
echo "crash summary: kills=$k writes=$writes_total acked_writes=$acked_total lost=0"
