#!/usr/bin/env bash
# Proves the daemon-wide stream rate (--stream-rate-total, src/cor/stream.c
# "Rate limits") and the fairness of the shared stream pool
# (src/cor/workers.c): four disks of 128 MiB random data on one nbdkit
# server, each without a rate of its own, mounted with
# --stream-rate-total 16M:
#  - over 4 s (after the first second and a half), all four together
#    stream within [0.5, 1.6] x 16 MiB/s;
#  - each disk gets its share: within [0.4, 1.8] x 4 MiB/s;
#  - a disk's own rate still holds beside the total: `corfs stream d0
#    --rate 1M` keeps d0 within 1.6 x 1 MiB/s, and the others share
#    what it leaves (together at least 0.5 x 15 MiB/s).
. "$(dirname "$0")/../functions.sh"

requires nbdkit --version
requires fusermount3 --version
requires jq --version

MiB=$((1 << 20))
SIZE=$((128 * MiB)) TOTAL=$((16 * MiB))
mkdir -p "$T/srv"
for i in 0 1 2 3; do head -c $SIZE /dev/urandom > "$T/srv/d$i"; done
start_nbdkit "$T/srv.pid" -r -U "$T/srv.sock" file dir="$T/srv"
uri () { nbd_uri "$T/srv.sock" | sed "s|:///|:///$1|"; }

st=$T/state mnt=$T/mnt
corfs_mount "$st" "$mnt" --stream=on --stream-rate-total 16M \
  --disk d0="$(uri d0)" --disk d1="$(uri d1)" --disk d2="$(uri d2)" --disk d3="$(uri d3)"
now_ms () { local t=${EPOCHREALTIME/./}; echo $(( t / 1000 )); }
streamed () { "$CORFS" status --state "$st" --json | jq -r '[sort_by(.name)[] | .stream.streamed_bytes] | @tsv'; }

# measure SECS: sets bytes[i] (per disk) and ms over SECS seconds.
measure () {
  local a b t0 t1 i
  read -ra a <<< "$(streamed)"; t0=$(now_ms)
  sleep "$1"
  read -ra b <<< "$(streamed)"; t1=$(now_ms)
  ms=$((t1 - t0))
  for i in 0 1 2 3; do bytes[i]=$(( b[i] - a[i] )); done
}
bps () { echo $(( $1 * 1000 / ms )); }

sleep 1.5
bytes=()
measure 4
sum=$(( bytes[0] + bytes[1] + bytes[2] + bytes[3] ))
echo "total: $sum bytes in $ms ms = $(bps $sum) B/s (limit $TOTAL); per disk: ${bytes[*]}"
[ "$(bps $sum)" -ge $((TOTAL / 2)) ] || fail "all streams together ran at $(bps $sum) B/s, below half the total $TOTAL"
[ "$(bps $sum)" -le $((TOTAL * 16 / 10)) ] || fail "all streams together ran at $(bps $sum) B/s, above 1.6 x the total $TOTAL"
for i in 0 1 2 3; do
  r=$(bps "${bytes[i]}")
  [ "$r" -ge $((TOTAL / 4 * 4 / 10)) ] && [ "$r" -le $((TOTAL / 4 * 18 / 10)) ] ||
    fail "disk d$i streamed at $r B/s, not its share of the total (within [0.4, 1.8] x $((TOTAL / 4)))"
done

"$CORFS" stream --state "$st" d0 --rate 1M || fail "corfs stream d0 --rate 1M failed"
sleep 1.5
measure 4
others=$(( bytes[1] + bytes[2] + bytes[3] ))
echo "d0 at --rate 1M: $(bps "${bytes[0]}") B/s; the others: $(bps $others) B/s"
[ "$(bps "${bytes[0]}")" -le $((MiB * 16 / 10)) ] || fail "d0 streamed at $(bps "${bytes[0]}") B/s above 1.6 x its own rate 1 MiB/s"
[ "$(bps $others)" -ge $(( (TOTAL - MiB) / 2 )) ] || fail "the other disks streamed at $(bps $others) B/s, below half of what d0 leaves"
[ "$(bps $others)" -le $((TOTAL * 16 / 10)) ] || fail "the other disks streamed at $(bps $others) B/s, above 1.6 x the total"

corfs_unmount "$mnt" || fail "corfs unmount failed"
echo OK
