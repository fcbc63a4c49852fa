#!/usr/bin/env bash
# Proves `-o max_read=N` works (src/fs/fs.c, fs_init): libfuse wants the
# value both as a mount option and in the INIT reply (conn->max_read);
# given only as the option, INIT failed with EPROTO ("init() and
# fuse_session_new() requested different maximum read size") and the
# daemon died right after mounting.  For max_read alone and inside a
# comma-separated -o list: the mount serves direct and buffered reads
# equal to the parent, status answers, and the daemon exits cleanly.
. "$(dirname "$0")/../functions.sh"

requires fusermount3 --version

img=$T/parent.img
head -c $((8 << 20)) /dev/urandom > "$img"

n=0
for opt in max_read=16384 "default_permissions,max_read=8192"; do
  n=$((n + 1)); st=$T/st$n mnt=$T/mnt$n
  corfs_mount "$st" "$mnt" --disk d="file://$img" -o "$opt"
  sleep 1                       # the failure came once INIT was answered
  pid=$(daemon_pid "$st")
  alive "$pid" || fail "-o $opt: the daemon died after mounting: $(tail -n 3 "$st/corfs.log")"
  dd if="$mnt/d" bs=1M iflag=direct status=none | cmp - "$img" ||
    fail "-o $opt: direct reads differ from the parent"
  dd if="$mnt/d" bs=256K status=none | cmp - "$img" ||
    fail "-o $opt: buffered reads differ from the parent"
  "$CORFS" status --state "$st" d >/dev/null || fail "-o $opt: status failed"
  corfs_unmount "$mnt" || fail "-o $opt: unmount failed"
  wait_gone "$pid"
  grep -q "daemon: clean exit" "$st/corfs.log" || fail "-o $opt: no clean exit: $(tail -n 3 "$st/corfs.log")"
  ! grep -q "maximum read size" "$st/corfs.log" || fail "-o $opt: libfuse refused max_read"
done
echo PASS
