# Shared helpers for tests/integ/*.sh.  Source it first:
#   . "$(dirname "$0")/../functions.sh"
# Provides: requires, skip, fail, cleanup_fn, start_nbdkit, start_eval_parent,
# wait_mount, corfs_mount, corfs_unmount, daemon_pid, the test guest
# (build_test_guest, guest_acks, wait_guest_acks, guest_check), and $CORFS,
# $TOOLS, $T (a scratch dir).
set -euo pipefail

: "${CORFS:=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/build/corfs}"
: "${TOOLS:=$(dirname "$CORFS")/tests/tools}"
VG=${VG:-}

T=$(mktemp -d /tmp/corfs-test.XXXXXX)
_cleanups=()

# cleanup_fn CMD ARGS...: run at exit, last registered first.
cleanup_fn () { _cleanups+=("$(printf '%q ' "$@")"); }
_run_cleanups () {
  local rc=$? i
  set +e
  for (( i=${#_cleanups[@]}-1; i>=0; i-- )); do eval "${_cleanups[$i]}" >/dev/null 2>&1; done
  # Sanitizer reports from daemons (ASAN=1 builds) fail the test.
  if grep -lE "ERROR: (Address|Leak)Sanitizer|runtime error:" $(find "$T" -name corfs.log 2>/dev/null) /dev/null 2>/dev/null | grep -q .; then
    echo "FAIL: sanitizer report in a daemon log:"
    grep -hE -A30 "ERROR: (Address|Leak)Sanitizer|runtime error:" $(find "$T" -name corfs.log) | head -60
    [ $rc -eq 0 ] || [ $rc -eq 77 ] && rc=1
  fi
  if [ $rc -ne 0 ] && [ $rc -ne 77 ] && [ -d "$T" ]; then
    for f in "$T"/*/corfs.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 30 "$f"; }; done
  fi
  rm -rf "$T"
  exit $rc
}
trap _run_cleanups EXIT

skip () { echo "SKIP: $*"; exit 77; }
fail () { echo "FAIL: $*" >&2; exit 1; }
requires () { "$@" >/dev/null 2>&1 || skip "missing: $*"; }

# kill_pid PID: TERM, then KILL after 5 s; waits for it to go.
kill_pid () {
  local pid=$1 i
  kill "$pid" 2>/dev/null || return 0
  for i in $(seq 50); do alive "$pid" || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

# start_nbdkit PIDFILE ARGS...: start nbdkit in the background (-P PIDFILE)
# and register its cleanup.  Waits until the pid file exists (nbdkit
# writes it once it is listening).
start_nbdkit () {
  local pidfile=$1; shift
  rm -f "$pidfile"
  nbdkit -P "$pidfile" "$@"
  local i
  for i in $(seq 100); do [ -s "$pidfile" ] && break; sleep 0.1; done
  [ -s "$pidfile" ] || fail "nbdkit did not start: $*"
  cleanup_fn kill_pid "$(cat "$pidfile")"
}

# start_eval_parent SOCK IMG [OPTION]...: a parent that the test can stall.
# Serves the file IMG (its size read at connect) as an NBD export on the
# unix socket SOCK (corfs URL: nbd_uri SOCK) with nbdkit's eval plugin,
# thread model parallel, each read a dd of IMG; pid file SOCK.pid.  The
# caller needs `requires nbdkit eval --dump-plugin`.  Stopped at exit by
# the cleanup start_nbdkit registers (TERM, then KILL after 5 s); remove
# the stall files in a cleanup of your own, registered after the mount's,
# so that the unmount meets no new stall.  Options (each read checks them
# afresh, so touching or removing FILE takes effect at the next request):
#   -r                  nbdkit -r: a read-only export
#   --stall FILE SECS   while FILE exists, a read first sleeps SECS; given
#                       more than once, the first FILE that exists wins
#   --stall-below FILE OFF SECS [ELSE]
#                       while FILE exists, a read at an offset below OFF
#                       sleeps SECS first, any other ELSE (default none)
#   --before-read SHELL shell run before each read ($3 count, $4 offset)
#   --write             serve writes too (dd into IMG), and a no-op flush
#   --fail-writes FILE  (implies --write) while FILE exists, writes fail
#                       with EPERM
#   --slow-writes FILE SECS
#                       (implies --write) while FILE exists, a write first
#                       sleeps SECS (after the --fail-writes check)
start_eval_parent () {
  local sock=$1 img=$2 ro="" stall="" hook="" write="" wfail="" wslow=""; shift 2
  while [ $# -gt 0 ]; do
    case $1 in
      -r) ro=-r ;;
      --stall) stall+="${stall:+el}if [ -e '$2' ]; then sleep $3; "; shift 2 ;;
      --stall-below)
        local other=""
        if [ $# -ge 5 ] && [[ $5 != -* ]]; then other="else sleep $5; "; fi
        hook+="if [ -e '$2' ]; then if [ \$4 -lt $3 ]; then sleep $4; ${other}fi; fi; "
        shift 3; [ -n "$other" ] && shift ;;
      --before-read) hook+="$2
"; shift ;;
      --write) write=1 ;;
      --fail-writes) write=1; wfail="if [ -e '$2' ]; then echo EPERM refused >&2; exit 1; fi; "
                     shift ;;
      --slow-writes) write=1; wslow="if [ -e '$2' ]; then sleep $3; fi; "; shift 2 ;;
      *) fail "start_eval_parent: unknown option $1" ;;
    esac
    shift
  done
  local args=(thread_model='echo parallel' get_size="stat -c %s '$img'"
              pread="${stall:+${stall}fi; }${hook}dd if='$img' skip=\$4 count=\$3 iflag=skip_bytes,count_bytes status=none")
  [ -n "$write" ] && args+=(
    pwrite="${wfail}${wslow}dd of='$img' seek=\$4 bs=\$3 count=1 oflag=seek_bytes conv=notrunc status=none"
    flush="true" can_flush="exit 0" can_write="exit 0")
  start_nbdkit "$sock.pid" $ro -U "$sock" eval "${args[@]}"
}

# alive PID: the process exists and is not a zombie (PID 1 may be slow to
# reap daemons, which are not our children).
alive () {
  kill -0 "$1" 2>/dev/null || return 1
  [ "$(awk '{print $3}' /proc/$1/stat 2>/dev/null)" != Z ]
}

# wait_gone PID: wait (at most 30 s) for a process to exit.
wait_gone () {
  local i
  for i in $(seq 300); do alive "$1" || return 0; sleep 0.1; done
  fail "process $1 did not exit"
}

# daemon_pid STATE: the PID of the daemon holding STATE (from corfs.pid).
daemon_pid () { cat "$1/corfs.pid"; }

# is_mounted MNT
is_mounted () { grep -q " $(realpath "$1") fuse" /proc/mounts; }

# corfs_mount STATE MNT ARGS...: mount, register the unmount.  Tests see
# cold disks unless they ask for the streamer: --stream=off is added when
# ARGS has no --stream option.
corfs_mount () {
  local state=$1 mnt=$2 stream=--stream=off a; shift 2
  for a in "$@"; do case $a in --stream*) stream="";; esac; done
  mkdir -p "$state" "$mnt"
  $VG "$CORFS" mount --state "$state" $stream "$@" "$mnt"
  cleanup_fn _force_unmount "$state" "$mnt"
}
_force_unmount () {
  local state=$1 mnt=$2 pid=""
  [ -f "$state/corfs.pid" ] && pid=$(cat "$state/corfs.pid")
  is_mounted "$mnt" && fusermount3 -u "$mnt"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && { sleep 1; kill_pid "$pid"; }
  # A mount that was busy (a reader held inside it) is dead now that its
  # daemon is gone: clear it, or removing the scratch directory fails.
  is_mounted "$mnt" && { fusermount3 -u "$mnt" || umount -l "$mnt"; }
  return 0
}

# corfs_unmount MNT: clean unmount through the CLI (waits for the daemon).
corfs_unmount () { "$CORFS" unmount "$1"; }

# crash_unmount STATE MNT: kill -9 the daemon, clear the dead mount.
crash_unmount () {
  local pid; pid=$(daemon_pid "$1")
  kill -9 "$pid"; wait_gone "$pid"
  fusermount3 -u "$2" 2>/dev/null || umount -l "$2" 2>/dev/null || true
}

# twin_write DISK EXPECTED OFF LEN [OFLAG]: the same LEN random bytes at
# byte OFF of DISK (fsync'd; OFLAG, e.g. direct, is added to dd's oflag)
# and of the EXPECTED image, which tracks what the disk must read back.
# Non-zero if the write to DISK failed (dd's message on stderr).
twin_write () {
  head -c "$4" /dev/urandom > "$T/twin.data"
  dd if="$T/twin.data" of="$1" bs="$4" count=1 seek="$3" oflag=seek_bytes${5:+,$5} \
     conv=notrunc,fsync status=none || return 1
  dd if="$T/twin.data" of="$2" bs="$4" count=1 seek="$3" oflag=seek_bytes conv=notrunc status=none
}

# nbd_uri SOCKET: the corfs URL for an nbdkit unix socket.
nbd_uri () { echo "nbd+unix:///?socket=$1"; }

# ---- the test guest (scripts/build-guest) ------------------------------------
# Its /init writes record i (4 KiB, a header line with the nonce and the
# SHA-256 of the rest) at byte i*4096 of /dev/vda, and prints
# "ACK i SHA256" on the serial console once the record is durable.

# build_test_guest: build (or find cached) the guest; sets $guest to its
# directory (vmlinuz, initrd.img, kernel).  Skips the test when it cannot
# be built (e.g. apt-get download fails).
build_test_guest () {
  local top; top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  guest=$(timeout 600 "$top/scripts/build-guest" 2> "$T/build-guest.log") || {
    tail -n 5 "$T/build-guest.log"
    skip "cannot build the test guest (scripts/build-guest: $(tail -n 1 "$T/build-guest.log"))"
  }
  [ -s "$guest/vmlinuz" ] && [ -s "$guest/initrd.img" ] || skip "scripts/build-guest left no guest in '$guest'"
}

# guest_acks LOG...: the number of ACK lines on the serial logs.
guest_acks () { cat "$@" 2>/dev/null | tr -d '\r' | grep -c '^ACK ' || true; }

# wait_guest_acks N SECONDS LOG...: until the logs hold N ACKs; fails when
# the guest stops or reports an error before that.
wait_guest_acks () {
  local n=$1 secs=$2 i; shift 2
  for (( i = 0; i < secs * 5; i++ )); do
    [ "$(guest_acks "$@")" -ge "$n" ] && return 0
    if cat "$@" 2>/dev/null | grep -qE '^(GUEST-ERROR|GUEST-FAILED|GUEST-DONE)|Kernel panic'; then
      tail -n 5 "$@"; fail "the guest stopped or failed before $n ACKs"
    fi
    sleep 0.2
  done
  tail -n 5 "$@"; fail "fewer than $n ACKs after ${secs}s ($(guest_acks "$@"))"
}

# guest_check DISK NONCE LOG...: every record the guest ACKed on the serial
# LOGs (concatenated in order: a line may be split where one log ends) is
# in DISK and valid.  Prints a JSON summary and the first problems;
# non-zero on any problem (no ACK at all is one).
guest_check () {
  python3 - "$@" <<'PY'
import hashlib, json, re, sys
disk, nonce, logs = sys.argv[1], sys.argv[2], sys.argv[3:]
data, starts = b"", []
for p in logs:
    starts.append(len(data))
    with open(p, "rb") as f:
        data += f.read()
acks, per_log, errs = [], [0] * len(logs), []
for m in re.finditer(rb"(?m)^ACK (\d+) ([0-9a-f]{64})\r?$", data):
    acks.append((int(m.group(1)), m.group(2).decode()))
    per_log[max(k for k in range(len(logs)) if starts[k] <= m.start())] += 1
if not acks:
    errs.append("no ACK in the serial logs")
if [a[0] for a in acks] != list(range(len(acks))):
    errs.append("ACK numbers are not 0..n-1 in order: %s" % [a[0] for a in acks][:50])
with open(disk, "rb") as f:
    for i, s in acks:
        f.seek(i * 4096)
        rec = f.read(4096)
        want = ("CORFSREC1 %d %s %s" % (i, nonce, s)).ljust(127).encode() + b"\n"
        if len(rec) != 4096:
            errs.append("record %d: short read (%d bytes)" % (i, len(rec)))
        elif rec[:128] != want:
            errs.append("record %d: header %r, expected %r" % (i, rec[:80], want[:80]))
        elif hashlib.sha256(rec[128:]).hexdigest() != s:
            errs.append("record %d: checksum mismatch (torn or stale data)" % i)
print(json.dumps({"acked": len(acks), "per_log": dict(zip(logs, per_log)), "bad": len(errs)}))
for e in errs[:20]:
    print("  " + e)
sys.exit(1 if errs else 0)
PY
}
