#!/usr/bin/env bash
# The hold bounds every guest request, however many wait at once (review
# of issue 15 item 1): requests that no FUSE worker has picked up wait in
# the kernel's queue, where no hold applies, so the daemon must run a
# worker for each.  With libfuse's default of 10 workers, 30 concurrent
# reads of a stalled parent ended at 1, 2 and 3 times the hold.  Here 30
# concurrent 4 KiB O_DIRECT reads of different missing blocks, on a parent
# whose reads sleep 60 s, with --hold 4: every one fails with EIO within
# hold + 2 s of its start.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires nbdkit eval --dump-plugin
requires fusermount3 --version

HOLD=4 N=30
now_ms () { local t=${EPOCHREALTIME/./}; echo $(( t / 1000 )); }
img=$T/parent.img sock=$T/nbd.sock
head -c $((64 << 20)) /dev/urandom > "$img"
start_eval_parent "$sock" "$img" -r --stall "$T/stall" 60
cleanup_fn rm -f "$T/stall"
st=$T/st mnt=$T/mnt
corfs_mount "$st" "$mnt" --hold $HOLD --readahead 0 --disk d="$(nbd_uri "$sock")"
# Connect first (the connection's own reads would stall too).
dd if="$mnt/d" of=/dev/null bs=4096 count=1 iflag=direct status=none

touch "$T/stall"
for i in $(seq 1 $N); do
  ( t0=$(now_ms); rc=0
    dd if="$mnt/d" of=/dev/null bs=4096 count=1 skip=$((i * 512)) iflag=direct \
       status=none 2> "$T/err.$i" || rc=$?
    echo "$(( $(now_ms) - t0 )) $rc" > "$T/lat.$i" ) &
done
wait
rm -f "$T/stall"

worst=0
for i in $(seq 1 $N); do
  read -r ms rc < "$T/lat.$i"
  [ "$rc" -ne 0 ] || fail "read $i succeeded from a stalled parent"
  grep -q "Input/output error" "$T/err.$i" || { cat "$T/err.$i"; fail "read $i: not EIO"; }
  [ "$ms" -gt "$worst" ] && worst=$ms
done
echo "latencies (ms): $(cat "$T"/lat.* | awk '{print $1}' | sort -n | tr '\n' ' ')"
[ "$worst" -le $(( (HOLD + 2) * 1000 )) ] || fail "a read took $worst ms with --hold $HOLD"
"$CORFS" status --state "$st" > /dev/null || fail "status failed after the stall"

# Async direct I/O: many reads in flight from one thread are background
# requests, and those beyond the kernel's max_background wait in its queue
# (at 64, a queue depth of 150 got its EIOs 64 per hold period).
if command -v fio > /dev/null; then
  touch "$T/stall"
  timeout 60 fio --name=aio --filename="$mnt/d" --rw=randread --bs=4k --direct=1 \
    --ioengine=libaio --iodepth=150 --runtime=$((HOLD * 2)) --time_based --norandommap \
    --continue_on_error=all --output-format=json --output="$T/fio.json" > "$T/fio.out" 2>&1 || true
  rm -f "$T/stall"
  # Failed I/Os carry no latency in fio's report: count them instead.  In
  # two hold periods all 150 in flight end with EIO twice (300); with only
  # 64 served per hold period it would be about 128.
  failed=$(python3 -c '
import json, sys
print(json.load(open(sys.argv[1]))["jobs"][0]["total_err"])' "$T/fio.json") ||
    { cat "$T/fio.out"; fail "fio gave no result"; }
  echo "libaio, queue depth 150, $((HOLD * 2)) s on a stalled parent: $failed reads failed (EIO)"
  [ "$failed" -ge 200 ] || fail "only $failed async reads ended in $((HOLD * 2)) s with --hold $HOLD"
fi
corfs_unmount "$mnt"
echo OK
