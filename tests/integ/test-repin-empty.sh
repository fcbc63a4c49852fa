#!/usr/bin/env bash
# Records written with an empty parent identity (`identity=`, as 63d3432
# could record them) no longer accept any image (issue 15 review):
#  - an active writeback disk with blocks present and no identity is
#    refused at mount, naming the disk, the parent and --repin (63d3432:
#    mounted over another image and pinned whatever it found);
#  - `mount --repin d` over the right image mounts, reads it, and records
#    its identity; a later remount over another image is refused
#    ("changed");
#  - --repin for a disk whose record has an identity is refused.
# NBD parent (nbdkit file plugin), restarted on another image to swap it.
. "$(dirname "$0")/../functions.sh"
requires nbdkit --version
requires fusermount3 --version
requires mdb_dump -V
requires mdb_load -V

MiB=1048576
A=$T/a.img B=$T/b.img
head -c $((4 * MiB)) /dev/urandom > "$A"
head -c $((4 * MiB)) /dev/urandom > "$B"
sock=$T/nbd.sock url=$(nbd_uri "$T/nbd.sock") st=$T/state mnt=$T/mnt
serve () {
  if [ -s "$sock.pid" ]; then local p; p=$(cat "$sock.pid"); kill_pid "$p"; wait_gone "$p"; fi
  rm -f "$sock"
  start_nbdkit "$sock.pid" -r -U "$sock" file "$1"
}
identity () {
  mdb_dump -p -s disks "$st/index" | grep -o '[\]0aidentity=[^\]*' | head -n 1 | sed 's/^[\]0aidentity=//'
}
# try_mount ARGS...: mount; on success register the unmount.  Exit status.
try_mount () {
  local rc=0
  "$CORFS" mount --state "$st" --stream=off --readahead 0 --hold 5 "$@" "$mnt" > "$T/out" 2>&1 || rc=$?
  [ $rc -ne 0 ] || cleanup_fn _force_unmount "$st" "$mnt"
  return $rc
}
# piece FILE OFF: 64 KiB at OFF (reads a block or two: the disk stays
# incomplete, so each mount needs the parent).
piece () { dd if="$1" iflag=skip_bytes,count_bytes skip="$2" count=65536 bs=64K status=none; }
unmount () { corfs_unmount "$mnt" || fail "unmount failed"; wait_gone "$(daemon_pid "$st")"; }

serve "$A"
corfs_mount "$st" "$mnt" --readahead 0 --hold 5 --disk d="$url"
cmp <(piece "$mnt/d" 0) <(piece "$A" 0) || fail "first read differs"
unmount
[ -n "$(identity)" ] || fail "a new disk was recorded without an identity"
# The record as 63d3432 could leave it.
mdb_dump -p -s disks "$st/index" | sed 's/[\]0aidentity=[^\]*[\]0a/\\0aidentity=\\0a/' > "$T/dump"
mdb_load -f "$T/dump" -s disks "$st/index" 2> /dev/null
[ -z "$(identity)" ] || fail "could not blank the identity in the record"

serve "$B"
if try_mount; then
  fail "a record without identity mounted over another image: $(head -c 16 "$mnt/d" | od -An -tx1)"
fi
echo "mount of a record without identity: $(cat "$T/out")"
for w in "disk d" "nbd.sock" "--repin d"; do
  grep -qF -- "$w" "$T/out" || fail "the refusal does not name '$w': $(cat "$T/out")"
done

serve "$A"
try_mount --repin d || fail "mount --repin d failed: $(cat "$T/out")"
cmp <(piece "$mnt/d" $MiB) <(piece "$A" $MiB) || fail "the re-pinned disk differs from the image"
unmount
[ -n "$(identity)" ] || fail "--repin recorded no identity"

serve "$B"
if try_mount; then fail "the re-pinned disk mounted over another image"; fi
grep -q "changed" "$T/out" || fail "the refusal over B does not say changed: $(cat "$T/out")"
serve "$A"
if try_mount --repin d; then fail "--repin was accepted for a record with an identity"; fi
grep -qF -- "--repin" "$T/out" || fail "the --repin refusal does not say why: $(cat "$T/out")"
try_mount || fail "remount over the pinned image failed: $(cat "$T/out")"
cmp <(piece "$mnt/d" $((2 * MiB))) <(piece "$A" $((2 * MiB))) || fail "the disk differs from the image"
echo OK
