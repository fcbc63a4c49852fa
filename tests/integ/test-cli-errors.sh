#!/usr/bin/env bash
# Proves that bad input to the corfs commands gets a clear one-line error
# and exit code 1 or 2 (never a crash, never a signal), that a failed
# mount leaves no FUSE mount and no daemon holding the state directory,
# that one state directory serves one daemon, that the help texts work,
# and that the config file is checked (file and line named) and applied.
. "$(dirname "$0")/../functions.sh"

requires nbdkit --version
requires fusermount3 --version
requires jq --version
requires nbdcopy --version
requires flock --version

start_nbdkit "$T/nbd.pid" -U "$T/nbd.sock" pattern 8M
URL=$(nbd_uri "$T/nbd.sock")
nbdcopy "$URL" "$T/pattern.img" || fail "nbdcopy from the test parent failed"
mnt=$T/mnt; mkdir -p "$mnt"
mnt=$(realpath "$mnt")
n=0

# check_released STATE MNT: no FUSE mount on MNT, and (within 5 s, the
# daemon may still be exiting) no process holding files in STATE.
check_released () {
  local state=$1 m=$2 i held=""
  grep -q " $m fuse" /proc/mounts && fail "a failed mount left a FUSE mount on $m"
  [ -d "$state" ] || return 0
  state=$(realpath "$state")
  for i in $(seq 50); do
    held=$(find /proc/[0-9]*/fd -maxdepth 1 -lname "$state/*" 2>/dev/null | head -n 3 || true)
    [ -z "$held" ] && break
    sleep 0.1
  done
  [ -z "$held" ] || fail "a failed mount left a process holding $state: $held"
  if [ -f "$state/corfs.pid" ]; then
    flock -n "$state/corfs.pid" true || fail "a failed mount left $state/corfs.pid locked"
  fi
}

# expect_fail DESC REGEX CMD...: CMD exits 1 or 2 within 20 s with one
# non-empty line on stderr matching REGEX (case-insensitive).
expect_fail () {
  local desc=$1 re=$2 rc=0 lines; shift 2
  timeout 20 "$@" >"$T/out" 2>"$T/err" || rc=$?
  [ $rc -ne 124 ] || fail "$desc: hung (killed after 20 s): $*"
  [ $rc -eq 1 ] || [ $rc -eq 2 ] || fail "$desc: exit code $rc (expected 1 or 2): $*; stderr: $(cat "$T/err")"
  [ -s "$T/err" ] || fail "$desc: no error message on stderr: $*"
  lines=$(wc -l < "$T/err")
  [ "$lines" -eq 1 ] || fail "$desc: expected a one-line error, got $lines lines: $(cat "$T/err")"
  grep -qiE -- "$re" "$T/err" || fail "$desc: message does not mention /$re/: $(cat "$T/err")"
  echo "ok: $desc: $(cat "$T/err")"
}

# mount_fail DESC REGEX MOUNT-ARGS...: a mount with a fresh state dir
# fails as expect_fail says and leaves nothing behind.
mount_fail () {
  local desc=$1 re=$2; shift 2
  n=$((n + 1))
  expect_fail "$desc" "$re" "$CORFS" mount --state "$T/s$n" "$@"
  check_released "$T/s$n" "$mnt"
}

# --- mount: bad command lines ----------------------------------------------
mount_fail "unknown option" "unknown.*--bogus" --bogus --disk d="$URL" "$mnt"
mount_fail "missing MOUNTPOINT" "missing MOUNTPOINT" --disk d="$URL"
expect_fail "missing --state" "--state" "$CORFS" mount --disk d="$URL" "$mnt"
check_released "$T/none" "$mnt"
mount_fail "mountpoint does not exist" "$T/nonexistent.*No such file" --disk d="$URL" "$T/nonexistent"
mount_fail "--disk without =" "NAME=URL" --disk "d-file:///dev/null" "$mnt"
mount_fail "disk name a/b" "disk name.*a/b" --disk "a/b=$URL" "$mnt"
mount_fail "disk name .." "disk name.*\.\." --disk "..=$URL" "$mnt"
mount_fail "disk name 'x y'" "disk name.*x y" --disk "x y=$URL" "$mnt"
mount_fail "URL ftp://x" "unsupported|ftp://x" --disk d=ftp://x "$mnt"
mount_fail "nbd+unix URL without socket=" "socket" --disk d=nbd+unix:/// "$mnt"
mount_fail "--block-size 3K" "block.size" --block-size 3K --disk d="$URL" "$mnt"
mount_fail "--block-size 8M" "block.size" --block-size 8M --disk d="$URL" "$mnt"
mount_fail "--block-size abc" "block.size.*abc" --block-size abc --disk d="$URL" "$mnt"
mount_fail "--disk NAME=@/nonexistent" "/nonexistent.*No such file" --disk d=@/nonexistent "$mnt"

