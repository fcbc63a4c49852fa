#!/usr/bin/env bash
# A disk recorded by corfs up to 63d3432, whose redaction dropped a whole
# query containing "sig", "token", "password", ... (so
# nbd+unix:///?socket=/x/signed.sock was recorded as nbd+unix:///), still
# remounts with the same --disk URL: the record is rewritten in the
# current form (an info line says so), after which a remount without
# --disk connects.  Another URL is still refused.  The old record is made
# by mounting once and rewriting the record's url= line with the LMDB
# tools (the value is the record's text, one key=value a line).
. "$(dirname "$0")/../functions.sh"
requires fusermount3 --version
requires nbdkit --version
requires mdb_dump -V
requires mdb_load -V
requires python3 --version

img=$T/disk.img
head -c $((4 << 20)) /dev/urandom > "$img"
sock=$T/signed.sock
start_nbdkit "$T/nbdkit.pid" -U "$sock" file "$img"
url=$(nbd_uri "$sock")
st=$T/state mnt=$T/mnt

# recorded_url: the url= line of disk d's record.
recorded_url () {
  mdb_dump -p -s disks "$st/index" | grep -o 'url=[^\\]*' | head -n 1 | cut -d= -f2-
}
# set_recorded_url URL: rewrite disk d's record (daemon stopped).
set_recorded_url () {
  mdb_dump -s disks "$st/index" > "$T/dump"
  python3 - "$T/dump" "$1" > "$T/dump.new" <<'EOF'
import sys
lines = open(sys.argv[1]).read().split("\n")
out, header = [], True
for l in lines:
    if header:
        if not l.startswith("db_pagesize="):   # not a keyword mdb_load takes
            out.append(l)
        header = l != "HEADER=END"
        continue
    if l.startswith(" "):
        v = bytes.fromhex(l[1:]).decode()
        if "\nurl=" in v:
            v = "\n".join("url=" + sys.argv[2] if x.startswith("url=") else x
                          for x in v.split("\n"))
            l = " " + v.encode().hex()
    out.append(l)
print("\n".join(out), end="")
EOF
  mdb_load -s disks -f "$T/dump.new" "$st/index" || fail "mdb_load failed"
}

corfs_mount "$st" "$mnt" --hold 10 --disk "d=$url"
cmp "$mnt/d" "$img" || fail "first mount: the disk differs"
corfs_unmount "$mnt" || fail "unmount failed"
[ "$(recorded_url)" = "$url" ] || fail "recorded url is $(recorded_url), expected $url"

echo "=== the record as 63d3432 wrote it: nbd+unix:///"
set_recorded_url "nbd+unix:///"
[ "$(recorded_url)" = "nbd+unix:///" ] || fail "the record was not rewritten: $(recorded_url)"

echo "=== another socket: still refused"
other=$T/other.sock
start_nbdkit "$T/nbdkit2.pid" -U "$other" file "$img"
rc=0
timeout 60 "$CORFS" mount --state "$st" --stream=off --hold 10 --disk "d=$(nbd_uri "$other")" \
  "$mnt" > "$T/other.out" 2>&1 || rc=$?
cleanup_fn _force_unmount "$st" "$mnt"
cat "$T/other.out"
[ $rc -ne 0 ] || fail "a remount with another parent URL was accepted"
grep -q "parent cannot change" "$T/other.out" || fail "the refusal does not say why"

echo "=== another image behind a socket whose name the old form also drops: refused, record kept"
# The old redaction dropped any query holding "sig": ?socket=.../evil-sig.sock
# reduces to the same nbd+unix:/// as the true URL.  Every block is present,
# so only the parent's identity can tell them apart, and it must be asked.
img2=$T/other.img
head -c $(stat -c %s "$img") /dev/urandom > "$img2"
evil=$T/evil-sig.sock
start_nbdkit "$T/nbdkit3.pid" -U "$evil" file "$img2"
rc=0
timeout 60 "$CORFS" mount --state "$st" --stream=off --hold 10 --disk "d=$(nbd_uri "$evil")" \
  "$mnt" > "$T/evil.out" 2>&1 || rc=$?
cat "$T/evil.out"
[ $rc -ne 0 ] || fail "an old-form match over another image was accepted"
[ "$(recorded_url)" = "nbd+unix:///" ] || fail "a refused mount rewrote the record: $(recorded_url)"

echo "=== the same --disk: accepted, record rewritten"
corfs_mount "$st" "$mnt" --hold 10 --disk "d=$url"
cmp "$mnt/d" "$img" || fail "remount: the disk differs"
corfs_unmount "$mnt" || fail "unmount failed"
[ "$(recorded_url)" = "$url" ] || fail "the record still says $(recorded_url)"
grep -q "recorded as nbd+unix:/// by an older corfs" "$st/corfs.log" ||
  fail "no info line about the rewritten record"

echo "=== without --disk: connects with the rewritten record"
corfs_mount "$st" "$mnt" --hold 10
cmp "$mnt/d" "$img" || fail "remount without --disk: the disk differs"
corfs_unmount "$mnt" || fail "unmount failed"
echo PASS
