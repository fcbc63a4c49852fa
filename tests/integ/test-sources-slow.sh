#!/usr/bin/env bash
# A slow but working source is used (issue 21's review): two NBD sources
# of one 64 MiB image, the first behind nbdkit's delay filter (0.7 s per
# read), under the default 1.5 s source timeout and a 5 s hold:
#  - the mount does not wait for the slow one (the fingerprint comes from
#    the second within the hold);
#  - the slow one's check (a connect with sample reads, then 34 sample
#    reads in sequence) gets the connect timeout and the per-piece
#    timeout for each read, not 1.5 s for all: it becomes ok;
#  - the fast one killed: a cold read is served by the slow one, within
#    the hold, correct.
. "$(dirname "$0")/../functions.sh"
requires fusermount3 --version
requires jq --version
requires nbdkit file --dump-plugin
requires nbdkit --filter=delay null --dump-plugin

MiB=1048576
head -c $((64 * MiB)) /dev/urandom > "$T/a.img"
cp "$T/a.img" "$T/b.img"
start_nbdkit "$T/n0.pid" -r -U "$T/n0.sock" --filter=delay file "$T/a.img" rdelay=700ms
start_nbdkit "$T/n1.pid" -r -U "$T/n1.sock" file "$T/b.img"
n0=$(nbd_uri "$T/n0.sock"); n1=$(nbd_uri "$T/n1.sock")

piece () { dd if="$1" iflag=skip_bytes,count_bytes skip="$2" count="$3" bs=64K status=none; }
src () { "$CORFS" status --state "$T/s" d --json | jq -r "(if type == \"array\" then .[0] else . end).parent.sources[$1]$2"; }

t0=$(date +%s)
corfs_mount "$T/s" "$T/m" --hold 5 --readahead 0 --disk d="$n0" --disk d="$n1"
[ $(( $(date +%s) - t0 )) -le 6 ] || fail "the mount took $(( $(date +%s) - t0 )) s (hold 5)"
for i in $(seq 600); do [ "$(src 0 .state)" = ok ] && break; sleep 0.1; done
[ "$(src 0 .state)" = ok ] ||
  fail "the slow source is $(src 0 .state) after 60 s: $(src 0 .last_error)"
[ "$(src 1 .state)" = ok ] || fail "the fast source is $(src 1 .state)"

kill_pid "$(cat "$T/n1.pid")"
t0=$(date +%s)
piece "$T/m/d" $((30 * MiB)) 65536 | cmp -s - <(piece "$T/a.img" $((30 * MiB)) 65536) ||
  fail "the read with only the slow source left failed or differs: $(tail -3 "$T/s/corfs.log")"
[ $(( $(date +%s) - t0 )) -le 5 ] || fail "the read took $(( $(date +%s) - t0 )) s (hold 5)"
[ "$(src 0 .reads)" -ge 1 ] || fail "the slow source served no read"
corfs_unmount "$T/m"
echo PASS
