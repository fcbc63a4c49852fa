#!/usr/bin/env bash
# Engine readahead (src/cor/readahead.c) for sequential guest readers,
# against nbdkit parents (log filter to see every parent read, delay filter
# for a slow parent, error filter for failing ones), with --stream=off so
# that only guest reads and readahead fetch:
#  1. default --readahead (4M): a sequential O_DIRECT reader of [0, 8M)
#     makes corfs fetch ahead of it (present beyond 8M, at most 4M + one
#     1M chunk beyond, contiguous; parent reads past 8M in the log), with
#     the right data; over a 20 ms parent a sequential 256K reader is at
#     least 1.5x faster than on a --readahead 0 mount (typically 6-8x);
#  2. scattered 4 KiB O_DIRECT reads fetch exactly the blocks they touch;
#  3. --readahead 0: a sequential reader fetches exactly what it reads;
#  4. O_DIRECT fsync'd writes into blocks just ahead of a sequential reader
#     over a 200 ms parent (racing the prefetches) are never overwritten by
#     a prefetch: the disk equals the parent plus the writes, before and
#     after a remount, and the reader saw only parent or written data;
#  5. prefetches that fail (every parent read fails for longer than their
#     --hold) do not fail a reader that comes for those blocks later: it
#     waits for them, re-fetches once they failed, within its own --hold,
#     reads the right data, and counters.fetch_errors shows the failed
#     prefetches;
#  6. kill -9 of the daemon with prefetches in flight (after a flush that
#     committed the first 8 MiB read and what was prefetched by then),
#     remount: what was flushed is still present and the whole disk reads
#     back equal to the parent.
# (Run in the order 1, 3, 1b, 2, 4, 6, 5.)
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires nbdkit --filter=log --filter=delay --filter=error null --dump-plugin
requires fusermount3 --version
requires jq --version
requires python3 --version

MiB=1048576 BLK=65536
now_ms () { local t=${EPOCHREALTIME/./}; echo $(( t / 1000 )); }

# jst STATE JQ: a field of the disk's status.
jst () { "$CORFS" status --state "$1" disk --json | jq -r "(if type == \"array\" then .[0] else . end) | $2"; }
present () { jst "$1" .present_bytes; }
# present_map STATE: "offset length" of each present extent.
present_map () {
  "$CORFS" status --state "$1" disk --json --maps \
    | jq -r '(if type == "array" then .[0] else . end).maps.present[] | "\(.offset) \(.length)"'
}

# reads_since LOG MARK SIZE: "offset count" (decimal) of each parent Read
# request logged after line MARK, but the identity samples (4 KiB at 0,
# SIZE/2 and SIZE-4K, taken on every new parent connection).
reads_since () {
  local log=$1 mark=$2 sz=$3 o c
  tail -n +$((mark + 1)) "$log" |
  sed -n 's/.* Read id=[0-9]* offset=\(0x[0-9a-f]*\) count=\(0x[0-9a-f]*\) .*/\1 \2/p' |
  while read -r o c; do
    o=$((o)) c=$((c))
    [ "$c" -eq 4096 ] && { [ "$o" -eq 0 ] || [ "$o" -eq $((sz / 2)) ] || [ "$o" -eq $((sz - 4096)) ]; } && continue
    echo "$o $c"
  done
  return 0
}
# in_flight LOG: parent reads started and not yet answered.
in_flight () {
  local log=$1 a b
  a=$(grep -c ' Read id=' "$log" || true)
  b=$(grep -c '\.\.\.Read id=' "$log" || true)
  echo $((a - b))
}
# settle STATE LOG: wait (at most 15 s) until no parent read is in flight
# and present_bytes stays the same for 3 polls 0.2 s apart (prefetches
# still running after the reader returned have landed).
settle () {
  local st=$1 log=$2 i p last=-1 same=0
  for i in $(seq 75); do
    p=$(present "$st")
    if [ "$(in_flight "$log")" -eq 0 ] && [ "$p" = "$last" ]; then
      same=$((same + 1)); [ $same -ge 2 ] && return 0
    else
      same=0
    fi
    last=$p
    sleep 0.2
  done
  fail "$st: parent reads or present_bytes still changing after 15 s"
}
# wait_pos PID BYTES: wait (at most 30 s) until process PID's fd 0 (dd
# reads its if= on fd 0) is at BYTES or beyond; false if PID ended first.
wait_pos () {
  local pid=$1 want=$2 i pos
  for i in $(seq 3000); do
    pos=$(awk '/^pos:/ {print $2}' "/proc/$pid/fdinfo/0" 2>/dev/null) || pos=""
    [ -n "$pos" ] || return 1
    [ "$pos" -ge "$want" ] && return 0
    sleep 0.01
  done
  fail "reader $pid did not reach offset $want in 30 s"
}
# same_range FILE OFF LEN IMG: FILE (LEN bytes) equals IMG's [OFF, OFF+LEN).
same_range () {
  cmp -s "$1" <(dd if="$4" iflag=skip_bytes,count_bytes skip="$2" count="$3" bs=1M status=none)
}

