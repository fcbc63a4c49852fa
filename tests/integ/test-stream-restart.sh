#!/usr/bin/env bash
# Proves the stream is resumable (src/cor/stream.c: "what is present is
# never fetched again, so a restart simply finds the missing blocks"):
#  - clean restart: a slow stream (config file: rate = 16M) is stopped by
#    `corfs unmount` mid-way; on the next mount the present extents are
#    recorded, then the stream resumes and completes, and nbdkit's log
#    shows no parent read after the restart that overlaps an extent that
#    was present before it (the 4 KiB identity samples every new
#    connection takes at 0, size/2 and size-4K aside); the disk equals the
#    image;
#  - crash restart: the daemon is killed with SIGKILL mid-stream; a new
#    mount with --stream=on completes and the disk equals the image.
. "$(dirname "$0")/../functions.sh"

requires nbdkit --version
requires fusermount3 --version
requires jq --version

MiB=$((1 << 20))
SIZE=$((256 * MiB))
img=$T/parent.img sock=$T/nbd.sock log=$T/nbd.log
head -c $SIZE /dev/urandom > "$img"
start_nbdkit "$T/nbd.pid" -r -U "$sock" --filter=log file "$img" logfile="$log"
url=$(nbd_uri "$sock")

# A config file that makes the stream slow: 16 MiB/s, 16 s for the disk.
cat > "$T/slow.conf" <<EOF
[corfs]
stream = on
rate = 16M
EOF

jstatus () { "$CORFS" status --state "$1" d --json "${@:2}"; }

# reads_after BYTE: "offset count" (decimal) of every parent Read request
# logged after byte BYTE of the log, identity samples left out.
reads_after () {
  tail -c +"$(( $1 + 1 ))" "$log" |
  sed -n 's/.* Read id=[0-9]* offset=\(0x[0-9a-f]*\) count=\(0x[0-9a-f]*\) .*/\1 \2/p' |
  while read -r o c; do
    o=$((o)) c=$((c))
    [ "$c" -eq 4096 ] && { [ "$o" -eq 0 ] || [ "$o" -eq $((SIZE / 2)) ] || [ "$o" -eq $((SIZE - 4096)) ]; } && continue
    echo "$o $c"
  done
  return 0
}

# --- 1. clean unmount mid-stream, resume --------------------------------
st=$T/state mnt=$T/mnt
corfs_mount "$st" "$mnt" --stream=on --config "$T/slow.conf" --disk d="$url"
[ "$(jstatus "$st" | jq -r .stream.rate)" -eq $((16 * MiB)) ] ||
  fail "stream.rate is $(jstatus "$st" | jq -r .stream.rate) (config said rate = 16M)"
sleep 1.5
s=$(jstatus "$st")
[ "$(echo "$s" | jq -r .stream.state)" = running ] ||
  fail "stream.state is $(echo "$s" | jq -r .stream.state) 1.5 s after a --stream=on mount (expected running)"
corfs_unmount "$mnt" || fail "corfs unmount mid-stream failed"

# Back, paused: what is present now is what the first run left.
corfs_mount "$st" "$mnt" --stream=paused
s=$(jstatus "$st" --maps)
present=$(echo "$s" | jq -r .present_bytes)
echo "after the clean unmount: $present of $SIZE bytes present, stream $(echo "$s" | jq -r .stream.state)"
[ "$present" -gt 0 ] || fail "nothing present after 1.5 s of streaming"
[ "$present" -lt $SIZE ] || fail "the slow stream (16 MiB/s) completed 256 MiB in 1.5 s"
[ "$(echo "$s" | jq -r .stream.state)" = paused ] ||
  fail "stream.state is $(echo "$s" | jq -r .stream.state) on a --stream=paused mount"
echo "$s" | jq -r '.maps.present[] | "\(.offset) \(.length)"' > "$T/before"
[ -s "$T/before" ] || fail "status --maps lists no present extent although present_bytes is $present"
sum=$(awk '{ s += $2 } END { print s + 0 }' "$T/before")
[ "$sum" -eq "$present" ] || fail "present extents add up to $sum, present_bytes is $present"

mark=$(stat -c %s "$log")
rc=0; timeout 120 "$CORFS" stream --state "$st" d --wait || rc=$?
[ $rc -eq 0 ] || fail "corfs stream --wait after the restart exited $rc"
[ "$(jstatus "$st" | jq -r .complete)" = true ] || fail "not complete after --wait"
[ "$(jstatus "$st" | jq -r .stream.state)" = complete ] || fail "stream.state is not complete after --wait"

reads_after "$mark" > "$T/after"
[ -s "$T/after" ] || fail "no parent read logged after the restart (log parse broken?)"
# Any read after the restart overlapping an extent present before it?
overlaps=$(awk 'NR == FNR { po[NR] = $1; pl[NR] = $2; n = NR; next }
  { for (i = 1; i <= n; i++) if ($1 < po[i] + pl[i] && $1 + $2 > po[i]) {
      print "read offset " $1 " count " $2 " overlaps present [" po[i] ", " po[i] + pl[i] ")"; break } }' \
  "$T/before" "$T/after" | head -5)
[ -z "$overlaps" ] || fail "blocks present before the restart were fetched again: $overlaps"
# And together they cover the disk.
refetched=$(awk '{ s += $2 } END { print s + 0 }' "$T/after")
echo "after the restart: $(wc -l < "$T/after") parent reads, $refetched bytes"
[ $((refetched + present)) -ge $SIZE ] ||
  fail "fetched $refetched bytes after the restart + $present present < size $SIZE"
cmp "$mnt/d" "$img" || fail "the disk differs from the image after a resumed stream"
corfs_unmount "$mnt" || fail "corfs unmount failed"

# --- 2. kill -9 mid-stream, resume ---------------------------------------
st=$T/state2 mnt=$T/mnt2
corfs_mount "$st" "$mnt" --stream=on --config "$T/slow.conf" --disk d="$url"
sleep 1.5
[ "$(jstatus "$st" | jq -r .stream.state)" = running ] || fail "state2: the stream is not running"
crash_unmount "$st" "$mnt"
corfs_mount "$st" "$mnt" --stream=on
s=$(jstatus "$st")
echo "after kill -9: $(echo "$s" | jq -r .present_bytes) bytes present, widened $(echo "$s" | jq -r .widened), stream $(echo "$s" | jq -r .stream.state)"
[ "$(echo "$s" | jq -r .complete)" = false ] || fail "complete after 1.5 s at 16 MiB/s and a kill -9"
rc=0; timeout 120 "$CORFS" stream --state "$st" d --wait || rc=$?
[ $rc -eq 0 ] || fail "corfs stream --wait after kill -9 exited $rc"
s=$(jstatus "$st")
[ "$(echo "$s" | jq -r .complete)" = true ] || fail "not complete after --wait (after kill -9)"
[ "$(echo "$s" | jq -r .present_bytes)" -eq $SIZE ] || fail "present_bytes != size after kill -9 + stream"
cmp "$mnt/d" "$img" || fail "the disk differs from the image after kill -9 and a resumed stream"
corfs_unmount "$mnt" || fail "corfs unmount failed"
echo OK
