#!/usr/bin/env bash
# Proves one daemon serves 100 disks in bounded threads and memory (issue
# 17; src/cor/workers.c: streaming and readahead run from pools shared by
# every disk).  100 disks of 2 MiB random data each, on four nbdkit
# servers (file plugin over a directory: one export per image), mounted
# with every stream on, and a sequential O_DIRECT reader on every tenth
# disk (readahead runs too):
#  - the daemon never has 100 threads or more (sampled every 0.2 s; it
#    had about 3 per streaming disk and 3 more per disk read ahead);
#  - its peak RSS (VmHWM) stays below 256 MiB (it was about 6 MiB per
#    streaming disk: each stream worker kept a 2 MiB buffer);
#  - every disk streams to completion (status: complete, stream.state
#    "complete"), within 60 s;
#  - `status --json` of all 100 answers within 1 s;
#  - every disk reads back equal to its image.
. "$(dirname "$0")/../functions.sh"

requires nbdkit --version
requires fusermount3 --version
requires jq --version

DISKS=100 SERVERS=4
MiB=$((1 << 20))
SIZE=$((2 * MiB))
disks=()
for s in $(seq 0 $((SERVERS - 1))); do
  mkdir -p "$T/srv$s"
  start_nbdkit "$T/srv$s.pid" -r -U "$T/srv$s.sock" file dir="$T/srv$s"
done
for i in $(seq 0 $((DISKS - 1))); do
  s=$((i % SERVERS))
  head -c $SIZE /dev/urandom > "$T/srv$s/d$i"
  disks+=(--disk "d$i=$(nbd_uri "$T/srv$s.sock" | sed "s|:///|:///d$i|")")
done

st=$T/state mnt=$T/mnt
t0=${EPOCHREALTIME/./}
corfs_mount "$st" "$mnt" --stream=on "${disks[@]}"
t1=${EPOCHREALTIME/./}
echo "mount of $DISKS disks: $(( (t1 - t0) / 1000 )) ms"
pid=$(daemon_pid "$st")

for i in $(seq 0 10 $((DISKS - 1))); do
  dd if="$mnt/d$i" of=/dev/null bs=256K iflag=direct status=none &
done

maxthr=0 complete=0
for _ in $(seq 300); do
  n=$(awk '$1 == "Threads:" { print $2 }' "/proc/$pid/status")
  [ "$n" -gt "$maxthr" ] && maxthr=$n
  complete=$("$CORFS" status --state "$st" --json | jq '[.[] | select(.complete and .stream.state == "complete")] | length')
  [ "$complete" -eq $DISKS ] && break
  sleep 0.2
done
wait
rss=$(awk '$1 == "VmHWM:" { print int($2 / 1024) }' "/proc/$pid/status")
echo "threads at most $maxthr, peak RSS $rss MiB, $complete of $DISKS disks complete"
[ "$maxthr" -lt 100 ] || fail "the daemon ran $maxthr threads for $DISKS disks (at most 99)"
[ "$rss" -lt 256 ] || fail "the daemon's peak RSS was $rss MiB for $DISKS disks (below 256)"
[ "$complete" -eq $DISKS ] || fail "$complete of $DISKS disks complete after 60 s"

t0=${EPOCHREALTIME/./}
"$CORFS" status --state "$st" --json > "$T/status.json"
t1=${EPOCHREALTIME/./}
ms=$(( (t1 - t0) / 1000 ))
echo "status --json of $DISKS disks: $ms ms"
[ "$(jq length "$T/status.json")" -eq $DISKS ] || fail "status lists $(jq length "$T/status.json") disks"
[ $ms -le 1000 ] || fail "status --json of $DISKS disks took $ms ms (at most 1000)"
bad=$(jq -r '.[] | select(.stream.state != "complete" or .present_bytes != .size) | "\(.name) \(.stream.state) \(.present_bytes)"' "$T/status.json")
[ -z "$bad" ] || fail "not complete in status: $bad"

for i in $(seq 0 $((DISKS - 1))); do
  cmp "$mnt/d$i" "$T/srv$((i % SERVERS))/d$i" || fail "disk d$i differs from its image"
done
corfs_unmount "$mnt" || fail "corfs unmount failed"
echo OK