size=$((64 * MiB))
img=$T/parent.img
head -c $size /dev/urandom > "$img"

# The "fast" parent: 20 ms per read, every read logged.
fsock=$T/f.sock flog=$T/f.log
start_nbdkit "$T/f.pid" -r -U "$fsock" --filter=log --filter=delay \
  file "$img" logfile="$flog" rdelay=20ms
furl=$(nbd_uri "$fsock")

# --- 1. default readahead: the reader is fetched ahead of ---------------
s1=$T/s1 m1=$T/m1
corfs_mount "$s1" "$m1" --block-size 64K --disk disk="$furl"
mark=$(wc -l < "$flog")
dd if="$m1/disk" of="$T/r1" iflag=direct bs=1M count=8 status=none || fail "1: reader failed"
same_range "$T/r1" 0 $((8 * MiB)) "$img" || fail "1: reader of [0, 8M) got wrong data"
settle "$s1" "$flog"
p=$(present "$s1")
echo "1: read 8 MiB sequentially; present_bytes=$p"
[ "$p" -gt $((8 * MiB)) ] || fail "1: nothing fetched ahead of the reader (present_bytes=$p)"
[ "$p" -le $((8 * MiB + 4 * MiB + MiB)) ] \
  || fail "1: fetched more than 4M + a chunk ahead of the reader (present_bytes=$p)"
[ "$(present_map "$s1")" = "0 $p" ] \
  || fail "1: present map is not one extent from 0: $(present_map "$s1" | tr '\n' ' ')"
beyond=$(reads_since "$flog" "$mark" $size | awk -v e=$((8 * MiB)) '$1 + $2 > e' | wc -l)
[ "$beyond" -gt 0 ] || fail "1: nbdkit logged no read beyond the reader's range"
echo "1: $beyond parent reads beyond the reader's 8 MiB"
fetched=$(reads_since "$flog" "$mark" $size | awk '{s += $2} END {print s + 0}')
[ "$fetched" -eq "$p" ] || fail "1: the parent served $fetched bytes, present_bytes is $p"
# The prefetched blocks hold the parent's data too.
dd if="$m1/disk" of="$T/r1b" iflag=direct bs=64K count=$(( (p - 8 * MiB) / BLK )) skip=$((8 * MiB / BLK)) status=none
same_range "$T/r1b" $((8 * MiB)) $((p - 8 * MiB)) "$img" || fail "1: prefetched blocks hold wrong data"

# --- 3. --readahead 0 fetches exactly what is read -----------------------
s3=$T/s3 m3=$T/m3
corfs_mount "$s3" "$m3" --block-size 64K --readahead 0 --disk disk="$furl"
mark=$(wc -l < "$flog")
dd if="$m3/disk" of="$T/r3" iflag=direct bs=1M count=8 status=none || fail "3: reader failed"
same_range "$T/r3" 0 $((8 * MiB)) "$img" || fail "3: reader of [0, 8M) got wrong data"
settle "$s3" "$flog"
p=$(present "$s3")
[ "$p" -eq $((8 * MiB)) ] || fail "3: --readahead 0: present_bytes=$p after reading 8 MiB"
[ "$(present_map "$s3")" = "0 $((8 * MiB))" ] || fail "3: present map is not [0, 8M): $(present_map "$s3" | tr '\n' ' ')"
got=$(reads_since "$flog" "$mark" $size | sort -n | tr '\n' ' ')
want=$(for i in $(seq 0 7); do echo "$((i * MiB)) $MiB"; done | tr '\n' ' ')
[ "$got" = "$want" ] || fail "3: --readahead 0: parent reads were $got, expected one per guest read: $want"
echo "3: --readahead 0: 8 parent reads of 1 MiB for 8 MiB read, present_bytes=$p"

