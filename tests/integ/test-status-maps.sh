#!/usr/bin/env bash
# `corfs status --maps` on a fragmented disk: 20000 written blocks with a
# gap after each (4 KiB blocks), i.e. 20000 present and 20000 dirty extents,
# about 1.6 MB of JSON, over the 1 MiB a client reads in one reply:
#  - the daemon's own reply to {"cmd":"status","maps":true} stays under
#    1 MiB and says truncated, with next_offset;
#  - `corfs status --maps --json` exits 0 and prints both maps whole and
#    exact (every extent, no truncated marker left);
#  - `corfs status --maps` without --json prints them too, one extent a
#    line (it asked the daemon for maps and printed none);
#  - a page asked from inside an extent (maps_from) starts at that offset.
. "$(dirname "$0")/../functions.sh"
requires fusermount3 --version
requires jq --version

N=20000 bs=4096
size=$((N * 2 * bs))
truncate -s $size $T/parent.img   # sparse: the content does not matter here
t00=$(date +%s)
corfs_mount $T/st $T/mnt --block-size 4K --readahead 0 --hold 30 --disk d=file://$T/parent.img

echo "mounted after $(( $(date +%s) - t00 )) s"
t0=$(date +%s)
python3 - $T/mnt/d $N $bs <<'PY' || fail "writing the fragmented pattern failed"
import os, sys
path, n, bs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(path, os.O_RDWR)
for k in range(n):
    os.pwrite(fd, b"x", k * 2 * bs)     # block 2k written, block 2k+1 untouched
os.fsync(fd)
os.close(fd)
PY
echo "wrote $N scattered blocks in $(( $(date +%s) - t0 )) s"

echo "=== the daemon's reply is bounded and says truncated"
python3 - $T/st/corfs.sock > $T/raw.json <<'PY' || fail "raw status request failed"
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(60)
s.connect(sys.argv[1])
s.sendall(b'{"cmd":"status","maps":true}\n')
buf = b""
while not buf.endswith(b"\n"):
    chunk = s.recv(1 << 20)
    if not chunk:
        break
    buf += chunk
sys.stdout.write(buf.decode())
PY
bytes=$(wc -c < $T/raw.json)
echo "one reply: $bytes bytes, truncated=$(jq '.disks[0].maps.truncated' $T/raw.json), next_offset=$(jq '.disks[0].maps.next_offset' $T/raw.json)"
[ "$bytes" -lt 1048576 ] || fail "the daemon sent a $bytes-byte reply (a client reads at most 1 MiB)"
[ "$(jq '.disks[0].maps.truncated' $T/raw.json)" = true ] || fail "a cut map is not marked truncated"
[ "$(jq '.disks[0].maps.next_offset > 0' $T/raw.json)" = true ] || fail "no next_offset in a truncated map"

echo "=== corfs status --maps --json prints the maps whole"
rc=0
timeout 120 "$CORFS" status --state $T/st d --maps --json > $T/maps.json 2> $T/maps.err || rc=$?
[ $rc -eq 0 ] || fail "corfs status --maps --json exit $rc: $(cat $T/maps.err)"
python3 - $T/maps.json $N $bs <<'PY' || fail "the maps printed are not the disk's"
import json, sys
d = json.load(open(sys.argv[1]))
n, bs = int(sys.argv[2]), int(sys.argv[3])
want = [{"offset": k * 2 * bs, "length": bs} for k in range(n)]
for m in ("present", "dirty"):
    got = d["maps"][m]
    if got != want:
        bad = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        sys.exit(f"{m}: {len(got)} extents, want {n}; first difference at #{bad}: "
                 f"{got[bad] if bad < len(got) else None} vs {want[bad] if bad < len(want) else None}")
if d["maps"].get("truncated") or "next_offset" in d["maps"]:
    sys.exit("the joined maps still say truncated: " + json.dumps({k: v for k, v in d["maps"].items() if k not in ("present", "dirty")}))
print(f"present and dirty: {n} extents each, exact")
PY

echo "=== corfs status --maps prints the maps as text"
rc=0
timeout 120 "$CORFS" status --state $T/st d --maps > $T/maps.txt 2> $T/maps.err || rc=$?
[ $rc -eq 0 ] || fail "corfs status --maps exit $rc: $(cat $T/maps.err)"
python3 - $T/maps.txt $N $bs <<'PY' || fail "the text maps are not the disk's"
import sys
n, bs = int(sys.argv[2]), int(sys.argv[3])
want = [f"    {k * 2 * bs} {bs}" for k in range(n)]
lines = open(sys.argv[1]).read().split("\n")
for m in ("present", "dirty"):
    head = f"  {m} extents: {n} "
    at = next((i for i, l in enumerate(lines) if l.startswith(head)), None)
    if at is None:
        sys.exit(f"no line starting {head!r} in: {lines[:4]}")
    if lines[at + 1:at + 1 + n] != want:
        sys.exit(f"{m}: the extent lines differ")
print("text: present and dirty, {} extents each, exact".format(n))
PY

echo "=== maps_from inside an extent"
python3 - $T/st/corfs.sock $bs <<'PY' || fail "maps_from"
import json, socket, sys
bs = int(sys.argv[2])
s = socket.socket(socket.AF_UNIX); s.settimeout(60); s.connect(sys.argv[1])
s.sendall(json.dumps({"cmd": "status", "disk": "d", "maps": True, "maps_from": 2 * bs + 100}).encode() + b"\n")
f = s.makefile("rb")
r = json.loads(f.readline())
first = r["disks"][0]["maps"]["present"][0]
if first != {"offset": 2 * bs + 100, "length": bs - 100}:
    sys.exit(f"first extent from {2 * bs + 100}: {first}")
s.sendall(b'{"cmd":"status","disk":"d","maps":true,"maps_from":-1}\n')
r = json.loads(f.readline())
if r.get("ok") is not False:
    sys.exit("a negative maps_from was accepted")
print("maps_from: first extent clipped to the offset; -1 refused")
PY
echo "checks done after $(( $(date +%s) - t00 )) s"
corfs_unmount $T/mnt
echo "unmounted after $(( $(date +%s) - t00 )) s"
echo PASS
