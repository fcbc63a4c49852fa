#!/usr/bin/env bash
# Self-check for crashtool (the kill -9 crash-test workload and checker),
# run by hand: tests/tools/crashtool-selftest.sh.  No FUSE involved: it runs
# the writer on a local file, then checks that verify accepts what the rule
# allows (real runs, torn log tails, lost unacknowledged writes, session
# scoping of acknowledgements) and rejects what it forbids (stale acked
# stamps, reverts to parent, garbage, bad fill).  Not part of any suite.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
T=$(mktemp -d /tmp/crashtool-selftest.XXXXXX)
trap 'rm -rf "$T"' EXIT
CT=$T/crashtool
S=4096

gcc -std=gnu11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -pthread -O2 \
    -Wall -Wextra -Werror -o "$CT" "$here/crashtool.c"

fail () { echo "FAIL: $*" >&2; exit 1; }
expect_ok () {      # expect_ok WHAT FILE LOG
  "$CT" verify "$2" "$3" "$T/parent" > "$T/out" || { cat "$T/out"; fail "$1: verify rejected"; }
  echo "ok: $1: $(tail -n 1 "$T/out")"
}
expect_bad () {     # expect_bad WHAT FILE LOG
  local rc=0
  "$CT" verify "$2" "$3" "$T/parent" > "$T/out" || rc=$?
  [ $rc -eq 1 ] || { cat "$T/out"; fail "$1: verify exit $rc, wanted 1"; }
  echo "ok: $1: rejected: $(head -n 1 "$T/out")"
}
put_sector () {     # put_sector DST SECTOR SRC [SRC_SECTOR]
  dd if="$3" of="$1" bs=$S skip="${4:-$2}" seek="$2" count=1 conv=notrunc status=none
}

head -c 16M /dev/urandom > "$T/parent"
cp "$T/parent" "$T/disk"

# Two sessions on the same log: buffered for 2 s, then O_DIRECT if the
# filesystem under /tmp supports it.
"$CT" write "$T/disk" "$T/log" 1 --seconds 2
direct=
dd if=/dev/zero of="$T/dtest" bs=$S count=1 oflag=direct status=none 2>/dev/null && direct=--direct
"$CT" write "$T/disk" "$T/log" 2 $direct --max-ops 5000
"$CT" stats "$T/log"
[ "$(grep -c '^S ' "$T/log")" -eq 2 ] || fail "expected two sessions"
awk '$1=="W" { if ($2 <= last) exit 1; last = $2 }' "$T/log" || fail "ids not increasing"
expect_ok "real run" "$T/disk" "$T/log"
cp "$T/disk" "$T/good"

# Acknowledged writes per sector, in id order (mirrors crashtool's rule).
# Prints "sector lower_acked_id acked_id" for one sector acked twice.
pick=$(awk '
  $1 == "S" { sess++ }
  $1 == "A" { if (!(sess in maxa) || $2 > maxa[sess]) maxa[sess] = $2 }
  $1 == "E" { failed[$2] = 1 }
  $1 == "W" { n++; id[n] = $2; first[n] = $3; cnt[n] = $4; ses[n] = sess }
  END {
    for (i = 1; i <= n; i++) {
      if (failed[id[i]] || !(ses[i] in maxa) || id[i] > maxa[ses[i]]) continue
      for (k = first[i]; k < first[i] + cnt[i]; k++) {
        if (k in acked) prev[k] = acked[k]
        acked[k] = id[i]
      }
    }
    for (k in prev) { print k, prev[k], acked[k]; exit }
  }' "$T/log")
[ -n "$pick" ] || fail "no sector with two acknowledged writes"
read -r sec lower acked <<< "$pick"
echo "using sector $sec: acked write $acked, older acked write $lower"

# --- must be accepted ---
cp "$T/log" "$T/log2"
printf 'W 99999999 1' >> "$T/log2"                      # torn last line
expect_ok "torn log tail" "$T/good" "$T/log2"

cp "$T/good" "$T/d"; cp "$T/log" "$T/log2"
maxid=$(awk '$1=="W" { m = $2 } END { print m }' "$T/log")
echo "W $((maxid + 1)) $sec 1" >> "$T/log2"             # issued, never acked
"$CT" stamp "$T/d" "$sec" $((maxid + 1))
expect_ok "unacknowledged later write landed" "$T/d" "$T/log2"

# Hand-made log: write 2 (sector 5) was never acknowledged before the crash
# and got lost; the fsync in session 2 must not make it acknowledged.  Write
# 4 (sector 9) failed but may have landed.
printf 'S 1\nW 1 5 1\nA 1\nW 2 5 1\nS 3\nW 3 7 1\nA 3\nW 4 9 1\nE 4\n' > "$T/log3"
cp "$T/parent" "$T/d"
"$CT" stamp "$T/d" 5 1; "$CT" stamp "$T/d" 7 3; "$CT" stamp "$T/d" 9 4
expect_ok "lost write across sessions, failed write landed" "$T/d" "$T/log3"
"$CT" stamp "$T/d" 5 2; put_sector "$T/d" 9 "$T/parent"
expect_ok "later unacked write landed, failed write lost" "$T/d" "$T/log3"
[ "$("$CT" stats "$T/log3")" = "writes=4 acked_writes=2 fsyncs=2 errors=1" ] ||
  fail "stats: $("$CT" stats "$T/log3")"
echo "ok: stats"

# --- must be rejected ---
cp "$T/good" "$T/d"; "$CT" stamp "$T/d" "$sec" "$lower"
expect_bad "stale stamp of older acked write $lower" "$T/d" "$T/log"

cp "$T/good" "$T/d"; put_sector "$T/d" "$sec" "$T/parent"
expect_bad "acked sector reverted to parent" "$T/d" "$T/log"

cp "$T/good" "$T/d"; head -c $S /dev/urandom > "$T/rand"; put_sector "$T/d" "$sec" "$T/rand" 0
expect_bad "random bytes" "$T/d" "$T/log"

cp "$T/good" "$T/d"
printf 'XXXXXXXX' | dd of="$T/d" bs=1 seek=$((sec * S + 100)) conv=notrunc status=none
expect_bad "stamp with bad fill" "$T/d" "$T/log"

cp "$T/good" "$T/d"; "$CT" stamp "$T/d" "$sec" $((maxid + 1))
expect_bad "stamp of a write with no W line" "$T/d" "$T/log"

nb=$(( sec > 0 ? sec - 1 : sec + 1 ))
cp "$T/good" "$T/d"; put_sector "$T/d" "$sec" "$T/good" "$nb"
expect_bad "sector copied from its neighbour" "$T/d" "$T/log"

cp "$T/parent" "$T/d"; "$CT" stamp "$T/d" 5 1; "$CT" stamp "$T/d" 9 4
expect_bad "acked write 3 lost" "$T/d" "$T/log3"

echo "PASS: crashtool self-test"