# --- 1b. readahead makes a sequential reader faster ----------------------
# The same 16 MiB O_DIRECT read, 256 KiB requests, on cold ranges of the
# default mount (m1) and the --readahead 0 mount (m3); two ranges, the
# best time of each mount counts.
best_ra=999999 best_0=999999
for r in 16 40; do
  t0=$(now_ms)
  dd if="$m1/disk" of=/dev/null iflag=direct bs=256K skip=$((r * 4)) count=64 status=none || fail "1b: read failed"
  t1=$(now_ms)
  dd if="$m3/disk" of=/dev/null iflag=direct bs=256K skip=$((r * 4)) count=64 status=none || fail "1b: read failed"
  t2=$(now_ms)
  echo "1b: 16 MiB from ${r}M in 256K reads: readahead $((t1 - t0)) ms, --readahead 0 $((t2 - t1)) ms"
  [ $((t1 - t0)) -lt $best_ra ] && best_ra=$((t1 - t0))
  [ $((t2 - t1)) -lt $best_0 ] && best_0=$((t2 - t1))
done
[ $((best_0 * 2)) -ge $((best_ra * 3)) ] \
  || fail "1b: readahead read took $best_ra ms, without readahead $best_0 ms: not 1.5x faster"
echo "1b: readahead is $(( best_0 * 10 / (best_ra > 0 ? best_ra : 1) )) / 10 times faster"
corfs_unmount "$m3" || fail "unmount m3"
corfs_unmount "$m1" || fail "unmount m1"

# --- 2. scattered 4 KiB reads fetch nothing more ------------------------
# No offset lies in the block after one read before (that would continue
# a stream); some share a block.
s2=$T/s2 m2=$T/m2
corfs_mount "$s2" "$m2" --block-size 64K --disk disk="$furl"
offs=( 0 $((5 * MiB + 12288)) $((33 * MiB)) $((17 * MiB + 61440)) $((63 * MiB + 8192))
       $((5 * MiB + 4096)) $((40 * MiB + 3 * BLK)) $((9 * MiB + 7 * BLK)) $((51 * MiB + 11 * BLK + 4096))
       $((2 * MiB + 15 * BLK)) $((28 * MiB)) $((33 * MiB + 40960)) $((45 * MiB + 5 * BLK))
       $((12 * MiB + 9 * BLK + 28672)) $((58 * MiB + 2 * BLK)) $((21 * MiB + 13 * BLK)) $((36 * MiB + 6 * BLK))
       $((5 * MiB)) $((49 * MiB + 14 * BLK)) $((1 * MiB + 3 * BLK)) $((25 * MiB + 8 * BLK + 53248))
       $((55 * MiB + 10 * BLK)) $((31 * MiB + 4 * BLK)) $((62 * MiB + 12 * BLK)) )
mark=$(wc -l < "$flog")
declare -A blocks=() ends=()
for o in "${offs[@]}"; do
  b=$((o / BLK))
  [ -z "${ends[$b]:-}" ] || fail "2: test bug: offset $o continues an earlier read"
  ends[$((b + 1))]=1
  blocks[$b]=1
  dd if="$m2/disk" of="$T/r2" iflag=direct,skip_bytes bs=4K count=1 skip="$o" status=none || fail "2: read at $o failed"
  same_range "$T/r2" "$o" 4096 "$img" || fail "2: read at $o got wrong data"
