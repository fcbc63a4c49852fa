#!/usr/bin/env bash
# QEMU's own tools work on a corfs disk: qemu-img compare sees the parent's
# content; qemu-io with -t none (O_DIRECT, as QEMU's cache=none) writes,
# reads back with a pattern check and flushes, for aligned and unaligned
# requests, vectored writes and write-zeroes; the result equals the same
# writes applied to a local copy, also after unmount and remount.  Also:
# the OFD byte-range locks QEMU uses for image locking work on the corfs
# file across processes.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires qemu-img --version
requires qemu-io --version

size=$((40 * 1048576 + 4096 * 3))
img=$T/parent.img copy=$T/expected.img
head -c "$size" /dev/urandom > "$img"
cp "$img" "$copy"
sum0=$(sha256sum < "$img")
sock=$T/nbd.sock
start_nbdkit "$T/nbdkit.pid" -U "$sock" file "$img"

st=$T/state mnt=$T/mnt
corfs_mount "$st" "$mnt" --stream=off --disk disk="$(nbd_uri "$sock")"   # cold reads really cold
disk=$mnt/disk

# qio WHAT ARGS...: qemu-io on the corfs disk with O_DIRECT (-t none);
# fails the test on a non-zero exit or a pattern mismatch.
qio () {
  local what=$1 out; shift
  out=$(qemu-io -f raw -t none "$@" "$disk" 2>&1) \
    || fail "$what: qemu-io -t none $* failed: $out"
  ! grep -qiE 'fail|error' <<<"$out" || fail "$what: qemu-io -t none $*: $out"
}
# qio_copy ARGS...: the same qemu-io commands on the local copy.
qio_copy () { qemu-io -f raw "$@" "$copy" >/dev/null 2>&1 || fail "qemu-io on the local copy failed: $*"; }

# compare WHAT A B
compare () {
  local out
  out=$(qemu-img compare -f raw -F raw "$2" "$3" 2>&1) || fail "$1: qemu-img compare $2 $3: $out"
}

# Cold: qemu-img compare reads the whole disk through corfs.
compare "cold" "$disk" "$img"

# Writes, each re-read with a pattern check in the same qemu-io.
w1=(-c 'write -P 0xab 1M 64k' -c 'read -P 0xab 1M 64k' -c 'flush')
w2=(-c 'write -P 0x5a 123k 7k')
w3=(-c 'writev -P 0x33 5243392 4k 4k 512')     # 5 MiB + 512, three buffers
w4=(-c 'write -P 0x77 8388000 70000')           # odd offset and size, across blocks
w5=(-c 'write -z 3149824 102400')               # write-zeroes, 4K-aligned, partial blocks
w6=(-c 'write -z 6291456 131072')               # write-zeroes, whole blocks, missing
w7=(-c 'aio_write -P 0x44 10M 256k' -c 'aio_write -P 0x45 11M 256k' -c 'aio_flush')
qio "write 1M 64k" "${w1[@]}";              qio_copy "${w1[@]}"
qio "write 123k 7k" "${w2[@]}";             qio_copy "${w2[@]}"
qio "re-read 123k 7k" -c 'read -P 0x5a 123k 7k'
qio "writev" "${w3[@]}" -c 'flush';         qio_copy "${w3[@]}"
qio "re-read writev" -c 'read -P 0x33 5243392 8704'
qio "unaligned write" "${w4[@]}" -c 'flush'; qio_copy "${w4[@]}"
qio "re-read unaligned write" -c 'read -P 0x77 8388000 70000'
qio "write-zeroes (partial blocks)" "${w5[@]}" -c 'flush'; qio_copy "${w5[@]}"
qio "re-read write-zeroes (partial blocks)" -c 'read -P 0 3149824 102400'
qio "write-zeroes (whole blocks)" "${w6[@]}" -c 'flush';   qio_copy "${w6[@]}"
qio "re-read write-zeroes (whole blocks)" -c 'read -P 0 6291456 131072'
qio "aio writes" "${w7[@]}";                qio_copy "${w7[@]}"
qio "re-read aio writes" -c 'read -P 0x44 10M 256k' -c 'read -P 0x45 11M 256k'

compare "after writes" "$disk" "$copy"

# OFD locks (what QEMU's image locking uses) conflict across processes on
# the corfs file, as on a local file.
lockpy='
import fcntl, os, struct, sys, time
def lk(fd, cmd, typ, start):
    fl = struct.pack("hhxxxxqqixxxx", typ, os.SEEK_SET, start, 1, 0)
    return fcntl.fcntl(fd, cmd, fl)
mode, path = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_RDWR)
if mode == "hold":                 # exclusive lock on byte 201, then wait (at most 20 s)
    lk(fd, fcntl.F_OFD_SETLK, fcntl.F_WRLCK, 201)
    open(sys.argv[3], "w").close()
    for _ in range(200):
        if not os.path.exists(sys.argv[3]): break
        time.sleep(0.1)
    sys.exit(0)
try:                               # "try": a shared lock on byte 201 must conflict ...
    lk(fd, fcntl.F_OFD_SETLK, fcntl.F_RDLCK, 201)
    print("no conflict"); sys.exit(1)
except (BlockingIOError, PermissionError):
    pass
lk(fd, fcntl.F_OFD_SETLK, fcntl.F_RDLCK, 202)   # ... a different byte must not
print("ok")
'
# stop_holder: at exit, stop a lock holder still running (it is our child
# until waited for, so its PID cannot have been reused).
holder=
stop_holder () { [ -n "$holder" ] && kill_pid "$holder"; holder=; }
cleanup_fn stop_holder
# lock_check FILE WHAT
lock_check () {
  local ready=$T/lock.ready hpid out i
  rm -f "$ready"
  python3 -c "$lockpy" hold "$1" "$ready" & hpid=$! holder=$!
  for i in $(seq 100); do [ -e "$ready" ] && break; sleep 0.1; done
  [ -e "$ready" ] || fail "$2: lock holder did not start"
  out=$(python3 -c "$lockpy" try "$1" 2>&1) || { rm -f "$ready"; fail "$2: OFD lock conflict not seen: $out"; }
  rm -f "$ready"
  wait "$hpid" || fail "$2: lock holder failed"
  holder=
}
lock_check "$copy" "local file (sanity)"
lock_check "$disk" "corfs file"

pid=$(daemon_pid "$st")
corfs_unmount "$mnt" || fail "corfs unmount failed"
[ "$(sha256sum < "$img")" = "$sum0" ] || fail "the parent image changed"

# Remount: everything written is still there.
wait_gone "$pid"
corfs_mount "$st" "$mnt"
qio "after remount" -c 'read -P 0xab 1M 64k' -c 'read -P 0x5a 123k 7k' \
  -c 'read -P 0x33 5243392 8704' -c 'read -P 0x77 8388000 70000' \
  -c 'read -P 0 3149824 102400' -c 'read -P 0 6291456 131072' \
  -c 'read -P 0x44 10M 256k' -c 'read -P 0x45 11M 256k'
compare "after remount" "$disk" "$copy"
corfs_unmount "$mnt" || fail "corfs unmount (2) failed"
echo OK
