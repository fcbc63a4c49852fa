#!/usr/bin/env bash
# Proves the streamer gives way to the guest (src/cor/stream.c, "Giving way
# to the guest"): while a guest fault is talking to the parent, stream
# workers start no new chunk.  nbdkit's log filter (outermost, so it sees
# corfs's requests as sent) records each request and its return; the delay
# filter makes every read take 40 ms, so a 256 MiB stream with unlimited
# rate lasts well over a second.  Three times, during the stream, a guest
# O_DIRECT 64 KiB read at a cold offset near the end of the disk must:
#  - return the image's bytes;
#  - fault from the parent (its Read appears in the log);
#  - overlap at most 3 streamer Read requests starting between the guest
#    request and its return (3 = the stream workers, which may have passed
#    their yield check just before the fault began).
# The guest read is the first of 8 back-to-back 64 KiB O_DIRECT reads (one
# dd); across the whole run of 8 faults (~320 ms of parent time, gaps far
# below the 50 ms quiet period) at most 2 x 3 streamer Reads may start: a
# streamer that did not yield would start about 3 per 40 ms, ~24.
. "$(dirname "$0")/../functions.sh"

requires nbdkit --version
requires fusermount3 --version
requires python3 --version
requires jq --version

MiB=$((1 << 20)) KiB=1024
SIZE=$((256 * MiB))
WORKERS=3
img=$T/parent.img sock=$T/nbd.sock log=$T/nbd.log
head -c $SIZE /dev/urandom > "$img"
start_nbdkit "$T/nbd.pid" -r -U "$sock" --filter=log --filter=delay \
  file "$img" logfile="$log" rdelay=40ms

st=$T/state mnt=$T/mnt
# --readahead 0: every parent read during the guest reads is the guest's or the streamer's.
corfs_mount "$st" "$mnt" --stream=on --readahead 0 --block-size 64K --disk d="$(nbd_uri "$sock")"
jfield () { "$CORFS" status --state "$st" d --json | jq -r "$1"; }

# Cold offsets near the end, 64 KiB aligned, clear of 2 MiB chunk starts
# and of the identity sample at size-4K.
offsets=( $((SIZE - 17 * MiB - 64 * KiB)) $((SIZE - 9 * MiB - 320 * KiB)) $((SIZE - 3 * MiB - 192 * KiB)) )

NREADS=8
check_round () {     # OFFSET: analyse the log for the guest reads from OFFSET
  python3 - "$log" "$1" "$SIZE" "$WORKERS" "$NREADS" <<'EOF'
import re, sys
log, off, size, workers, nreads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
req = re.compile(r'connection=(\d+) Read id=(\d+) offset=(0x[0-9a-f]+) count=(0x[0-9a-f]+)')
ret = re.compile(r'connection=(\d+) \.\.\.Read id=(\d+) return=')
lines = open(log, errors='replace').read().splitlines()
events = []   # (kind, conn, id, offset, count)
for l in lines:
    m = req.search(l)
    if m:
        events.append(('req', m[1], m[2], int(m[3], 16), int(m[4], 16)))
        continue
    m = ret.search(l)
    if m:
        events.append(('ret', m[1], m[2], None, None))
idents = {0, size // 2, size - 4096}
def is_ident(e): return e[4] == 4096 and e[3] in idents
guest = [i for i, e in enumerate(events) if e[0] == 'req' and e[3] <= off < e[3] + e[4] and not is_ident(e)]
if not guest:
    print(f"FAIL: no parent Read covering offset {off}: the guest read was not a cold fault"); sys.exit(1)
if len(guest) > 1:
    print(f"FAIL: offset {off} fetched {len(guest)} times: {[events[i] for i in guest]}"); sys.exit(1)
g = guest[0]; ge = events[g]
if ge[4] > 2 << 20 or ge[3] % (2 << 20) == 0 and ge[4] == 2 << 20:
    print(f"FAIL: offset {off} came in with a streamer-sized read {ge[3]}+{ge[4]}: the stream got there first"); sys.exit(1)
end = next((i for i in range(g + 1, len(events)) if events[i][0] == 'ret' and events[i][1:3] == ge[1:3]), None)
if end is None:
    print(f"FAIL: no return logged for the guest Read at {off}"); sys.exit(1)
during = [events[i] for i in range(g + 1, end) if events[i][0] == 'req' and not is_ident(events[i])]
before = [e for e in events[:g] if e[0] == 'req' and not is_ident(e)]
after = [e for e in events[end:] if e[0] == 'req' and not is_ident(e)]
print(f"offset {off}: guest Read {ge[3]}+{ge[4]} on connection {ge[1]}; "
      f"{len(before)} stream reads before, {len(during)} started during it, {len(after)} after so far")
if not before:
    print("FAIL: no streamer read before the guest read: the stream was not running"); sys.exit(1)
if len(during) > workers:
    print(f"FAIL: {len(during)} streamer Reads started while the guest read at {off} was in flight "
          f"(at most {workers} may have passed their yield check): {[(e[3], e[4]) for e in during]}")
    sys.exit(1)
# The whole run of guest reads [off, off + nreads * 64K).
bs = 65536
def is_guest(e): return e[0] == 'req' and not is_ident(e) and e[3] < off + nreads * bs and e[3] + e[4] > off
gi = [i for i, e in enumerate(events) if is_guest(e)]
if len(gi) != nreads:
    print(f"FAIL: {len(gi)} parent Reads for the {nreads} guest reads from {off}: {[events[i][3:] for i in gi]}"); sys.exit(1)
last = events[gi[-1]]
lend = next((i for i in range(gi[-1] + 1, len(events)) if events[i][0] == 'ret' and events[i][1:3] == last[1:3]), None)
if lend is None:
    print(f"FAIL: no return logged for the last guest Read from {off}"); sys.exit(1)
run = [events[i] for i in range(g + 1, lend) if events[i][0] == 'req' and not is_ident(events[i]) and not is_guest(events[i])]
print(f"offset {off}: {len(run)} streamer reads started during the {nreads} back-to-back guest reads")
if len(run) > 2 * workers:
    print(f"FAIL: {len(run)} streamer Reads started during {nreads} back-to-back guest faults from {off} "
          f"(a yielding streamer starts at most {workers}, {2 * workers} allowed): {[(e[3], e[4]) for e in run]}")
    sys.exit(1)
EOF
}

sleep 0.2
for off in "${offsets[@]}"; do
  state=$(jfield .stream.state)
  [ "$state" = running ] || fail "stream.state is $state before the guest read at $off (expected running)"
  timeout 60 dd if="$mnt/d" of="$T/got" bs=64K count=$NREADS skip=$off \
    iflag=direct,skip_bytes status=none || fail "guest read at $off failed"
  cmp "$T/got" <(dd if="$img" bs=64K count=$NREADS skip=$off iflag=skip_bytes status=none) ||
    fail "guest read at $off returned wrong data"
  out=$(check_round "$off") || fail "$(echo "$out" | grep FAIL)"
  echo "$out"
  sleep 0.2
done

rc=0; timeout 120 "$CORFS" stream --state "$st" d --wait || rc=$?
[ $rc -eq 0 ] || fail "corfs stream --wait exited $rc"
fg=$(jfield .counters.foreground_fetched_bytes)
[ "$fg" -ge $((3 * NREADS * 64 * KiB)) ] || fail "counters.foreground_fetched_bytes is $fg after $((3 * NREADS)) cold guest reads"
cmp "$mnt/d" "$img" || fail "the disk differs from the image"
corfs_unmount "$mnt" || fail "corfs unmount failed"
echo OK
