#!/usr/bin/env bash
# Each source's own pin outlives the mount (issue 21's review): a disk
# first attached with one file:// parent, then remounted with a second
# source (a copy), records each source's identity (mtime, inode) as it
# checks it; the set's fingerprint samples only 34 blocks, so an image
# changed in place at one offset is caught by the source's pin, not by
# the fingerprint:
#  - the second mount is killed (no clean unmount): the pins were
#    recorded as the sources were checked;
#  - the first source changed in place at 20 MiB: a remount without
#    --disk refuses it (named, "mismatch") and serves from the second,
#    the old bytes at 20 MiB;
#  - both changed: the mount fails (no source matches), naming both in
#    the log; nothing is read from either;
#  - a source given twice (credentials aside) is refused, named.
. "$(dirname "$0")/../functions.sh"
requires fusermount3 --version
requires jq --version

MiB=1048576
head -c $((64 * MiB)) /dev/urandom > "$T/a.img"
cp "$T/a.img" "$T/b.img"
cp "$T/a.img" "$T/orig.img"
a=file://$T/a.img; b=file://$T/b.img

piece () { dd if="$1" iflag=skip_bytes,count_bytes skip="$2" count="$3" bs=1M status=none; }
src () { "$CORFS" status --state "$T/s" d --json | jq -r "(if type == \"array\" then .[0] else . end).parent.sources[$1]$2"; }
wait_state () {
  local i
  for i in $(seq $(($3 * 10))); do
    [ "$(src "$1" .state)" = "$2" ] && return 0
    sleep 0.1
  done
  fail "source $1 is $(src "$1" .state), not $2, after $3 s"
}
change () { printf 'CHANGED!' | dd of="$1" bs=1 seek=$((20 * MiB)) conv=notrunc status=none; }
at20 () { piece "$T/m/d" $((20 * MiB)) 8; }

corfs_mount "$T/s" "$T/m" --hold 5 --readahead 0 --disk d="$a"
piece "$T/m/d" $((10 * MiB)) "$MiB" | cmp -s - <(piece "$T/orig.img" $((10 * MiB)) "$MiB") ||
  fail "first read differs"
corfs_unmount "$T/m"

corfs_mount "$T/s" "$T/m" --hold 5 --readahead 0 --disk d="$a" --disk d="$b"
wait_state 0 ok 10
wait_state 1 ok 10
sleep 0.5                       # the prober records the second's pin
crash_unmount "$T/s" "$T/m"

change "$T/a.img"
corfs_mount "$T/s" "$T/m" --hold 5 --readahead 0 ||
  fail "remount with one source changed failed: $(tail -3 "$T/s/corfs.log")"
[ "$(src 0 .state)" = mismatch ] || fail "changed source 0 is $(src 0 .state), not mismatch"
[ "$(src 1 .state)" = ok ] || fail "unchanged source 1 is $(src 1 .state), not ok"
[ "$(at20)" != CHANGED! ] || fail "read the changed source's bytes"
at20 | cmp -s - <(piece "$T/orig.img" $((20 * MiB)) 8) || fail "bytes at 20 MiB differ"
grep -a "source $a refused: its own identity changed" "$T/s/corfs.log" > /dev/null ||
  fail "no refusal of $a logged"
[ "$(src 0 .reads)" = 0 ] || fail "the changed source was read from"
corfs_unmount "$T/m"

change "$T/b.img"
mkdir -p "$T/m"
if "$CORFS" mount --state "$T/s" --stream=off --hold 5 --readahead 0 "$T/m" 2> "$T/err"; then
  cleanup_fn _force_unmount "$T/s" "$T/m"
  fail "mounted with both sources changed: at 20 MiB $(at20)"
fi
grep -q "no source matches the image" "$T/err" || fail "unexpected error: $(cat "$T/err")"
for u in "$a" "$b"; do
  grep -a "source $u refused: its own identity changed" "$T/s/corfs.log" > /dev/null ||
    fail "no refusal of $u logged"
done

mkdir -p "$T/m2"
"$CORFS" mount --state "$T/s2" --disk d="$a" --disk d="$a" "$T/m2" 2> "$T/err" &&
  { cleanup_fn _force_unmount "$T/s2" "$T/m2"; fail "mounted with $a given twice"; }
grep -q "source $a is given twice" "$T/err" || fail "unexpected error: $(cat "$T/err")"
http=http://127.0.0.1:9/x
"$CORFS" mount --state "$T/s2" --disk d="$http" --disk d="http://u:secret@127.0.0.1:9/x" \
  "$T/m2" 2> "$T/err" && fail "mounted with $http given twice"
grep -q "source $http is given twice" "$T/err" || fail "unexpected error: $(cat "$T/err")"
! grep -q secret "$T/err" || fail "the error shows the credentials"
echo PASS
