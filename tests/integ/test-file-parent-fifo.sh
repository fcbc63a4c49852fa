#!/usr/bin/env bash
# A file:// parent that is a FIFO is refused at once, naming the path
# (issue 15 review): 63d3432 opened it blocking, without a deadline, so
# the mount (or a re-pin) hung until a writer appeared.
. "$(dirname "$0")/../functions.sh"
requires fusermount3 --version

fifo=$T/parent.fifo st=$T/state mnt=$T/mnt
mkfifo "$fifo"
mkdir -p "$st" "$mnt"
cleanup_fn _force_unmount "$st" "$mnt"
rc=0; start=$(date +%s)
timeout 30 "$CORFS" mount --state "$st" --stream=off --hold 5 --disk d="file://$fifo" "$mnt" \
  > "$T/out" 2>&1 || rc=$?
took=$(( $(date +%s) - start ))
echo "mount over a FIFO: exit $rc after $took s: $(cat "$T/out")"
[ $rc -ne 0 ] || fail "a FIFO was attached as a parent"
[ $rc -ne 124 ] || fail "the mount hung on the FIFO (killed by timeout after $took s)"
[ $took -le 10 ] || fail "the refusal took $took s"
grep -qF "$fifo" "$T/out" && grep -q "not a regular file" "$T/out" \
  || fail "the refusal does not name the FIFO and say why: $(cat "$T/out")"
echo OK
