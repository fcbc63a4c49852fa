#!/usr/bin/env bash
# `scons install` (issue 19), on a copy of the source tree (a scons run in
# the tree itself could race the build that runs the tests, e.g. under
# `scons check-integ`); it builds corfs and mount.corfs there (~40 s):
#  - PREFIX=DIR into directories that do not exist yet gives DIR/bin/corfs,
#    DIR/sbin/mount.corfs, DIR/lib/systemd/system/corfs@.service (naming
#    DIR/bin/corfs), DIR/share/doc/corfs/corfs.conf.example and the man
#    pages generated into build/man (corfs.1, corfs.conf.5) as
#    DIR/share/man/manN/NAME.N, which render without warnings;
#  - the installed corfs --version prints the VERSION file's release, and
#    "commit unknown" (the copy is no git tree); this build's prints its
#    commit;
#  - the installed mount.corfs runs DIR/bin/corfs and mounts a recorded
#    state directory;
#  - PREFIX=/usr DESTDIR=STAGE stages a system install: the unit and the
#    helper name /usr/bin/corfs.
. "$(dirname "$0")/../functions.sh"
requires scons --version
requires fusermount3 --version

echo "=== this build's --version"
"$CORFS" --version | tee "$T/v"
grep -Eq "^corfs $(cat "$TOP/VERSION") \(commit ([0-9a-zA-Z.]+-g)?[0-9a-f]{7,}(-dirty)?\)$" "$T/v" ||
  grep -Eq "^corfs [^ ]+ \(commit unknown\)$" "$T/v" || fail "--version: $(cat "$T/v")"
[ "$("$CORFS" -V)" = "$(cat "$T/v")" ] || fail "-V differs from --version"

echo "=== a copy of the tree, without its builds or .git"
src=$T/src; mkdir "$src"
tar -C "$TOP" --exclude=./build --exclude=./build-asan --exclude=./build-fuzz --exclude=./.git \
  --exclude=./tests/.npm --exclude=./.sconsign.dblite -cf - . | tar -C "$src" -xf -

echo "=== scons install PREFIX=$T/x"
prefix=$T/x
nice scons -C "$src" -Q -j2 install PREFIX="$prefix" > "$T/install.log" 2>&1 ||
  { tail -n 30 "$T/install.log"; fail "scons install failed"; }
find "$prefix" -printf '%M %P\n' | sort
mode () { stat -c %a "$prefix/$1" 2> /dev/null || fail "not installed: $1"; }
[ "$(mode bin/corfs)" = 755 ] || fail "bin/corfs mode $(mode bin/corfs)"
[ "$(mode sbin/mount.corfs)" = 755 ] || fail "sbin/mount.corfs mode $(mode sbin/mount.corfs)"
[ "$(mode lib/systemd/system/corfs@.service)" = 644 ] || fail "unit mode"
[ "$(mode share/doc/corfs/corfs.conf.example)" = 644 ] || fail "example config mode"
cmp "$src/conf/corfs.conf" "$prefix/share/doc/corfs/corfs.conf.example" || fail "example config"
for n in corfs.1 corfs.conf.5; do
  cmp "$src/build/man/$n" "$prefix/share/man/man${n##*.}/$n" || fail "man page $n not installed"
  if command -v groff > /dev/null; then
    groff -man -Tutf8 -ww "$prefix/share/man/man${n##*.}/$n" 2>&1 > /dev/null | grep . &&
      fail "man page $n: groff warnings"
  fi
done
unit=$prefix/lib/systemd/system/corfs@.service
grep -q "^ExecStart=$prefix/bin/corfs mount --foreground " "$unit" || fail "the unit's ExecStart: $(grep ExecStart "$unit")"
grep -q "/usr/bin/corfs" "$unit" && fail "the unit still names /usr/bin/corfs"
"$prefix/bin/corfs" --version | tee "$T/v2"
grep -Eq "^corfs $(cat "$TOP/VERSION") \(commit unknown\)$" "$T/v2" || fail "installed --version: $(cat "$T/v2")"
if command -v systemd-analyze > /dev/null; then
  mkdir "$T/units"; cp "$unit" "$T/units/corfs@t.service"
  systemd-analyze verify --man=no "$T/units/corfs@t.service" || fail "systemd-analyze verify"
fi
nice scons -C "$src" -Q -j2 install PREFIX="$prefix" > "$T/again.log" 2>&1 || fail "a second install failed"
grep -q "^Install" "$T/again.log" && fail "a second install copied again: $(cat "$T/again.log")"

echo "=== the installed mount.corfs runs the installed corfs"
img=$T/parent.img st=$T/st mnt=$T/mnt
head -c $((1 << 20)) /dev/urandom > "$img"
corfs_mount "$st" "$mnt" --disk d="file://$img"
corfs_unmount "$mnt"
"$prefix/sbin/mount.corfs" -v "$st" "$mnt" -o stream=off,defaults 2> "$T/h.err" || fail "mount.corfs: $(cat "$T/h.err")"
cat "$T/h.err"
grep -q "running $prefix/bin/corfs mount " "$T/h.err" || fail "the helper does not run $prefix/bin/corfs"
cmp "$mnt/d" "$img" || fail "wrong data"
tr '\0' ' ' < "/proc/$(daemon_pid "$st")/cmdline" | grep -q "^$prefix/bin/corfs mount" ||
  fail "the daemon is not the installed corfs"
corfs_unmount "$mnt"

echo "=== PREFIX=/usr DESTDIR=$T/stage"
nice scons -C "$src" -Q -j2 install PREFIX=/usr DESTDIR="$T/stage" > "$T/stage.log" 2>&1 ||
  { tail -n 30 "$T/stage.log"; fail "the staged install failed"; }
[ -x "$T/stage/usr/bin/corfs" ] && [ -x "$T/stage/usr/sbin/mount.corfs" ] || fail "staged binaries"
grep -q "^ExecStart=/usr/bin/corfs mount " "$T/stage/usr/lib/systemd/system/corfs@.service" ||
  fail "the staged unit does not name /usr/bin/corfs"
"$T/stage/usr/sbin/mount.corfs" -f /var/lib/corfs/a /mnt/corfs 2>&1 | grep -q "running /usr/bin/corfs mount" ||
  fail "the staged helper does not run /usr/bin/corfs"
echo PASS
