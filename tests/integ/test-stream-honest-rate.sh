#!/usr/bin/env bash
# The stream's displayed rate and ETA are honest on a sparse parent.  A
# 1 GiB image holding 96 MiB of data at its start, in 12 pieces of 8 MiB
# 16 MiB apart (the rest holes, which nbdkit's file plugin reports as
# zeros), streamed at --rate 8M:
#  - fetched_bytes_per_s (bytes read from the parent per second) stays
#    within 1.5x the limit once the first rate window (and the limiter's
#    one second of burst) is past, while bytes_per_s (bytes made present,
#    zero extents included) runs far above it: counting zeros as streamed
#    made the demo show 26.4 GiB/s at --rate 64M;
#  - eta_s, the missing data over the fetched rate, is finite and within
#    reach of the data really left at that rate: the stream surveys the
#    zero extents, so that the 832 MiB of holes after the data do not
#    count (estimated from the share of data streamed so far, about half,
#    the ETA would be a minute);
#  - the text progress line shows the fetched rate and the ETA.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version

MiB=$((1 << 20))
SIZE=$((1024 * MiB)) PIECES=12 PIECE=$((8 * MiB)) RATE=$((8 * MiB))
DATA=$((PIECES * PIECE))
img=$T/parent.img sock=$T/nbd.sock
truncate -s $SIZE "$img"
for i in $(seq 0 $((PIECES - 1))); do
  head -c $PIECE /dev/urandom |
    dd of="$img" bs=1M seek=$((i * 2 * PIECE / MiB)) conv=notrunc iflag=fullblock status=none
done
start_nbdkit "$T/nbd.pid" -r -U "$sock" file "$img"

st=$T/state mnt=$T/mnt
corfs_mount "$st" "$mnt" --disk d="$(nbd_uri "$sock")"
"$CORFS" stream --state "$st" d --rate 8M || fail "stream --rate 8M failed"
start=$(date +%s%N)

# Samples from 4.5 s on (the first 2 s window holds the limiter's burst),
# every 0.5 s, while the stream runs.
max_fetched=0 max_bps=0 samples=0
sleep 4.5
for i in $(seq 40); do
  j=$("$CORFS" status --state "$st" d --json)
  state=$(jq -r .stream.state <<<"$j")
  [ "$state" = running ] || break
  # Every block present, the stream still finishing (flush, record):
  # nothing is left, and eta_s 0 is the true answer.
  [ "$(jq -r .complete <<<"$j")" = true ] && break
  fetched=$(jq -r '.stream.fetched_bytes_per_s | floor' <<<"$j")
  bps=$(jq -r '.stream.bytes_per_s | floor' <<<"$j")
  eta=$(jq -r .stream.eta_s <<<"$j")
  got=$(jq -r .counters.background_fetched_bytes <<<"$j")
  left=$(( (DATA - got) / RATE ))      # whole seconds of data left at the limit
  t=$(( ($(date +%s%N) - start) / 1000000 ))
  echo "t=${t}ms fetched_bytes_per_s=$fetched bytes_per_s=$bps eta_s=$eta (data left: ${left}s at the limit)"
  [ "$fetched" -le $((RATE * 3 / 2)) ] ||
    fail "fetched_bytes_per_s $fetched above 1.5x the rate limit $RATE"
  [ "$eta" -ge 1 ] || fail "eta_s $eta while running with data left"
  [ "$eta" -le $((3 * left + 10)) ] || fail "eta_s $eta, but only ${left}s of data left at the limit"
  [ "$fetched" -gt "$max_fetched" ] && max_fetched=$fetched
  [ "$bps" -gt "$max_bps" ] && max_bps=$bps
  samples=$((samples + 1))
  if [ $samples -eq 2 ]; then
    line=$("$CORFS" status --state "$st" d | grep '^  stream ')
    echo "text: $line"
    grep -Eq 'running  fetching [0-9.]+ (KiB|MiB)/s  ETA [0-9]+:[0-9]{2}' <<<"$line" ||
      fail "the progress line does not show the fetched rate and the ETA: $line"
  fi
  sleep 0.5
done
[ $samples -ge 4 ] || fail "only $samples samples while running (the stream ended early?)"
[ "$max_fetched" -ge $((RATE / 2)) ] || fail "fetched_bytes_per_s at most $max_fetched: too low"
[ "$max_bps" -gt $((RATE * 3 / 2)) ] ||
  fail "bytes_per_s at most $max_bps: the zero extents should make it exceed the fetched rate"

"$CORFS" stream --state "$st" d --wait || fail "stream --wait failed"
j=$("$CORFS" status --state "$st" d --json)
[ "$(jq -r .stream.eta_s <<<"$j")" = 0 ] || fail "eta_s not 0 once complete: $(jq -c .stream <<<"$j")"
cmp "$img" "$mnt/d" || fail "the disk differs from the image"
echo OK
