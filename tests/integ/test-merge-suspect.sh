#!/usr/bin/env bash
# After an unclean shutdown every present block is suspect (docs/design.md rule
# 4): merge compares suspect blocks with the parent and writes only those
# that differ, where a flush can make what it read back stable.
# A 32 MiB disk is streamed in full, two fsync'd writes make two blocks
# dirty, and the daemon is killed with SIGKILL.  While it is down, one
# block of the overlay is changed behind its back: what a guest write
# leaves when the crash comes after the data reached the overlay but
# before its dirty bit was committed.  After the remount, `merge --wait`
# must leave the parent equal to the disk, that block included, with no
# dirty and no suspect block left.  Then, by parent:
#  - nbdkit's file plugin, which advertises multi-conn (a flush on one
#    connection covers every connection's writes, the crashed daemon's
#    included): the merge writes exactly the dirty blocks and the changed
#    one (nbdkit's log filter sees their offsets and nothing else), reports
#    the rest in writeback_equal_bytes, and flushes the parent after every
#    4 MiB chunk (merge's chunk), including chunks where nothing differed;
#  - the same with multi-conn turned off (nbdkit's multi-conn filter):
#    compared data could be a write the crashed daemon's connection never
#    flushed, which our flush need not cover, so every block is written
#    again and writeback_equal_bytes stays 0.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires nbdkit --filter=multi-conn null --version
requires fusermount3 --version
requires jq --version

bs=65536 size=$((32 * 1048576)) chunk=$((4 * 1048576))

# run_case NAME [FILTER PARAM]: one round, nbdkit with an extra filter and
# its parameter if given.  Sets written, blocks and flushes.
run_case () {
  local name=$1 filter=() param=()
  [ -n "${2:-}" ] && filter=("--filter=$2") param=("$3")
  local d=$T/$name st=$T/$name/state mnt=$T/$name/mnt
  mkdir -p $d
  head -c $size /dev/urandom > $d/parent.img
  cp $d/parent.img $d/expected.img
  start_nbdkit $d/nbd.pid -U $d/sock --filter=log "${filter[@]}" file $d/parent.img \
    logfile=$d/nbd.log "${param[@]}"
  corfs_mount $st $mnt --parent-owned --stream=on --disk d="$(nbd_uri $d/sock)"
  local disk=$mnt/d
  js () { "$CORFS" status --state $st d --json; }
  "$CORFS" stream --state $st d --wait >/dev/null || fail "$name: stream --wait failed"

  # Dirty: block 8 (whole) and block 40 (a 100-byte write inside it).
  twin_write $disk $d/expected.img $((8 * bs)) $bs || fail "$name: write at block 8 failed"
  twin_write $disk $d/expected.img $((40 * bs + 1000)) 100 || fail "$name: write in block 40 failed"
  [ "$(js | jq -r .dirty_bytes)" = $((2 * bs)) ] \
    || fail "$name: dirty_bytes $(js | jq -r .dirty_bytes), expected $((2 * bs))"

  crash_unmount $st $mnt

  # Block 200 changes in the overlay, not in the index: present, not dirty.
  head -c $bs /dev/urandom > $d/b200
  dd if=$d/b200 of=$st/d.overlay bs=$bs seek=200 conv=notrunc,fsync status=none
  dd if=$d/b200 of=$d/expected.img bs=$bs seek=200 conv=notrunc status=none

  corfs_mount $st $mnt --disk d="$(nbd_uri $d/sock)"
  local s; s=$(js)
  echo "$name: after the remount: widened $(jq -r .widened <<<"$s"), suspect $(jq -r .suspect_bytes <<<"$s"), dirty $(jq -r .dirty_bytes <<<"$s")"
  [ "$(jq -r .suspect_bytes <<<"$s")" = $size ] \
    || fail "$name: suspect_bytes $(jq -r .suspect_bytes <<<"$s") after an unclean shutdown of a complete disk, expected $size"
  cmp $disk $d/expected.img || fail "$name: the disk does not read as expected after the remount"

  local before; before=$(wc -l < $d/nbd.log)
  "$CORFS" merge --state $st d --wait || fail "$name: merge --wait failed"
  s=$(js)
  echo "$name: after the merge: $(jq -c '{dirty_bytes, suspect_bytes, writeback: .counters.writeback_bytes, equal: .counters.writeback_equal_bytes}' <<<"$s")"
  [ "$(jq -r .dirty_bytes <<<"$s")" = 0 ] || fail "$name: dirty_bytes $(jq -r .dirty_bytes <<<"$s") after synced"
  [ "$(jq -r .suspect_bytes <<<"$s")" = 0 ] || fail "$name: suspect_bytes $(jq -r .suspect_bytes <<<"$s") after synced"
  cmp $d/parent.img $d/expected.img || fail "$name: the parent differs from the disk after the merge"

  # What the merge sent the parent (the log filter logs each request as
  # "Write id=N offset=0x... count=0x..." and "Flush id=N").
  tail -n +$((before + 1)) $d/nbd.log > $d/merge.log
  written=0 blocks=""
  while read -r o c; do
    written=$((written + c))
    for ((b = o / bs; b < (o + c) / bs; b++)); do blocks+="$b"$'\n'; done
  done < <(sed -n 's/.*Write id=[0-9]* offset=\(0x[0-9a-f]*\) count=\(0x[0-9a-f]*\).*/\1 \2/p' $d/merge.log \
           | while read -r o c; do echo $((o)) $((c)); done)
  blocks=$(sort -nu <<<"$blocks" | grep . | wc -l)
  # The log filter logs a request twice, on the call and on the return
  # ("... return=0 (Success)"): count the calls.
  flushes=$(grep "Flush id=" $d/merge.log | grep -vc "return=" || true)
  echo "$name: the merge wrote $written bytes in $blocks distinct blocks, and flushed $flushes times"
}

