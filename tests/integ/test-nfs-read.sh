#!/usr/bin/env bash
# NFS parents through libnfs against nfs-ganesha (VFS FSAL) on 127.0.0.1
# with its own NFS and MNT ports (tests/servers/ganesha.sh):
#  - NFSv3 (nfs://127.0.0.1/PATH?version=3&nfsport=N&mountport=M): cold
#    reads (8 in parallel, unaligned pieces, then all) equal the exported
#    file; writes through corfs land in the overlay and never touch the
#    parent file (sha256 and mtime unchanged, also after unmount);
#  - NFSv4 (?version=4&nfsport=N): the same.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/../servers/ganesha.sh"
requires fusermount3 --version
requires jq --version
ganesha_requires

MiB=1048576 size=$((40 * 1048576 + 12345))      # not a multiple of the block size
exp=$T/export
mkdir -p $exp
head -c $size /dev/urandom > $exp/disk.img
sum0=$(sha256sum < $exp/disk.img) mtime0=$(stat -c %Y.%y $exp/disk.img)
start_ganesha $exp

status () { "$CORFS" status --state "$1" d --json | jq -r "(if type == \"array\" then .[0] else . end) | $2"; }

# wr DISK EXPECTED OFF LEN [oflag]: the same write to the mount (fsync'd)
# and to the expected image.
wr () { twin_write "$@" || fail "write of $4 bytes at $3 to $1 failed"; }

parent_untouched () {
  [ "$(sha256sum < $exp/disk.img)" = "$sum0" ] || fail "$1: the parent file's content changed"
  [ "$(stat -c %Y.%y $exp/disk.img)" = "$mtime0" ] || fail "$1: the parent file's mtime changed"
}

# one VERSION URL
one () {
  local v=$1 url=$2 st=$T/st-$1 mnt=$T/mnt-$1 disk pid p
  echo "NFSv$v: $url"
  corfs_mount $st $mnt --disk d="$url"
  disk=$mnt/d
  [ "$(stat -c %s $disk)" -eq $size ] || fail "v$v: disk size $(stat -c %s $disk), expected $size"
  [ "$(status $st .parent.backend)" = nfs ] || fail "v$v: parent backend $(status $st .parent.backend)"
  # Parallel cold reads first: the parent serves several requests at once
  # (a pool of libnfs contexts, set up within the same second).
  local pids=() i
  for i in 0 1 2 3 4 5 6 7; do
    dd if=$disk of=$T/par$i bs=64K skip=$((i * 64 + 16)) count=16 status=none 2> $T/par$i.err &
    pids+=($!)
  done
  for i in 0 1 2 3 4 5 6 7; do
    wait ${pids[$i]} || fail "v$v: parallel cold read $i failed: $(cat $T/par$i.err)"
    cmp $T/par$i <(dd if=$exp/disk.img bs=64K skip=$((i * 64 + 16)) count=16 status=none) \
      || fail "v$v: parallel cold read $i differs from the exported file"
  done
  for p in "12345 100" "65530 20" "$((5 * MiB + 7)) 300000" "$((size - 10)) 10"; do
    set -- $p
    cmp <(dd if=$disk iflag=skip_bytes,count_bytes skip=$1 count=$2 bs=64K status=none) \
        <(dd if=$exp/disk.img iflag=skip_bytes,count_bytes skip=$1 count=$2 bs=64K status=none) \
      || fail "v$v: cold read of $2 bytes at $1 differs from the exported file"
  done
  cmp $disk $exp/disk.img || fail "v$v: cold read differs from the exported file"
  [ "$(status $st .parent.state)" = connected ] || fail "v$v: parent.state $(status $st .parent.state)"
  [ "$(status $st .counters.fetched_bytes)" -ge $((size - 4 * 65536)) ] \
    || fail "v$v: fetched only $(status $st .counters.fetched_bytes) bytes: the reads were not cold"
  echo "v$v: cold reads equal ($(status $st .counters.fetch_requests) fetches)"

  cp $exp/disk.img $T/expected.img
  wr $disk $T/expected.img 0 65536
  wr $disk $T/expected.img $((65536 - 3)) 9
  wr $disk $T/expected.img $((3 * MiB + 1)) 150000
  wr $disk $T/expected.img $((20 * MiB)) 131072 direct
  wr $disk $T/expected.img $((size - 5)) 5
  cmp $disk $T/expected.img || fail "v$v: the disk differs from the expected image after writes"
  [ "$(status $st .dirty_bytes)" -gt 0 ] || fail "v$v: no dirty bytes after writes"
  parent_untouched "v$v, mounted"
  pid=$(daemon_pid $st)
  corfs_unmount $mnt || fail "v$v: unmount failed"
  wait_gone "$pid"
  parent_untouched "v$v, after unmount"
  echo "v$v: writes stayed in the overlay; parent sha256 and mtime unchanged"
}

one 3 "$(nfs3_url $exp/disk.img)"
one 4 "$(nfs4_url $exp/disk.img)"
echo PASS
