#!/usr/bin/env bash
# Real post-copy storage migration of a running QEMU guest (TCG) onto corfs
# (docs/design.md "Disk states", rule 10).  The guest (scripts/build-guest: Debian
# 12's kernel, a busybox /init) writes numbered, checksummed 4 KiB records
# to its virtio disk, each with O_DIRECT and a flush, and prints "ACK i" on
# its serial console once a record is durable; records are written before,
# during and after the migration.  Each run:
#   source QEMU on a 64 MiB disk, exported read-only with
#   scripts/serve-source (nbdkit -r file); the destination mounts corfs with
#   --incoming and that export as parent and starts QEMU -S -incoming on
#   the corfs file; QMP migrate on the source until "completed"; `corfs
#   activate --epoch 1` (twice: the second is a no-op); QMP cont on the
#   destination: the guest goes on writing, now on corfs; `corfs stream
#   --wait`; the export and the source QEMU stop; the guest goes on.
# Runs:
#   plain  the source disk is a local raw image.  The destination QEMU
#          quits, corfs is remounted without a parent, and every record the
#          guest ACKed on either serial log is there and valid; blocks that
#          hold only records written before the switch-over are present but
#          not dirty (they came from the parent, by the stream).
#   kill   kill -9 of the destination's corfs daemon after activation while
#          the guest writes: QEMU's writes fail (the guest reports
#          WRITE-ERROR); QEMU quits, fusermount3 -u, corfs is remounted on
#          the same state directory with the parent still up: active epoch
#          1, every ACKed record there; then the stream completes and a
#          remount without the parent shows them again.
#   corfs  the source disk is itself a corfs disk (file:// parent); after
#          the migration the source runs `corfs handoff --epoch 1` (and the
#          export is restarted by `serve-source --epoch 1`, a repeated
#          handoff: a no-op); the handed-off source refuses writes.
# Needs qemu-system-x86_64, nbdkit, fusermount3, jq, python3; skips when
# the guest cannot be built (e.g. apt-get download fails).
# CORFS_GUEST_CACHE selects the guest cache (default /var/cache/corfs-guest).
. "$(dirname "$0")/../functions.sh"
requires qemu-system-x86_64 --version
requires nbdkit --version
requires fusermount3 --version
requires jq --version
requires python3 --version

top=$(cd "$(dirname "$0")/../.." && pwd)
start_time=$(date +%s)
build_test_guest
echo "guest: $guest ($(cat "$guest/kernel" 2>/dev/null))"

MiB=1048576
size=$((64 * MiB))
mig_bps=${MIGRATE_BPS:-$((32 * MiB))}    # about 2 s for the guest's ~70 MB of RAM

problems=()
soft () { echo "FAIL (continuing): $*" >&2; problems+=("$*"); }
note () { echo "[$(( $(date +%s) - start_time ))s] $*"; }

# ---- helpers ----------------------------------------------------------------

cat > "$T/qmp.py" <<'PY'
# qmp.py SOCKET COMMAND [ARGS]: a minimal QMP client.
#   run NAME [JSON]         execute NAME, print its return value as JSON
#   migrate URI BPS TIMEOUT set the bandwidth limit (bytes/s), migrate,
#                           wait for "completed" (exit 1 on failed,
#                           cancelled or timeout)
#   quit                    ask QEMU to quit (EOF is success)
import json, socket, sys, time

def connect(path, timeout=30):
    deadline = time.time() + timeout
    while True:
        try:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(60)
            s.connect(path)
            break
        except OSError:
            s.close()
            if time.time() > deadline:
                sys.exit("qmp: cannot connect to %s" % path)
            time.sleep(0.1)
    f = s.makefile("rw")
    if not f.readline():
        sys.exit("qmp: no greeting")
    execute(f, "qmp_capabilities")
    return s, f

def execute(f, name, args=None, eof_ok=False):
    msg = {"execute": name}
    if args:
        msg["arguments"] = args
    f.write(json.dumps(msg) + "\n")
    f.flush()
    while True:
        line = f.readline()
        if not line:
            if eof_ok:
                return None
            sys.exit("qmp %s: connection closed" % name)
        r = json.loads(line)
        if "event" in r:
            continue
        if "error" in r:
            sys.exit("qmp %s: %s" % (name, r["error"]))
        return r.get("return")

path, cmd = sys.argv[1], sys.argv[2]
s, f = connect(path)
if cmd == "run":
    args = json.loads(sys.argv[4]) if len(sys.argv) > 4 else None
    print(json.dumps(execute(f, sys.argv[3], args)))
