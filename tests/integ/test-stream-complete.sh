#!/usr/bin/env bash
# Proves the background streamer fills a whole disk and then lets go of
# its parent (src/cor/stream.c, "Completion"):
#  - on a 1 GiB random image served read-only by nbdkit, a mount with
#    --stream=on and `corfs stream NAME --wait` exits 0;
#  - status says complete, stream.state "complete", present_bytes == size,
#    and the parent was released (parent.state "idle");
#  - the metrics count every byte the streamer fetched under
#    source="stream" (size minus what guests fetched, nothing zero-skipped);
#  - the disk reads back equal to the image, and still does after the
#    parent (nbdkit) is stopped: every byte is local;
#  - `stream --wait` returns only once completion is durable: two more
#    disks on the same image, one filled by the streamer and one by a
#    guest reading it all, are killed with SIGKILL the moment --wait
#    returns (well inside the 5 s commit interval), and after the parent
#    is stopped they remount complete and read back equal to the image.
. "$(dirname "$0")/../functions.sh"

requires nbdkit --version
requires fusermount3 --version
requires jq --version

MiB=$((1 << 20))
SIZE=$((1024 * MiB))
img=$T/parent.img sock=$T/nbd.sock
head -c $SIZE /dev/urandom > "$img"

start_nbdkit "$T/nbd.pid" -r -U "$sock" file "$img"

st=$T/state mnt=$T/mnt
jfield () { "$CORFS" status --state "$st" d --json | jq -r "$1"; }

corfs_mount "$st" "$mnt" --stream=on --disk d="$(nbd_uri "$sock")"

# The stream runs by itself; --wait returns once the disk is complete.
rc=0; timeout 120 "$CORFS" stream --state "$st" d --wait || rc=$?
[ $rc -eq 0 ] || fail "corfs stream d --wait exited $rc (expected 0)"

s=$("$CORFS" status --state "$st" d --json)
echo "$s" | jq -c '{complete, present_bytes, size, stream, parent: .parent.state, counters}'
[ "$(echo "$s" | jq -r .complete)" = true ] || fail "status: complete is not true after --wait"
[ "$(echo "$s" | jq -r .stream.state)" = complete ] ||
  fail "status: stream.state is $(echo "$s" | jq -r .stream.state) (expected complete)"
[ "$(echo "$s" | jq -r .present_bytes)" -eq $SIZE ] ||
  fail "status: present_bytes $(echo "$s" | jq -r .present_bytes) != size $SIZE"
[ "$(echo "$s" | jq -r .size)" -eq $SIZE ] || fail "status: size $(echo "$s" | jq -r .size) != $SIZE"
[ "$(echo "$s" | jq -r .stream.errors)" -eq 0 ] ||
  fail "status: stream.errors $(echo "$s" | jq -r .stream.errors): $(echo "$s" | jq -r .stream.last_error)"

# Completion releases the parent (release-parent defaults to true).  The
# release may trail the status flip by a moment: allow 5 s.
ps=""
for _ in $(seq 50); do ps=$(jfield .parent.state); [ "$ps" = idle ] && break; sleep 0.1; done
[ "$ps" = idle ] || fail "parent.state is '$ps' after completion (expected idle: released)"

# Metrics: what the streamer fetched is the disk minus what guests fetched.
m=$("$CORFS" metrics --state "$st") || fail "corfs metrics failed"
metric () { echo "$m" | awk -v k="$1" '$1 == k { print $2 }'; }
mstream=$(metric 'corfs_fetched_bytes_total{disk="d",source="stream"}')
mguest=$(metric 'corfs_fetched_bytes_total{disk="d",source="guest"}')
mzero=$(metric 'corfs_zero_skipped_bytes_total{disk="d"}')
echo "metrics: stream $mstream guest $mguest zero-skipped $mzero"
[ -n "$mstream" ] && [ -n "$mguest" ] ||
  fail "metrics lack corfs_fetched_bytes_total{disk=\"d\",source=stream|guest}: $(echo "$m" | grep fetched)"
[ "$mzero" = 0 ] || fail "corfs_zero_skipped_bytes_total is $mzero on a random image (expected 0)"
[ $((mstream + mguest)) -eq $SIZE ] ||
  fail "fetched bytes: stream $mstream + guest $mguest != size $SIZE"
[ "$mguest" -eq 0 ] || fail "guests fetched $mguest bytes although nothing read the disk"
bg=$(echo "$s" | jq -r .counters.background_fetched_bytes)
[ "$bg" -eq "$mstream" ] || fail "status background_fetched_bytes $bg != metrics stream bytes $mstream"

cmp "$mnt/d" "$img" || fail "the streamed disk differs from the image"

# --wait means durable: kill -9 the moment it returns.
corfs_mount "$T/st2" "$T/mnt2" --stream=on --disk d="$(nbd_uri "$sock")"
rc=0; timeout 120 "$CORFS" stream --state "$T/st2" d --wait || rc=$?
[ $rc -eq 0 ] || fail "st2: corfs stream d --wait exited $rc"
crash_unmount "$T/st2" "$T/mnt2"
corfs_mount "$T/st3" "$T/mnt3" --disk d="$(nbd_uri "$sock")"
cat "$T/mnt3/d" > /dev/null
rc=0; timeout 120 "$CORFS" stream --state "$T/st3" d --wait || rc=$?
[ $rc -eq 0 ] || fail "st3 (filled by reads): corfs stream d --wait exited $rc"
crash_unmount "$T/st3" "$T/mnt3"

# The parent goes away: every byte is local.
pid=$(cat "$T/nbd.pid")
kill_pid "$pid"; wait_gone "$pid"
timeout 120 cmp "$mnt/d" "$img" || fail "with the parent stopped, the disk no longer reads as the image"
ps=$(jfield .parent.state)
[ "$ps" = idle ] || fail "parent.state is '$ps' after reading a complete disk (expected idle)"
[ "$(jfield .counters.fetch_errors)" -eq 0 ] || fail "fetch errors after the parent stopped"

corfs_unmount "$mnt" || fail "corfs unmount failed"

for n in 2 3; do
  corfs_mount "$T/st$n" "$T/mnt$n"
  [ "$("$CORFS" status --state "$T/st$n" d --json | jq -r .complete)" = true ] ||
    fail "st$n: not complete after a kill -9 right after stream --wait returned"
  timeout 120 cmp "$T/mnt$n/d" "$img" ||
    fail "st$n: after a kill -9 right after stream --wait, the disk (parent stopped) differs from the image"
  corfs_unmount "$T/mnt$n" || fail "st$n: corfs unmount failed"
done
echo OK
