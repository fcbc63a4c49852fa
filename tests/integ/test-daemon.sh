#!/usr/bin/env bash
# Proves the daemon's life cycle (docs/design.md "Commands", daemon files):
#  - the daemon writes its PID to STATE/corfs.pid and holds a lock on it;
#  - the FUSE fsname in /proc/self/mountinfo is corfs:<absolute state path>
#    even when --state is given as a relative path with "..";
#  - SIGTERM to that PID unmounts cleanly (mount gone, process gone,
#    "clean exit" in STATE/corfs.log, lock released);
#  - after kill -9 the stale corfs.pid (dead PID, no lock) does not mean
#    "in use": a new mount on the same state directory succeeds;
#  - `corfs unmount MNT` returns only once the daemon is gone.
. "$(dirname "$0")/../functions.sh"

requires nbdkit --version
requires fusermount3 --version
requires flock --version
requires jq --version

img=$T/parent.img
head -c $((8 << 20)) /dev/urandom > "$img"
start_nbdkit "$T/nbd.pid" -U "$T/nbd.sock" file "$img"
URL=$(nbd_uri "$T/nbd.sock")
mkdir -p "$T/sub" "$T/state" "$T/mnt"
state=$(realpath "$T/state") mnt=$(realpath "$T/mnt")
cleanup_fn _force_unmount "$state" "$mnt"

# pid_alive PID: running (a zombie counts as gone).
pid_alive () {
  local st
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}
mounted () { grep -q " $mnt fuse" /proc/mounts; }
lock_free () { flock -n "$state/corfs.pid" true; }
clean_exits () { grep -c "clean exit" "$state/corfs.log" || true; }
check_data () { cmp "$mnt/d" "$img" || fail "$1: the disk does not read the parent's data"; }

# --- 1. pid file, lock and fsname ------------------------------------------
( cd "$T" && "$CORFS" mount --state sub/../state --disk d="$URL" mnt ) ||
  fail "mount with a relative --state failed"
[ -s "$state/corfs.pid" ] || fail "no $state/corfs.pid after mount"
pid=$(daemon_pid "$state")
[[ $pid =~ ^[0-9]+$ ]] || fail "corfs.pid holds '$pid', not a PID"
pid_alive "$pid" || fail "corfs.pid names PID $pid, which is not running"
[ "$(cat "/proc/$pid/comm")" = corfs ] || fail "PID $pid in corfs.pid is $(cat "/proc/$pid/comm"), not corfs"
lock_free && fail "corfs.pid is not locked while the daemon runs"

line=$(awk -v m="$mnt" '$5 == m' /proc/self/mountinfo | tail -n 1)
[ -n "$line" ] || fail "$mnt not in /proc/self/mountinfo"
fstype=$(echo "${line#* - }" | cut -d' ' -f1)
fsname=$(echo "${line#* - }" | cut -d' ' -f2)
[ "$fstype" = fuse.corfs ] || fail "fstype is '$fstype', expected fuse.corfs"
[ "$fsname" = "corfs:$state" ] || fail "fsname is '$fsname', expected 'corfs:$state'"
check_data "first mount"

# --- 2. SIGTERM: clean unmount ----------------------------------------------
kill -TERM "$pid"
for i in $(seq 100); do pid_alive "$pid" || break; sleep 0.1; done
pid_alive "$pid" && fail "the daemon ($pid) still runs 10 s after SIGTERM"
for i in $(seq 100); do mounted || break; sleep 0.1; done
mounted && fail "still mounted 10 s after SIGTERM to the daemon"
[ "$(clean_exits)" -eq 1 ] || fail "corfs.log has no 'clean exit' after SIGTERM"
lock_free || fail "corfs.pid still locked after the daemon exited"

# --- 3. kill -9: a stale pid file is not "in use" ----------------------------
"$CORFS" mount --state "$state" "$mnt" || fail "remount after SIGTERM failed"
pid2=$(daemon_pid "$state")
[ "$pid2" != "$pid" ] || fail "corfs.pid still names the old daemon"
check_data "remount"
crash_unmount "$state" "$mnt"
[ -f "$state/corfs.pid" ] || fail "expected kill -9 to leave corfs.pid behind"
[ "$(daemon_pid "$state")" = "$pid2" ] || fail "the stale corfs.pid does not name the killed daemon"
lock_free || fail "the stale corfs.pid is still locked after kill -9"
mounted && fail "the dead mount is still there after fusermount3 -u"

"$CORFS" mount --state "$state" "$mnt" 2>"$T/err" ||
  fail "mount on a state directory with a stale corfs.pid failed: $(cat "$T/err")"
pid3=$(daemon_pid "$state")
[ "$pid3" != "$pid2" ] || fail "corfs.pid was not rewritten by the new daemon"
pid_alive "$pid3" || fail "the new daemon ($pid3) is not running"
check_data "mount after kill -9"
[ "$("$CORFS" status --state "$state" d --json | jq -r .name)" = d ] || fail "status fails after the remount"

# --- 4. corfs unmount waits for the daemon ------------------------------------
before=$(clean_exits)
"$CORFS" unmount "$mnt" || fail "corfs unmount failed"
pid_alive "$pid3" && fail "corfs unmount returned while the daemon (PID $pid3) is still running"
mounted && fail "corfs unmount returned but $mnt is still mounted"
lock_free || fail "corfs unmount returned but corfs.pid is still locked"
[ "$(clean_exits)" -eq $((before + 1)) ] || fail "no 'clean exit' in corfs.log after corfs unmount"
exit 0
