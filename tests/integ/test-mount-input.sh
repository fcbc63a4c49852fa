#!/usr/bin/env bash
# Input checks of `corfs mount` (the same limits on the command line and in
# the config file; tests/unit/test-daemon.c has the full table):
#  - --hold 18446744074 (which times 10^9 wrapped to 0.29 s), --hold 3601,
#    connect-timeout above the cap, and hold = 0 in the config file are
#    refused before any daemon starts, with an error naming the setting;
#  - a state directory whose path has a comma cannot inject a FUSE option
#    through -ofsname= (",allow_other" stays part of the name), and one
#    with a backslash keeps it: the mount serves, and its source in
#    /proc/self/mountinfo is "corfs:" plus the exact path.
. "$(dirname "$0")/../functions.sh"
requires fusermount3 --version

img=$T/parent.img
head -c $((1 << 20)) /dev/urandom > "$img"
url=file://$img

refused () {   # refused WHAT PATTERN ARGS...: the mount fails at once, says PATTERN
  local what=$1 pat=$2; shift 2
  mkdir -p "$T/m-refused"
  if "$CORFS" mount --state "$T/s-refused" "$@" "$T/m-refused" > "$T/refused.out" 2>&1; then
    cleanup_fn _force_unmount "$T/s-refused" "$T/m-refused"
    fail "$what: the mount was accepted"
  fi
  cat "$T/refused.out"
  grep -q -- "$pat" "$T/refused.out" || fail "$what: no error matching '$pat'"
  [ ! -e "$T/s-refused/corfs.pid" ] || fail "$what: a daemon was started"
}
echo "=== durations"
refused "--hold 18446744074" "hold 18446744074: too long (at most 3600 s)" \
  --disk d="$url" --hold 18446744074
refused "--hold 3601" "hold 3601: too long" --disk d="$url" --hold 3601
refused "--connect-timeout 18446744074" "connect-timeout 18446744074: too long" \
  --disk d="$url" --connect-timeout 18446744074
printf '[corfs]\nhold = 0\n[disk d]\nurl = %s\n' "$url" > "$T/hold0.conf"
refused "config hold = 0" "line 2: hold 0: expected a whole number of seconds from 1 to 3600" --config "$T/hold0.conf"
printf '[corfs]\nconnect-timeout = 18446744074\n' > "$T/ct.conf"
refused "config connect-timeout" "connect-timeout 18446744074: too long" \
  --disk d="$url" --config "$T/ct.conf"

# mountinfo_of MNT: "SOURCE SUPER_OPTIONS" of the mount on MNT.
mountinfo_of () {
  awk -v m="$1" '$5 == m { sub(/.* - [^ ]+ /, ""); print }' /proc/self/mountinfo
}
check_fsname () {   # check_fsname STATE MNT
  local st=$1 mnt=$2 info want
  corfs_mount "$st" "$mnt" --disk d="$url"
  info=$(mountinfo_of "$mnt")
  echo "mountinfo: $info"
  # The kernel shows a backslash in a source as \134.
  want="corfs:${st//\\/\\134}"
  [ "${info%% *}" = "$want" ] || fail "mount source '${info%% *}', expected '$want'"
  case ",${info#* }," in *,allow_other,*) fail "allow_other was injected: $info";; esac
  cmp "$mnt/d" "$img" || fail "the disk under $st reads wrong"
  corfs_unmount "$mnt"
}
echo "=== a comma in the state path"
check_fsname "$T/st,allow_other" "$T/m1"
echo "=== a backslash in the state path"
check_fsname "$T/st\\x,y" "$T/m2"
echo OK