# 1. Multi-conn: compare.
run_case multiconn
[ "$blocks" = 3 ] && [ "$written" -ge $((3 * bs)) ] \
  || fail "multiconn: the merge wrote $written bytes in $blocks distinct blocks, expected blocks 8, 40 and 200 only"
sed -n 's/.*Write id=[0-9]* offset=\(0x[0-9a-f]*\) .*/\1/p' $T/multiconn/merge.log | while read -r o; do echo $((o / bs)); done \
  | sort -nu | tr '\n' ' ' | grep -qx "8 40 200 " || fail "multiconn: written blocks are not 8, 40 and 200"
[ "$flushes" -ge $((size / chunk)) ] \
  || fail "multiconn: $flushes flushes for $((size / chunk)) chunks: a chunk found equal must still flush the parent"
s=$("$CORFS" status --state $T/multiconn/state d --json)
[ "$(jq -r .counters.writeback_bytes <<<"$s")" -ge $((3 * bs)) ] \
  || fail "multiconn: writeback_bytes $(jq -r .counters.writeback_bytes <<<"$s"), expected at least $((3 * bs))"
[ "$(jq -r .counters.writeback_equal_bytes <<<"$s")" = $((size - 3 * bs)) ] \
  || fail "multiconn: writeback_equal_bytes $(jq -r .counters.writeback_equal_bytes <<<"$s"), expected $((size - 3 * bs))"

# 2. No multi-conn: every block written again.
run_case nomulticonn multi-conn multi-conn-mode=disable
[ "$blocks" = $((size / bs)) ] \
  || fail "nomulticonn: the merge wrote $blocks distinct blocks, expected all $((size / bs)) (no compare without multi-conn)"
s=$("$CORFS" status --state $T/nomulticonn/state d --json)
[ "$(jq -r .counters.writeback_equal_bytes <<<"$s")" = 0 ] \
  || fail "nomulticonn: writeback_equal_bytes $(jq -r .counters.writeback_equal_bytes <<<"$s"), expected 0"
echo "PASS"
