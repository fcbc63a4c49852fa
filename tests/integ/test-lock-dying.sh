#!/usr/bin/env bash
# A mount right after kill -9 of the daemon on the same state directory
# (soak-crash: "state directory ... is in use by another corfs daemon" at
# kill 176 of 1000): the killed daemon's main thread is a zombie at once,
# but its other threads may hold its files, and the state directory's
# lock, a little longer.  The mount waits for a dying holder (bounded),
# never for a live one.
. "$(dirname "$0")/../functions.sh"
requires fusermount3 --version
[ -x "$TOOLS/lockholder" ] || fail "lockholder not built ($TOOLS/lockholder)"

img=$T/parent.img st=$T/st mnt=$T/mnt
head -c $((4 << 20)) /dev/urandom > "$img"
corfs_mount "$st" "$mnt" --disk d="file://$img"
corfs_unmount "$mnt"

echo "=== a dying holder (main thread a zombie, the lock held 3 s more)"
"$TOOLS/lockholder" "$st/corfs.pid" 3 &
holder=$!
for i in $(seq 50); do
  [ "$(awk '{print $3}' /proc/$holder/stat 2>/dev/null)" = Z ] && break; sleep 0.1
done
[ "$(awk '{print $3}' /proc/$holder/stat)" = Z ] || fail "the holder's main thread did not exit"
flock -n "$st/corfs.pid" true && fail "the lock is not held: the test would prove nothing"
t0=$SECONDS
corfs_mount "$st" "$mnt"
is_mounted "$mnt" || { tail -3 "$st/corfs.log"; fail "mount refused while the lock's holder was dying"; }
echo "mounted after $((SECONDS - t0)) s"
cmp "$mnt/d" "$img" || fail "the disk differs"
wait $holder || true

echo "=== a live daemon: a second mount is refused at once"
mkdir -p "$T/mnt2"; t0=$SECONDS rc=0
"$CORFS" mount --state "$st" --stream=off "$T/mnt2" > "$T/second.out" 2>&1 || rc=$?
cat "$T/second.out"
[ $rc -ne 0 ] || fail "a second daemon mounted the same state directory"
grep -q "in use by another corfs daemon" "$T/second.out" || fail "the refusal does not say why"
[ $((SECONDS - t0)) -le 3 ] || fail "the refusal waited $((SECONDS - t0)) s for a live daemon"
corfs_unmount "$mnt"
echo OK
