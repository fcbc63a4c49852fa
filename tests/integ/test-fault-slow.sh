#!/usr/bin/env bash
# Proves corfs copes with a slow parent (docs/design.md "Remote failure policy"):
#  - with every parent read delayed 300 ms (nbdkit delay filter) data is
#    correct, and cold reads of different regions are fetched in parallel
#    (4 concurrent 1 MiB cold reads take well under 4 times one read);
#  - a parent slower than --hold gives EIO after about the hold, never
#    wrong data and never a hang: both when a (re)connecting parent is
#    slow (delay filter, rdelay=8) and when a live connection stalls on a
#    read (eval plugin sleeping 8 s while a file exists).
. "$(dirname "$0")/../functions.sh"

requires nbdkit --version
requires nbdkit --filter=delay null --dump-plugin
requires nbdkit eval --dump-plugin
requires fusermount3 --version
requires jq --version

SIZE=$((32 << 20))
MiB=$((1 << 20))
img=$T/parent.img
head -c $SIZE /dev/urandom > "$img"

now_ms () { local t=${EPOCHREALTIME/./}; echo $(( t / 1000 )); }
jfield () { "$CORFS" status --state "$1" "$2" --json | jq -r "$3"; }

# read_to MNT DISK OFFSET LEN OUT: O_DIRECT read, bounded; stderr in OUT.err.
read_to () {
  timeout 30 dd if="$1/$2" of="$5" bs="$4" count=1 skip="$3" \
    iflag=direct,fullblock,skip_bytes status=none 2>"$5.err"
}
# check_ok OUT OFFSET LEN: the read into OUT returned the parent's bytes.
check_ok () {
  dd if="$img" of="$1.want" bs="$3" count=1 skip="$2" iflag=skip_bytes status=none
  cmp -s "$1" "$1.want" || fail "read at $2 returned WRONG DATA"
}
# check_eio RC OUT OFFSET: the read failed with EIO (not a hang, not data).
check_eio () {
  [ "$1" -ne 124 ] || fail "read at $3 hung (killed by timeout 30)"
  [ "$1" -ne 0 ] || fail "read at $3 succeeded although the parent is slower than the hold"
  grep -q "Input/output error" "$2.err" || fail "read at $3 failed without EIO: $(cat "$2.err")"
  if [ -s "$2" ]; then
    local n; n=$(stat -c %s "$2")
    dd if="$img" of="$2.want" bs="$n" count=1 skip="$3" iflag=skip_bytes status=none
    cmp -s "$2" "$2.want" || fail "failed read at $3 delivered WRONG DATA"
  fi
}

# --- 1. 300 ms per read: correct, and parallel -----------------------------
start_nbdkit "$T/d.pid" -U "$T/d.sock" --filter=delay file "$img" rdelay=300ms
# --stream=off: these tests need blocks to stay cold until a read asks for them.
s1=$T/state1 m1=$T/mnt1
corfs_mount "$s1" "$m1" --hold 20 --stream=off --disk slow="$(nbd_uri "$T/d.sock")"

# parallel_reads MIB...: one O_DIRECT 1 MiB read per offset (in MiB), all
# at once; checks every result.
parallel_reads () {
  local pids=() m i=0 rc
  for m in "$@"; do
    read_to "$m1" slow $(( m * MiB )) $MiB "$T/p$m" & pids+=($!)
  done
  for m in "$@"; do
    rc=0; wait "${pids[$i]}" || rc=$?
    [ $rc -eq 0 ] || fail "parallel read at ${m} MiB failed (rc $rc): $(cat "$T/p$m.err")"
    check_ok "$T/p$m" $(( m * MiB )) $MiB
    i=$((i + 1))
  done
}

# Warm-up: opens the parent connections (each connect samples the
# parent's identity with three delayed reads), so that the timing below
# measures reads only.
parallel_reads 0 2 4 6

t0=$(now_ms)
read_to "$m1" slow $(( 8 * MiB )) $MiB "$T/single" || fail "single cold read failed: $(cat "$T/single.err")"
single=$(( $(now_ms) - t0 ))
check_ok "$T/single" $(( 8 * MiB )) $MiB
[ $single -ge 250 ] || fail "a cold read took $single ms: it cannot have gone to the 300 ms parent"

