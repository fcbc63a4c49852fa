#!/usr/bin/env bash
# A large guest discard (fallocate -p, 64 MiB) while the streamer runs
# against a slow but live parent (each read 1 s, hold 3 s).  A write or
# discard claims its whole range at once; the streamer kept claiming 2 MiB
# chunks inside it, so the range was never free all at once and every
# discard failed with EIO after the hold.  A guest waiting for its claim
# now makes the streamer (and readahead) back off: every discard succeeds
# within the hold, and so does a large write.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires nbdkit eval --dump-plugin
requires fusermount3 --version
requires fallocate --version

MiB=$((1 << 20))
HOLD=3
img=$T/parent.img
head -c $((128 * MiB)) /dev/urandom > "$img"
now_ms () { local t=${EPOCHREALTIME/./}; echo $(( t / 1000 )); }
start_eval_parent "$T/e.sock" "$img" --stall "$T/slow" 1
cleanup_fn rm -f "$T/slow"
st=$T/state mnt=$T/mnt
corfs_mount "$st" "$mnt" --hold $HOLD --stream=off --disk d="$(nbd_uri "$T/e.sock")"
for m in 100 104 108 112; do dd if="$mnt/d" of=/dev/null bs=$MiB count=1 skip=$m iflag=direct status=none & done; wait
touch "$T/slow"
"$CORFS" stream --state "$st" d >/dev/null || fail "stream start failed"
sleep 2                                   # the streamer's chunks are in flight
for i in 1 2 3; do
  t=$(now_ms)
  fallocate -p -o $(( (i - 1) * 16 * MiB )) -l $((64 * MiB)) "$mnt/d" 2>"$T/f.err" ||
    fail "discard $i of 64 MiB failed after $(( $(now_ms) - t )) ms with the streamer on: $(cat "$T/f.err")"
  ms=$(( $(now_ms) - t ))
  echo "discard $i of 64 MiB: ok after $ms ms"
  [ $ms -lt $(( HOLD * 1000 + 1000 )) ] || fail "discard $i took $ms ms, past the hold"
done
t=$(now_ms)
dd if=/dev/zero of="$mnt/d" bs=8M count=1 seek=8 oflag=direct conv=notrunc status=none 2>"$T/f.err" ||
  fail "an 8 MiB write failed with the streamer on: $(cat "$T/f.err")"
echo "8 MiB write: ok after $(( $(now_ms) - t )) ms"
# The discarded range reads zeros.
cmp -n $((16 * MiB)) "$mnt/d" /dev/zero || fail "the discarded range does not read zeros"
"$CORFS" stream --state "$st" d --pause >/dev/null 2>&1 || true
rm -f "$T/slow"
echo OK
