#!/usr/bin/env bash
# Change generations for incremental backup (docs/design.md rule 4):
#  - a new disk is in generation 1; `checkpoint` starts generation 2 and
#    prints 2;
#  - `dirty --since 2 --json` lists exactly the blocks (64 KiB) written
#    after that checkpoint (B: writes, one rewriting part of A, and
#    discards: a punched hole and a zeroed range), and `--since 1`
#    exactly A and B, rounded out to blocks;
#  - `--since 0` and `--since 99` (no such generation) fail with a message;
#  - merge (which clears the dirty map) never erases the changed maps:
#    `--since 2` still lists B and `--since 1` A and B after synced;
#  - checkpoint -> 3, and `--since 3` is empty; a clean remount keeps the
#    generation (3) and every answer, with "widened": false;
#  - after a kill -9 with fsync'd writes C in generation 3, the remount
#    reports "widened": true (status and dirty) and `--since 3` covers
#    every byte of C (a superset), as do `--since 2` (B and C) and
#    `--since 1` (A, B and C).
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires jq --version
requires python3 --version

bs=65536 size=$((32 * 1048576))
head -c $size /dev/urandom > $T/parent.img
start_nbdkit $T/nbd.pid -U $T/sock file $T/parent.img
st=$T/state mnt=$T/mnt
corfs_mount $st $mnt --block-size 64K --disk d="$(nbd_uri $T/sock)"
disk=$mnt/d

status () { "$CORFS" status --state $st d --json | jq -r "$@"; }

# wr OFF LEN: an fsync'd write of random data.
wr () {
  head -c "$2" /dev/urandom | dd of=$disk bs="$2" count=1 seek="$1" iflag=fullblock \
     oflag=seek_bytes conv=notrunc,fsync status=none || fail "write of $2 bytes at $1 failed"
}

