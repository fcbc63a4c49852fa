#!/usr/bin/env bash
# Proves the parent reconnect and identity rules (docs/design.md "Remote failure
# policy", rules 6 and 9) when an NBD parent on a unix socket goes away:
#  - present blocks keep reading correctly while the parent is down;
#  - a cold read waits (within --hold) for the parent to come back on the
#    same socket and then returns the right data; the reconnect is counted;
#  - a parent that stays down gives EIO after the hold, and status says
#    down/retrying with the last error;
#  - a parent that comes back serving a DIFFERENT image of the same size
#    is refused: EIO, never the new image's bytes, parent.state "changed".
. "$(dirname "$0")/../functions.sh"

requires nbdkit --version
requires fusermount3 --version
requires jq --version

HOLD=15
SIZE=$((32 << 20))
MiB=$((1 << 20))
img=$T/parent.img other=$T/other.img
head -c $SIZE /dev/urandom > "$img"
head -c $SIZE /dev/urandom > "$other"
sock=$T/parent.sock

now_ms () { local t=${EPOCHREALTIME/./}; echo $(( t / 1000 )); }
jfield () { "$CORFS" status --state "$state" d --json | jq -r "$1"; }
serve () { rm -f "$sock"; start_nbdkit "$T/nbd.pid" -U "$sock" file "$1"; }
stop_parent () { kill_pid "$(cat "$T/nbd.pid")"; wait_gone "$(cat "$T/nbd.pid")"; }

# read_to OFFSET LEN OUT [TIMEOUT]: O_DIRECT read of the disk; stderr in OUT.err.
read_to () {
  timeout "${4:-60}" dd if="$mnt/d" of="$3" bs="$2" count=1 skip="$1" \
    iflag=direct,fullblock,skip_bytes status=none 2>"$3.err"
}
# same_as IMAGE OUT OFFSET LEN: OUT holds IMAGE's bytes at OFFSET.
same_as () {
  dd if="$1" of="$2.want" bs="$4" count=1 skip="$3" iflag=skip_bytes status=none
  cmp -s "$2" "$2.want"
}
# check_eio RC OUT OFFSET: failed with EIO; whatever was delivered came
# from the original image and not from the other one.
check_eio () {
  [ "$1" -ne 124 ] || fail "read at $3 hung (killed by timeout)"
  [ "$1" -ne 0 ] || fail "read at $3 succeeded (expected EIO)"
  grep -q "Input/output error" "$2.err" ||
    fail "read at $3 failed without EIO: $(cat "$2.err")"
  if [ -s "$2" ]; then
    local n; n=$(stat -c %s "$2")
    same_as "$img" "$2" "$3" "$n" || fail "failed read at $3 delivered data not from the pinned parent"
  fi
}

serve "$img"
# --stream=off --readahead 0: blocks stay cold until a read asks for them.
state=$T/state mnt=$T/mnt
corfs_mount "$state" "$mnt" --hold $HOLD --stream=off --readahead 0 --disk d="$(nbd_uri "$sock")"

# The first half becomes present.
read_to 0 $((16 * MiB)) "$T/half" || fail "reading the first half failed: $(cat "$T/half.err")"
same_as "$img" "$T/half" 0 $((16 * MiB)) || fail "first half: WRONG DATA"

# --- 1. parent down: present blocks still read ------------------------------
stop_parent
t0=$(now_ms)
read_to 0 $((16 * MiB)) "$T/half2" 30 || fail "present blocks failed while the parent is down: $(cat "$T/half2.err")"
el=$(( $(now_ms) - t0 ))
same_as "$img" "$T/half2" 0 $((16 * MiB)) || fail "present blocks: WRONG DATA while the parent is down"
[ $el -lt 5000 ] || fail "present blocks took $el ms while the parent is down: the parent was waited for"

# --- 2. a cold read survives a parent restart within the hold ---------------
t0=$(now_ms)
read_to $((16 * MiB)) $MiB "$T/cold1" & rpid=$!
sleep 2
kill -0 $rpid 2>/dev/null || fail "the cold read ended before the parent came back: $(cat "$T/cold1.err")"
serve "$img"
rc=0; wait $rpid || rc=$?
el=$(( $(now_ms) - t0 ))
echo "cold read across a parent restart: rc $rc after $el ms"
[ $rc -eq 0 ] || fail "cold read across a parent restart failed (rc $rc): $(cat "$T/cold1.err")"
same_as "$img" "$T/cold1" $((16 * MiB)) $MiB || fail "cold read across a restart: WRONG DATA"
rec=$(jfield .counters.remote_reconnects)
[ "$rec" -ge 1 ] || fail "counters.remote_reconnects is $rec after the parent restarted"
[ "$(jfield .parent.state)" = connected ] || fail "parent.state is $(jfield .parent.state) after reconnecting"

# --- 3. the parent stays down: EIO after the hold ---------------------------
stop_parent
t0=$(now_ms); rc=0
read_to $((20 * MiB)) $MiB "$T/cold2" || rc=$?
el=$(( $(now_ms) - t0 ))
echo "cold read with the parent down: rc $rc after $el ms (hold $HOLD s)"
check_eio $rc "$T/cold2" $((20 * MiB))
[ $el -ge $(( (HOLD - 1) * 1000 )) ] || fail "cold read failed after $el ms, before the hold ($HOLD s)"
[ $el -lt $(( (HOLD + 10) * 1000 )) ] || fail "cold read took $el ms to fail, far beyond the hold ($HOLD s)"
ps=$(jfield .parent.state)
case $ps in down|retrying) ;; *) fail "parent.state is '$ps' with the parent down (expected down or retrying)";; esac
[ -n "$(jfield .parent.last_error)" ] || fail "parent.last_error is empty with the parent down"
echo "status with the parent down: state $ps, last_error: $(jfield .parent.last_error)"

# --- 4. a different image of the same size comes back: refused --------------
serve "$other"
rc=0
read_to $((24 * MiB)) $MiB "$T/cold3" 60 || rc=$?
check_eio $rc "$T/cold3" $((24 * MiB))
if [ -s "$T/cold3" ]; then
  same_as "$other" "$T/cold3" $((24 * MiB)) "$(stat -c %s "$T/cold3")" &&
    fail "the read returned the NEW image's data"
fi
ps=$(jfield .parent.state)
[ "$ps" = changed ] || fail "parent.state is '$ps' after the parent changed (expected changed)"
echo "status with a changed parent: last_error: $(jfield .parent.last_error)"
# What was fetched from the pinned image is still served.
read_to 0 $MiB "$T/again" 30 || fail "present blocks failed after the parent changed: $(cat "$T/again.err")"
same_as "$img" "$T/again" 0 $MiB || fail "present blocks: WRONG DATA after the parent changed"

corfs_unmount "$mnt"