done
settle "$s2" "$flog"
p=$(present "$s2")
[ "$p" -eq $(( ${#blocks[@]} * BLK )) ] \
  || fail "2: ${#offs[@]} scattered 4K reads in ${#blocks[@]} blocks: present_bytes=$p, expected $(( ${#blocks[@]} * BLK ))"
while read -r o c; do
  [ $((o % BLK)) -eq 0 ] && [ "$c" -eq $BLK ] && [ -n "${blocks[$((o / BLK))]:-}" ] \
    || fail "2: parent read offset $o count $c is not one of the blocks read"
done < <(reads_since "$flog" "$mark" $size)
echo "2: ${#offs[@]} scattered 4K reads fetched exactly their ${#blocks[@]} blocks"
corfs_unmount "$m2" || fail "unmount m2"

# The "slow" parent for 4 and 6: 200 ms per read, 32 MiB.
ssize=$((32 * MiB))
simg=$T/slow.img
head -c $ssize /dev/urandom > "$simg"
ssock=$T/s.sock slog=$T/s.log
start_nbdkit "$T/s.pid" -r -U "$ssock" --filter=log --filter=delay \
  file "$simg" logfile="$slog" rdelay=200ms
surl=$(nbd_uri "$ssock")

# --- 4. writes racing readahead -----------------------------------------
s4=$T/s4 m4=$T/m4
corfs_mount "$s4" "$m4" --block-size 64K --disk disk="$surl"
cp "$simg" "$T/expect4"
head -c $((4 * MiB)) /dev/urandom > "$T/pool"
: > "$T/writes4"
mark=$(wc -l < "$slog")
dd if="$m4/disk" of="$T/r4" iflag=direct bs=1M count=24 status=none & rpid=$!
nw=0
for i in $(seq 500); do
  wait_pos $rpid $MiB || break
  pos=$(awk '/^pos:/ {print $2}' "/proc/$rpid/fdinfo/0" 2>/dev/null) || break
  [ -n "$pos" ] || break
  # A block 1 to 4 MiB ahead of the reader's current request: queued or
  # being prefetched.  Whole blocks, 4K inside a block (its other bytes
  # are fetched first) and 64K straddling two blocks.
  blk=$(( pos / BLK + 16 + (nw * 7) % 48 ))
  case $((nw % 3)) in
    0) off=$((blk * BLK)) len=$BLK ;;
    1) off=$((blk * BLK + 4096 * (nw % 16))) len=4096 ;;
    2) off=$((blk * BLK + BLK / 2)) len=$BLK ;;
  esac
  [ $((off + len)) -le $ssize ] || break
  src=$(( (nw * 69632) % (4 * MiB - BLK) ))
  dd if="$T/pool" of="$T/piece" iflag=skip_bytes,count_bytes skip=$src count=$len bs=$len status=none
  dd if="$T/piece" of="$m4/disk" oflag=direct,seek_bytes seek=$off bs=$len conv=notrunc,fsync status=none \
    || fail "4: write of $len bytes at $off failed"
  dd if="$T/piece" of="$T/expect4" oflag=seek_bytes seek=$off bs=$len conv=notrunc status=none
  echo "$off $len $src" >> "$T/writes4"
  nw=$((nw + 1))
done
wait $rpid || fail "4: the sequential reader failed"
[ $nw -ge 3 ] || fail "4: only $nw writes made while the reader ran: no race tested"
# The reader saw, in each 4 KiB, the parent's data or one of the writes'.
python3 - "$T/r4" "$simg" "$T/pool" "$T/writes4" <<'PY' || fail "4: the reader got data that is neither the parent's nor written"
import sys
got = open(sys.argv[1], "rb").read(); par = open(sys.argv[2], "rb").read()
pool = open(sys.argv[3], "rb").read()
ok = {}
for line in open(sys.argv[4]):
    off, ln, src = map(int, line.split())
    for s in range(off, off + ln, 4096):
        ok.setdefault(s, []).append(pool[src + s - off:src + s - off + 4096])
assert len(got) == 24 << 20, len(got)
for s in range(0, len(got), 4096):
    g = got[s:s + 4096]
    if g != par[s:s + 4096] and g not in ok.get(s, []):
        sys.exit("sector at %d: not the parent's, not written" % s)
PY
# Whole disk: the parent plus the writes, now and after a remount.
dd if="$m4/disk" of="$T/d4" iflag=direct bs=4M status=none || fail "4: whole-disk read failed"
cmp "$T/d4" "$T/expect4" || fail "4: the disk differs from the parent plus the writes (a prefetch overwrote a write?)"
# A whole-block write never fetches its block: if the parent was asked
# for it, a prefetch (or the reader) fetched it around the write.
raced=0 whole=0
reads_since "$slog" "$mark" $ssize > "$T/reads4"
while read -r off len src; do
  [ $((off % BLK)) -eq 0 ] && [ "$len" -eq $BLK ] || continue
  whole=$((whole + 1))
  awk -v lo=$off -v hi=$((off + len)) '$1 < hi && $1 + $2 > lo' "$T/reads4" | grep -q . && raced=$((raced + 1))
done < "$T/writes4"
echo "4: $nw writes ahead of the reader ($raced of $whole whole-block writes hit blocks that were also fetched); disk = parent + writes"
corfs_unmount "$m4" || fail "4: unmount failed"
corfs_mount "$s4" "$m4"
dd if="$m4/disk" of="$T/d4" iflag=direct bs=4M status=none || fail "4: whole-disk read after remount failed"
cmp "$T/d4" "$T/expect4" || fail "4: after remount the disk differs from the parent plus the writes"
[ "$(jst "$s4" .dirty_bytes)" -gt 0 ] || fail "4: no dirty bytes after the writes"
echo "4: after remount: disk = parent + writes"
corfs_unmount "$m4" || fail "4: unmount failed"

# --- 6. kill -9 with prefetches in flight --------------------------------
s6=$T/s6 m6=$T/m6
corfs_mount "$s6" "$m6" --block-size 64K --disk disk="$surl"
dd if="$m6/disk" of=/dev/null iflag=direct bs=1M count=32 status=none 2>/dev/null & rpid=$!
wait_pos $rpid $((8 * MiB)) || fail "6: reader ended early"
# A flush (open for writing, fsync, no write) commits what is present so
# far, prefetched blocks included: some survive the kill.
dd if=/dev/null of="$m6/disk" conv=notrunc,fsync status=none || fail "6: fsync failed"
flushed=$(present "$s6")
# Wait (bounded) for a parent read in flight beyond the reader's current
# request: the log is read first, then the reader's position (the reader
# cannot pass a block still being fetched).
pending="" pos=""
for i in $(seq 100); do
  out=$(python3 - "$slog" "/proc/$rpid/fdinfo/0" <<'PY'
import re, sys
start = {}
for l in open(sys.argv[1]):
    m = re.search(r"connection=(\d+) Read id=(\d+) offset=(0x[0-9a-f]+) count=(0x[0-9a-f]+)", l)
    if m: start[(m[1], m[2])] = (int(m[3], 16), int(m[4], 16)); continue
    m = re.search(r"connection=(\d+) \.\.\.Read id=(\d+)", l)
    if m: start.pop((m[1], m[2]), None)
try:
    pos = int(re.search(r"^pos:\s*(\d+)", open(sys.argv[2]).read(), re.M)[1])
except (OSError, TypeError):
    sys.exit(0)                 # the reader is gone
# (4 KiB reads are the identity samples of new connections)
print(pos, *sorted(o for o, c in start.values() if c != 4096 and o >= pos + (1 << 20)))
PY
)
  [ -n "$out" ] || break
  pos=${out%% *} pending=${out#"$pos"}
  [ -n "$pending" ] && break
  sleep 0.02
done
[ -n "$pending" ] || fail "6: no prefetch in flight while the reader ran"
crash_unmount "$s6" "$m6"
wait $rpid 2>/dev/null || true
echo "6: killed -9 with the reader at $pos, $flushed bytes present after the flush, prefetches in flight at offsets$pending"
"$CORFS" mount --state "$s6" --stream=off "$m6" || fail "6: remount after kill -9 failed"
p=$(present "$s6")
[ "$p" -ge $((8 * MiB)) ] || fail "6: only $p bytes present after the remount, but 8 MiB were read before the flush"
dd if="$m6/disk" of="$T/d6" iflag=direct bs=4M status=none || fail "6: whole-disk read after kill -9 failed"
cmp "$T/d6" "$simg" || fail "6: after kill -9 and remount the disk differs from the parent"
echo "6: after remount ($p bytes present at start) the whole disk equals the parent"
corfs_unmount "$m6" || fail "6: unmount failed"

# --- 5. failed prefetches do not fail the reader -------------------------
# delay before error: a read that arrived before the error file appeared
# is still failed if the file is there when its 200 ms are up.
HOLD=4
esock=$T/e.sock elog=$T/e.log
start_nbdkit "$T/e.pid" -r -U "$esock" --filter=log --filter=delay --filter=error \
  file "$simg" logfile="$elog" rdelay=200ms \
  error-pread=EIO error-pread-rate=100% error-pread-file="$T/err"
s5=$T/s5 m5=$T/m5
corfs_mount "$s5" "$m5" --block-size 64K --hold $HOLD --disk disk="$(nbd_uri "$esock")"
e0=$(jst "$s5" .counters.fetch_errors)
t0=$(now_ms)
# Two sequential 1M reads: the second queues the prefetch of [2M, 4M),
# whose parent reads are in flight (200 ms) when every parent read starts
# failing, so the prefetches fail until their --hold is up (t+4 s).  The
# reader comes back for [2M, 16M) at t+2 s: it waits for the failing
# prefetches, then fetches those blocks itself, and its own --hold (to
# t+6 s) outlasts the errors (to t+4.6 s).
dd if="$m5/disk" of="$T/r5a" iflag=direct bs=1M count=2 status=none 2>"$T/r5.err" ||
  fail "5: the first 2 MiB failed: $(cat "$T/r5.err")"
touch "$T/err"
sleep 2
dd if="$m5/disk" of="$T/r5b" iflag=direct bs=1M skip=2 count=14 status=none 2>"$T/r5.err" & rpid=$!
sleep 2.6
rm -f "$T/err"
wait $rpid || fail "5: the sequential reader failed after its prefetches failed: $(cat "$T/r5.err")"
el=$(( $(now_ms) - t0 ))
cat "$T/r5a" "$T/r5b" > "$T/r5"
same_range "$T/r5" 0 $((16 * MiB)) "$simg" || fail "5: the reader got wrong data"
e1=$(jst "$s5" .counters.fetch_errors)
nerr=$(grep -c '\.\.\.Read id=.* error=' "$elog" || true)
echo "5: reader succeeded in $el ms; $nerr parent reads failed; fetch_errors $e0 -> $e1"
[ "$e1" -gt "$e0" ] || fail "5: no fetch failed (fetch_errors $e0 -> $e1): the prefetches were not hit by the errors"
dd if="$m5/disk" of="$T/d5" iflag=direct bs=4M count=4 status=none || fail "5: re-read failed"
same_range "$T/d5" 0 $((16 * MiB)) "$simg" || fail "5: re-read of [0, 16M) differs from the parent"
# 5b. The parent stays broken: a read that waits for a failing prefetch
# gets EIO within its own --hold, not after the prefetch's hold plus its
# own.
dd if="$m5/disk" of=/dev/null iflag=direct bs=1M skip=20 count=2 status=none ||
  fail "5b: reading [20M, 22M) failed"
touch "$T/err"
t1=$(now_ms); rc=0
dd if="$m5/disk" of=/dev/null iflag=direct bs=1M skip=22 count=1 status=none 2>"$T/r5c.err" || rc=$?
el=$(( $(now_ms) - t1 ))
rm -f "$T/err"
echo "5b: read behind a failing prefetch: rc $rc after $el ms (hold $HOLD s)"
[ $rc -ne 0 ] && grep -q "Input/output error" "$T/r5c.err" || fail "5b: expected EIO, got rc $rc: $(cat "$T/r5c.err")"
[ $el -le $(( HOLD * 1000 + 1500 )) ] || fail "5b: EIO after $el ms, beyond the hold of $HOLD s"
corfs_unmount "$m5" || fail "5: unmount failed"

echo OK
