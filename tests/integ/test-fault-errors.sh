#!/usr/bin/env bash
# Proves that parent read errors never become wrong data (docs/design.md rule 6,
# "Remote failure policy"):
#  - with nbdkit's error filter failing 30% of reads, every read of the
#    disk returns either the right bytes or EIO, transient errors are
#    retried within --hold so the whole disk reads correctly, and the
#    retries show in counters.remote_retries;
#  - with a persistent error (error filter at 100% while a file exists), a
#    cold read fails with EIO after about --hold seconds, a present block
#    still reads at once, and once the error clears the cold read returns
#    the right data.
. "$(dirname "$0")/../functions.sh"

requires nbdkit --version
requires nbdkit --filter=error null --dump-plugin
requires fusermount3 --version
requires jq --version
requires dd --version

HOLD=5
SIZE=$((32 << 20))
PIECE=$((128 << 10))            # many small reads: many chances to hit an error

img=$T/parent.img
head -c $SIZE /dev/urandom > "$img"

# Disk a: 30% of reads fail, but only once $T/err-a exists, so that the
# mount itself (which samples the parent's identity) is not a lottery.
# Disk b: every read fails while $T/err-b exists.
start_nbdkit "$T/a.pid" -U "$T/a.sock" --filter=error file "$img" \
  error-pread=EIO error-pread-rate=30% error-pread-file="$T/err-a"
start_nbdkit "$T/b.pid" -U "$T/b.sock" --filter=error file "$img" \
  error-pread=EIO error-pread-rate=100% error-pread-file="$T/err-b"

# --stream=off: these tests need blocks to stay cold until a read asks for them.
state=$T/state mnt=$T/mnt
corfs_mount "$state" "$mnt" --hold $HOLD --stream=off \
  --disk a="$(nbd_uri "$T/a.sock")" --disk b="$(nbd_uri "$T/b.sock")"

now_ms () { local t=${EPOCHREALTIME/./}; echo $(( t / 1000 )); }
jfield () { "$CORFS" status --state "$state" "$1" --json | jq -r "$2"; }

# read_piece DISK OFFSET LEN: O_DIRECT read of [OFFSET, OFFSET+LEN) into
# $T/got (stderr in $T/dd.err).  Returns 0 on a full read.  Whatever the
# outcome, the bytes delivered must be a prefix of the source: a failure
# must be EIO, never wrong or made-up data.
read_piece () {
  local disk=$1 off=$2 len=$3 rc=0 n
  rm -f "$T/got"
  timeout 60 dd if="$mnt/$disk" of="$T/got" bs="$len" count=1 skip="$off" \
    iflag=direct,fullblock,skip_bytes status=none 2>"$T/dd.err" || rc=$?
  [ $rc -ne 124 ] || fail "$disk: read at $off hung (> 60 s)"
  dd if="$img" of="$T/want" bs="$len" count=1 skip="$off" iflag=skip_bytes status=none
  n=$(stat -c %s "$T/got" 2>/dev/null || echo 0)
  if [ $rc -eq 0 ]; then
    [ "$n" -eq "$len" ] || fail "$disk: read at $off succeeded but returned $n of $len bytes"
    cmp -s "$T/got" "$T/want" || fail "$disk: read at $off returned WRONG DATA"
    return 0
  fi
  grep -q "Input/output error" "$T/dd.err" ||
    fail "$disk: read at $off failed with something other than EIO: $(cat "$T/dd.err")"
  if [ "$n" -gt 0 ]; then
    cmp -s -n "$n" "$T/got" "$T/want" ||
      fail "$disk: failed read at $off delivered $n bytes of WRONG DATA"
  fi
  return 1
}

# --- 1. transient errors: 30% of parent reads fail -------------------------
touch "$T/err-a"
pieces=$(( SIZE / PIECE ))
declare -a todo
for (( i = 0; i < pieces; i++ )); do todo+=("$i"); done
first_failures=0
for round in 1 2 3 4 5; do
  left=()
  for i in "${todo[@]}"; do
    read_piece a $(( i * PIECE )) $PIECE || left+=("$i")
  done
  [ $round -eq 1 ] && first_failures=${#left[@]}
  todo=("${left[@]}")
  [ ${#todo[@]} -eq 0 ] && break
done
[ ${#todo[@]} -eq 0 ] ||
  fail "a: ${#todo[@]} pieces still fail after 5 rounds at a 30% error rate with --hold $HOLD"
echo "a: all $pieces pieces read correctly ($first_failures failed in round 1)"

# Every block is present now: the whole disk reads right without the parent.
cmp "$mnt/a" "$img" || fail "a: whole-disk compare differs after all pieces were read"
[ "$(jfield a .complete)" = true ] || fail "a: not complete after reading every block"
retries=$(jfield a .counters.remote_retries)
echo "a: remote_retries=$retries fetch_errors=$(jfield a .counters.fetch_errors)"
[ "$retries" -gt 0 ] || fail "a: counters.remote_retries is $retries at a 30% error rate"
rm -f "$T/err-a"

# --- 2. persistent errors: every parent read fails ------------------------
read_piece b 0 $((1 << 20)) || fail "b: read of [0, 1M) failed with no error injected"

touch "$T/err-b"
cold=$((16 << 20))
t0=$(now_ms)
if read_piece b $cold 65536; then
  fail "b: cold read at $cold succeeded while the parent fails every read"
fi
el=$(( $(now_ms) - t0 ))
echo "b: cold read failed with EIO after $el ms (hold $HOLD s)"
[ $el -ge $(( (HOLD - 1) * 1000 )) ] ||
  fail "b: cold read failed after $el ms, before the hold ($HOLD s) was used"
[ $el -lt $(( (HOLD + 10) * 1000 )) ] ||
  fail "b: cold read took $el ms to fail, far beyond the hold ($HOLD s)"
[ "$(jfield b .counters.fetch_errors)" -ge 1 ] || fail "b: fetch_errors not counted"
[ -n "$(jfield b .parent.last_error)" ] || fail "b: parent.last_error empty after a failed read"

t0=$(now_ms)
read_piece b 65536 65536 || fail "b: present block failed to read while the parent is failing"
el=$(( $(now_ms) - t0 ))
[ $el -lt 2000 ] || fail "b: present block took $el ms to read while the parent is failing"

rm -f "$T/err-b"
read_piece b $cold 65536 || fail "b: cold read at $cold still fails after the error cleared"
echo "b: cold read succeeded after the error cleared"

corfs_unmount "$mnt"