# check HOW GEN RANGES...: compare `dirty --since GEN --json` with RANGES
# ("offset:length" byte ranges), rounded out to blocks: HOW is "exact" (the
# same set of blocks) or "covers" (every byte of RANGES inside an extent).
# Also checks that the extents are well-formed, and prints "widened".
check () {
  local how=$1 gen=$2; shift 2
  "$CORFS" dirty --state $st d --since $gen --json > $T/dirty.json \
    || fail "dirty --since $gen failed"
  python3 - "$how" $bs $size $T/dirty.json "$@" <<'PY' || fail "dirty --since $gen: see above"
import json, sys
how, bs, size, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ranges = [tuple(map(int, r.split(":"))) for r in sys.argv[5:]]
j = json.load(open(path))
got = set()
for e in j["extents"]:
    o, l = e["offset"], e["length"]
    if o % bs or l <= 0 or o + l > size or (l % bs and o + l != size):
        sys.exit(f"malformed extent {e} in {j}")
    for b in range(o // bs, (o + l + bs - 1) // bs):
        if b in got:
            sys.exit(f"overlapping extents in {j}")
        got.add(b)
want = set()
for o, l in ranges:
    want.update(range(o // bs, (o + l - 1) // bs + 1))
fmt = lambda s: sorted(s)[:20]
if how == "exact" and got != want:
    sys.exit(f"dirty --since {j['since']}: blocks {fmt(got)}, expected exactly {fmt(want)}; "
             f"missing {fmt(want - got)}, extra {fmt(got - want)}")
if how == "covers" and not want <= got:
    sys.exit(f"dirty --since {j['since']}: blocks {fmt(got)} miss {fmt(want - got)} of the written data")
print(f"dirty --since {j['since']}: {len(j['extents'])} extents, {len(got)} blocks, "
      f"generation {j['generation']}, widened {str(j['widened']).lower()}")
PY
}
widened () { jq -r .widened $T/dirty.json; }

[ "$(status .generation)" = 1 ] || fail "a new disk is in generation $(status .generation), not 1"

# A: generation 1.
A=("4096:100" "$((1048576 + 100)):200000" "$((10 * 1048576)):65536" "$((16 * 1048576 - 1)):2")
for r in "${A[@]}"; do wr ${r%:*} ${r#*:}; done
gen=$("$CORFS" checkpoint --state $st d) || fail "checkpoint failed"
[ "$gen" = 2 ] || fail "the first checkpoint printed '$gen', expected 2"
[ "$(status .generation)" = 2 ] || fail "status generation $(status .generation) after the checkpoint"

# B: generation 2, rewriting part of A.
B=("$((1048576 + 150000)):100" "$((20 * 1048576 - 10)):20" "$((30 * 1048576 + 5)):1" "$((size - 3)):3")
for r in "${B[@]}"; do wr ${r%:*} ${r#*:}; done
# Discards are changes too.
fallocate -p -o $((5 * 1048576 + 10)) -l 100000 $disk || fail "punch hole failed"
fallocate -z -o $((8 * 1048576)) -l 65536 $disk || fail "zero range failed"
sync $disk || fail "fsync failed"
B+=("$((5 * 1048576 + 10)):100000" "$((8 * 1048576)):65536")
check exact 2 "${B[@]}"
[ "$(widened)" = false ] || fail "widened without a crash"
check exact 1 "${A[@]}" "${B[@]}"

# Bad generations.
for g in 0 99; do
  rc=0; "$CORFS" dirty --state $st d --since $g --json > $T/out 2> $T/err || rc=$?
  [ $rc -ne 0 ] || fail "dirty --since $g succeeded: $(cat $T/out)"
  grep -qi "generation" $T/err || fail "dirty --since $g: the error does not mention the generation: $(cat $T/err)"
  echo "--since $g refused: $(cat $T/err)"
done

# Merge clears the dirty map, not the changed maps.
"$CORFS" merge --state $st d --parent-owned --wait || fail "merge failed"
[ "$(status .dirty_bytes)" = 0 ] || fail "dirty_bytes $(status .dirty_bytes) after the merge"
check exact 2 "${B[@]}"
check exact 1 "${A[@]}" "${B[@]}"

gen=$("$CORFS" checkpoint --state $st d) || fail "checkpoint (2) failed"
[ "$gen" = 3 ] || fail "the second checkpoint printed '$gen', expected 3"
check exact 3
check exact 2 "${B[@]}"

# A clean remount keeps the generations.
pid=$(daemon_pid $st)
corfs_unmount $mnt || fail "unmount failed"
wait_gone $pid
"$CORFS" mount --state $st --stream=off $mnt || fail "remount failed"
[ "$(status .generation)" = 3 ] || fail "generation $(status .generation) after a clean remount, expected 3"
[ "$(status .widened)" = false ] || fail "widened after a clean remount"
check exact 3
check exact 2 "${B[@]}"
check exact 1 "${A[@]}" "${B[@]}"
[ "$(widened)" = false ] || fail "dirty says widened after a clean remount"

# C in generation 3, then kill -9.
C=("$((2 * 1048576 + 7)):70000" "$((25 * 1048576)):131072" "$((31 * 1048576 + 65535)):2")
for r in "${C[@]}"; do wr ${r%:*} ${r#*:}; done
check exact 3 "${C[@]}"
crash_unmount $st $mnt
"$CORFS" mount --state $st --stream=off $mnt || fail "remount after the kill failed"
[ "$(status .generation)" = 3 ] || fail "generation $(status .generation) after the kill, expected 3"
[ "$(status .widened)" = true ] || fail "status widened is $(status .widened) after an unclean shutdown"
check covers 3 "${C[@]}"
[ "$(widened)" = true ] || fail "dirty --since 3 after an unclean shutdown does not say widened: $(cat $T/dirty.json)"
check covers 2 "${B[@]}" "${C[@]}"
check covers 1 "${A[@]}" "${B[@]}" "${C[@]}"
corfs_unmount $mnt || fail "final unmount failed"
echo OK