elif cmd == "migrate":
    uri, bps, timeout = sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
    execute(f, "migrate-set-parameters", {"max-bandwidth": bps, "downtime-limit": 300})
    execute(f, "migrate", {"uri": uri})
    deadline = time.time() + timeout
    while True:
        r = execute(f, "query-migrate")
        st = r.get("status")
        if st == "completed":
            out = {k: r.get(k) for k in ("status", "total-time", "downtime")}
            out["ram-transferred"] = r.get("ram", {}).get("transferred")
            print(json.dumps(out))
            break
        if st in ("failed", "cancelled") or time.time() > deadline:
            sys.exit("qmp migrate: %s" % json.dumps(r))
        time.sleep(0.2)
elif cmd == "quit":
    execute(f, "quit", eof_ok=True)
else:
    sys.exit("qmp: unknown command " + cmd)
PY

# kill_ours PID: kill_pid, only while PID is still a process of this test
# (its command line names the scratch directory), never a reused PID.
kill_ours () {
  grep -qF "$T/" "/proc/$1/cmdline" 2>/dev/null || return 0
  kill_pid "$1"
}
qmp () { timeout 120 python3 "$T/qmp.py" "$@"; }
# js STATE DISK FILTER: one field of a disk's status.
js () {
  "$CORFS" status --state "$1" "$2" --json | jq -r "(if type == \"array\" then .[0] else . end) | $3"
}
owner () { js "$1" "$2" '.owner.state + "/" + (.owner.epoch|tostring)'; }
# qemu_start DIR NAME IMAGE EXTRA...: a guest on IMAGE (serial DIR/NAME.serial,
# QMP DIR/NAME.qmp); sets qpid to its PID.
qemu_start () {
  local dir=$1 name=$2 img=$3; shift 3
  : > "$dir/$name.serial"
  qemu-system-x86_64 -name "$name" -accel tcg -m 128M -smp 1 -nodefaults -display none -no-reboot \
    -serial "file:$dir/$name.serial" -qmp "unix:$dir/$name.qmp,server=on,wait=off" \
    -kernel "$guest/vmlinuz" -initrd "$guest/initrd.img" -append "$append" \
    -drive "file=$img,format=raw,if=virtio,cache=none" "$@" > "$dir/$name.log" 2>&1 &
  qpid=$!
  cleanup_fn kill_ours $qpid
}
# qemu_quit DIR NAME PID: QMP quit, then wait for the process (TERM/KILL after 30 s).
qemu_quit () {
  local i
  alive "$3" && { qmp "$1/$2.qmp" quit > /dev/null 2>&1 || true; }
  for i in $(seq 300); do alive "$3" || return 0; sleep 0.1; done
  echo "QEMU $2 did not quit; killing it"; kill_ours "$3"
}
# mount_corfs STATE MNT ARGS...: corfs_mount, plus a last cleanup for the
# case a failure leaves a guest blocked on the mount: corfs_mount's cleanup
# then finds it busy and ends the daemon, and only a later fusermount3 -u
# (once the aborted connection has released the guest) clears it.
mount_corfs () {
  cleanup_fn final_unmount "$2"
  corfs_mount "$@"
}
final_unmount () {
  local i
  for i in $(seq 40); do
    is_mounted "$1" || return 0
    fusermount3 -u "$1" 2>/dev/null && return 0
    sleep 0.5
  done
}
# check WHAT DISK NONCE LOG...: the checker, failures collected.
check () {
  local what=$1 out rc=0; shift
  out=$(guest_check "$@" 2>&1) || rc=$?
  echo "$what: $out"
  [ $rc -eq 0 ] || soft "$what: ACKed records missing or invalid: $out"
}
# clean_below STATE DISK BYTES: no dirty extent starts below BYTES
# (rounded down to the block size): those blocks came from the parent.
clean_below () {
  local bs lim bad
  bs=$(js "$1" "$2" .block_size)
  lim=$(( $3 / bs * bs ))
  bad=$("$CORFS" status --state "$1" "$2" --json --maps |
        jq -r "(if type == \"array\" then .[0] else . end) | [.maps.dirty[] | select(.offset < $lim)] | length")
  [ "$bad" = 0 ] || soft "$2: $bad dirty extent(s) below $lim, where only records written before the switch-over lie"
  echo "blocks below $lim (records written on the source): not dirty ($bad dirty extents)"
}

# ---- one migration ------------------------------------------------------------