t0=$(date +%s)
mount_fail "unreachable parent" "unreach1" --connect-timeout 1 --hold 2 \
  --disk unreach1="$(nbd_uri "$T/no-such.sock")" "$mnt"
el=$(( $(date +%s) - t0 ))
[ $el -le 10 ] || fail "unreachable parent: mount took $el s to fail (--connect-timeout 1 --hold 2)"

# --- one daemon per state directory -----------------------------------------
corfs_mount "$T/busy" "$mnt" --disk d="$URL"
pid1=$(daemon_pid "$T/busy")
mkdir -p "$T/mnt2"
expect_fail "state directory in use" "in use" "$CORFS" mount --state "$T/busy" "$T/mnt2"
grep -q " $(realpath "$T/mnt2") fuse" /proc/mounts && fail "the refused mount left a FUSE mount on mnt2"
[ "$(daemon_pid "$T/busy")" = "$pid1" ] || fail "the refused mount overwrote corfs.pid"
kill -0 "$pid1" || fail "the first daemon died when a second mount was refused"
cmp -s "$mnt/d" "$T/pattern.img" ||
  fail "the first mount no longer serves the right data after a refused second mount"
corfs_unmount "$mnt"

# --- unmount, status, unknown command ---------------------------------------
mkdir -p "$T/plain"
expect_fail "unmount of a non-corfs directory" "not a corfs mount" "$CORFS" unmount "$T/plain"
expect_fail "status without a daemon" "daemon|mounted" "$CORFS" status --state "$T/plain"
expect_fail "status without a daemon (--json)" "daemon|mounted" "$CORFS" status --state "$T/plain" --json
expect_fail "unknown command" "unknown command.*frobnicate" "$CORFS" frobnicate

# --- help ---------------------------------------------------------------------
for args in "--help" "mount --help" "status --help" "unmount --help"; do
  rc=0
  # shellcheck disable=SC2086
  "$CORFS" $args >"$T/out" 2>"$T/err" || rc=$?
  [ $rc -eq 0 ] || fail "corfs $args: exit code $rc"
  grep -q "^Usage:" "$T/out" || fail "corfs $args: no Usage line on stdout"
done

# --- config file --------------------------------------------------------------
printf '[corfs]\nhold = 5\nbogus = 1\n[disk d1]\nurl = %s\n' "$URL" > "$T/bad-key.conf"
mount_fail "config: unknown key" "bad-key.conf.*line 3.*bogus" --config "$T/bad-key.conf" "$mnt"
printf '[corfs]\nhold = 5\n[disk d1]\nurl = %s\nfrob = 2\n' "$URL" > "$T/bad-dkey.conf"
mount_fail "config: unknown disk key" "bad-dkey.conf.*line 5.*frob" --config "$T/bad-dkey.conf" "$mnt"
printf '[corfs]\nhold = 5\n[frobnicate]\nx = 1\n' > "$T/bad-sect.conf"
mount_fail "config: unknown section" "bad-sect.conf.*line 4.*frobnicate" --config "$T/bad-sect.conf" "$mnt"
mount_fail "config: missing file" "$T/nonexistent.conf" --config "$T/nonexistent.conf" "$mnt"

printf '[corfs]\nhold = 5\n[disk d1]\nurl = %s\nblock-size = 4K\n' "$URL" > "$T/good.conf"
corfs_mount "$T/conf-state" "$mnt" --config "$T/good.conf"
bs=$("$CORFS" status --state "$T/conf-state" d1 --json | jq -r .block_size)
[ "$bs" = 4096 ] || fail "config: disk d1 has block_size $bs (the config says 4K)"
grep -q "hold 5 s" "$T/conf-state/corfs.log" || fail "config: hold = 5 not applied (see corfs.log)"
cmp -s -n 65536 "$mnt/d1" "$T/pattern.img" ||
  fail "config: disk d1 does not read the parent's data"
corfs_unmount "$mnt"