t0=$(now_ms)
parallel_reads 12 14 16 18
par=$(( $(now_ms) - t0 ))
echo "one cold 1 MiB read: $single ms; four in parallel: $par ms"
[ $par -lt $(( 3 * single )) ] ||
  fail "4 parallel cold reads took $par ms, not clearly less than 4 x $single ms: fetches are serialized"

fr=$(jfield "$s1" slow .counters.fetch_requests)
[ "$fr" -eq 9 ] || fail "expected 9 fetches (one per cold 1 MiB read), status says $fr"
[ "$(jfield "$s1" slow .counters.fetch_errors)" -eq 0 ] || fail "fetch errors with a slow but healthy parent"
[ "$(jfield "$s1" slow .present_bytes)" -eq $(( 9 * MiB )) ] || fail "present_bytes is not 9 MiB"
[ "$(jfield "$s1" slow .parent.state)" = connected ] || fail "parent state is not connected"
corfs_unmount "$m1"

# --- 2. slower than --hold --------------------------------------------------
HOLD=3
# s8: a parent that comes back (same socket) 8 s slow per read (rdelay=8).
start_nbdkit "$T/f.pid" -U "$T/f.sock" file "$img"
# tog: a parent whose reads stall for 8 s while $T/stall exists.
start_eval_parent "$T/e.sock" "$img" --stall "$T/stall" 8
s2=$T/state2 m2=$T/mnt2
corfs_mount "$s2" "$m2" --hold $HOLD --stream=off \
  --disk s8="$(nbd_uri "$T/f.sock")" --disk tog="$(nbd_uri "$T/e.sock")"

read_to "$m2" s8 0 $MiB "$T/s8a" || fail "s8: first read failed: $(cat "$T/s8a.err")"
check_ok "$T/s8a" 0 $MiB
read_to "$m2" tog 0 $MiB "$T/tga" || fail "tog: first read failed: $(cat "$T/tga.err")"
check_ok "$T/tga" 0 $MiB

# 2a. the parent restarts with rdelay=8 (seconds) on the same socket.
kill_pid "$(cat "$T/f.pid")"
rm -f "$T/f.sock"
start_nbdkit "$T/f2.pid" -U "$T/f.sock" --filter=delay file "$img" rdelay=8
t0=$(now_ms); rc=0
read_to "$m2" s8 $(( 10 * MiB )) $MiB "$T/s8b" || rc=$?
el=$(( $(now_ms) - t0 ))
echo "s8: cold read with an 8 s parent: rc $rc after $el ms (hold $HOLD s)"
check_eio $rc "$T/s8b" $(( 10 * MiB ))
[ $el -ge $(( (HOLD - 1) * 1000 )) ] || fail "s8: failed after $el ms, before the hold"
[ $el -lt $(( (HOLD + 10) * 1000 )) ] || fail "s8: took $el ms to fail, far beyond the hold"
read_to "$m2" s8 0 $MiB "$T/s8c" || fail "s8: present block failed while the parent is slow"
check_ok "$T/s8c" 0 $MiB

# 2b. a live connection stalls in the middle of a read.
touch "$T/stall"
t0=$(now_ms); rc=0
read_to "$m2" tog $(( 10 * MiB )) $MiB "$T/tgb" || rc=$?
el=$(( $(now_ms) - t0 ))
echo "tog: cold read stalled by the parent: rc $rc after $el ms (hold $HOLD s)"
check_eio $rc "$T/tgb" $(( 10 * MiB ))
[ $el -ge $(( (HOLD - 1) * 1000 )) ] || fail "tog: failed after $el ms, before the hold"
[ $el -lt $(( (HOLD + 10) * 1000 )) ] || fail "tog: took $el ms to fail, far beyond the hold"
[ "$(jfield "$s2" tog .counters.fetch_errors)" -ge 1 ] || fail "tog: fetch_errors not counted"
rm -f "$T/stall"
read_to "$m2" tog $(( 10 * MiB )) $MiB "$T/tgc" || fail "tog: cold read still fails after the stall ended: $(cat "$T/tgc.err")"
check_ok "$T/tgc" $(( 10 * MiB )) $MiB

corfs_unmount "$m2"