run () {
  local mode=$1 r=$T/$1 nonce url src_img srcst="" srcpid dstpid dpid n mig
  mkdir -p "$r"
  note "=== run $mode"
  nonce=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
  append="console=ttyS0 quiet loglevel=3 panic=-1 corfs.interval=0.1 corfs.nonce=$nonce"

  # The source disk, and its read-only export.
  head -c $size /dev/urandom > "$r/base.img"
  if [ "$mode" = corfs ]; then
    srcst=$r/srcst
    mount_corfs "$srcst" "$r/srcmnt" --stream=on --disk s="file://$r/base.img"
    src_img=$r/srcmnt/s
  else
    src_img=$r/base.img
  fi
  url=$("$top/scripts/serve-source" --corfs "$CORFS" --socket "$r/nbd.sock" -d --pid-file "$r/nbd.pid" "$src_img") \
    || fail "$mode: scripts/serve-source failed"
  cleanup_fn kill_ours "$(cat "$r/nbd.pid")"
  [ "$url" = "nbd+unix:///?socket=$r/nbd.sock" ] || soft "$mode: serve-source printed '$url'"

  qemu_start "$r" src "$src_img"; srcpid=$qpid
  local st=$r/dst mnt=$r/mnt
  mount_corfs "$st" "$mnt" --incoming --stream=on --disk d="$url"
  qemu_start "$r" dst "$mnt/d" -S -incoming "unix:$r/mig.sock"; dstpid=$qpid
  wait_guest_acks 20 90 "$r/src.serial"      # more than a 64K block of records
  note "$mode: source guest wrote $(guest_acks "$r/src.serial") records"
  [ "$(owner "$st" d)" = incoming/0 ] || soft "$mode: destination owner $(owner "$st" d) before the switch-over, expected incoming/0"

  n=$(guest_acks "$r/src.serial")
  mig=$(qmp "$r/src.qmp" migrate "unix:$r/mig.sock" $mig_bps 120) || fail "$mode: migration failed: $mig"
  note "$mode: migration: $mig; records on the source: $n before it, $(guest_acks "$r/src.serial") at its end"
  [ "$(guest_acks "$r/src.serial")" -gt "$n" ] || soft "$mode: no record was written during the migration"
  [ "$(js "$st" d .present_bytes)" = 0 ] || soft "$mode: present_bytes $(js "$st" d .present_bytes) while incoming, expected 0"
  [ "$(qmp "$r/dst.qmp" run query-status | jq -r .running)" = false ] \
    || soft "$mode: the destination runs before cont"

  if [ "$mode" = corfs ]; then
    # The source hands off; the export restarts with serve-source --epoch 1
    # (the same handoff again: a no-op).
    "$CORFS" handoff --state "$srcst" s --epoch 1 || fail "corfs: handoff --epoch 1 of the source failed"
    "$CORFS" handoff --state "$srcst" s --epoch 1 || soft "corfs: repeated handoff --epoch 1: not a no-op (exit $?)"
    [ "$(owner "$srcst" s)" = handed-off/1 ] || soft "corfs: source owner $(owner "$srcst" s), expected handed-off/1"
    kill_pid "$(cat "$r/nbd.pid")"
    url2=$("$top/scripts/serve-source" --corfs "$CORFS" --socket "$r/nbd.sock" --epoch 1 -d \
             --pid-file "$r/nbd.pid" "$src_img" 2> "$r/serve.err") \
      || fail "corfs: serve-source --epoch 1 (a repeated handoff) failed: $(cat "$r/serve.err")"
    cleanup_fn kill_ours "$(cat "$r/nbd.pid")"
    grep -q "handed off (epoch 1)" "$r/serve.err" || soft "corfs: serve-source --epoch 1 said: $(cat "$r/serve.err")"
    [ "$url2" = "$url" ] || soft "corfs: serve-source printed '$url2' the second time"
    [ "$(owner "$srcst" s)" = handed-off/1 ] || soft "corfs: source owner $(owner "$srcst" s) after serve-source --epoch 1"
    if dd if=/dev/zero of="$src_img" bs=4096 count=1 seek=10000 conv=notrunc,fsync status=none 2> /dev/null; then
      soft "corfs: a write to the handed-off source disk succeeded"
    fi
    note "corfs: source handed off (epoch 1, three times), export restarted"
  fi

  local out rc=0
  out=$("$CORFS" activate --state "$st" d --epoch 1 2>&1) || rc=$?
  [ $rc -eq 0 ] || fail "$mode: activate --epoch 1 failed (exit $rc): $out"
  rc=0; out=$("$CORFS" activate --state "$st" d --epoch 1 2>&1) || rc=$?
  [ $rc -eq 0 ] || soft "$mode: repeated activate --epoch 1: exit $rc, expected 0 (a no-op): $out"
  [ "$(owner "$st" d)" = active/1 ] || soft "$mode: destination owner $(owner "$st" d) after activate, expected active/1"
  note "$mode: destination activated (epoch 1, twice)"
  qmp "$r/dst.qmp" run cont > /dev/null || fail "$mode: cont on the destination failed"
  n=$(guest_acks "$r/src.serial")
  wait_guest_acks $((n + 6)) 60 "$r/src.serial" "$r/dst.serial"
  [ "$(guest_acks "$r/src.serial")" = "$n" ] || soft "$mode: the source guest wrote after the migration completed"
  note "$mode: destination guest running, $(guest_acks "$r/dst.serial") records written there"

  if [ "$mode" = kill ]; then
    # kill -9 of the destination's corfs daemon while the guest writes.
    dpid=$(daemon_pid "$st")
    kill -9 "$dpid"; wait_gone "$dpid"
    note "kill: corfs daemon killed after $(guest_acks "$r/src.serial" "$r/dst.serial") ACKs"
    local i
    for i in $(seq 150); do grep -q '^WRITE-ERROR' "$r/dst.serial" && break; sleep 0.2; done
    grep -q '^WRITE-ERROR' "$r/dst.serial" || soft "kill: the guest saw no write error after the daemon was killed"
    n=$(guest_acks "$r/src.serial" "$r/dst.serial")
    qemu_quit "$r" dst "$dstpid"
    [ "$(guest_acks "$r/src.serial" "$r/dst.serial")" = "$n" ] || soft "kill: ACKs after the daemon was killed"
    fusermount3 -u "$mnt" || fail "kill: fusermount3 -u of the dead mount failed"
    corfs_mount "$st" "$mnt" --stream=on        # the same state, the parent still up
    [ "$(owner "$st" d)" = active/1 ] || soft "kill: owner after kill -9 and remount: $(owner "$st" d), expected active/1"
    check "kill: after kill -9 and remount" "$mnt/d" "$nonce" "$r/src.serial" "$r/dst.serial"
  fi

  timeout 120 "$CORFS" stream --state "$st" d --wait > /dev/null || soft "$mode: stream --wait failed"
  [ "$(js "$st" d .complete)" = true ] || soft "$mode: not complete after stream --wait"
  note "$mode: stream complete: $(js "$st" d '"present \(.present_bytes) dirty \(.dirty_bytes) parent \(.parent.state)"')"

  # The source goes away; the guest goes on.
  kill_pid "$(cat "$r/nbd.pid")"; wait_gone "$(cat "$r/nbd.pid")"
  qemu_quit "$r" src "$srcpid"
  if [ "$mode" = corfs ]; then
    check "corfs: the source disk" "$src_img" "$nonce" "$r/src.serial"
    local spid; spid=$(daemon_pid "$srcst")
    corfs_unmount "$r/srcmnt" || soft "corfs: unmount of the source failed"
    wait_gone "$spid"
  else
    check "$mode: the source image" "$src_img" "$nonce" "$r/src.serial"
  fi
  if [ "$mode" != kill ]; then
    n=$(guest_acks "$r/src.serial" "$r/dst.serial")
    wait_guest_acks $((n + 6)) 60 "$r/src.serial" "$r/dst.serial"
    note "$mode: the guest goes on without the source: $(guest_acks "$r/dst.serial") records written on the destination"
  fi
  qemu_quit "$r" dst "$dstpid"
  if [ "$mode" != kill ] && grep -q '^WRITE-ERROR' "$r/dst.serial"; then
    soft "$mode: the guest saw write errors on the destination: $(grep -m1 '^WRITE-ERROR' "$r/dst.serial")"
  fi

  dpid=$(daemon_pid "$st")
  corfs_unmount "$mnt" || soft "$mode: unmount failed"
  wait_gone "$dpid"
  corfs_mount "$st" "$mnt"                       # no parent: it is gone
  [ "$(js "$st" d .complete)" = true ] || soft "$mode: not complete after the remount without a parent"
  check "$mode: destination, remounted without the parent" "$mnt/d" "$nonce" "$r/src.serial" "$r/dst.serial"
  [ "$mode" = kill ] || clean_below "$st" d $(( $(guest_acks "$r/src.serial") * 4096 ))
  dpid=$(daemon_pid "$st")
  corfs_unmount "$mnt" || soft "$mode: final unmount failed"
  wait_gone "$dpid"
  note "$mode: done: $(guest_acks "$r/src.serial") records ACKed on the source, $(guest_acks "$r/dst.serial") on the destination"
}

for m in ${MIGRATE_QEMU_RUNS:-plain kill corfs}; do run "$m"; done

if [ ${#problems[@]} -ne 0 ]; then
  printf 'FAILED CHECK: %s\n' "${problems[@]}" >&2
  fail "${#problems[@]} check(s) failed"
fi
echo OK
