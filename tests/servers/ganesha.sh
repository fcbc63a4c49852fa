# shellcheck shell=bash
# nfs-ganesha (VFS FSAL) on 127.0.0.1 for NFS parent tests.  Source it
# after tests/functions.sh:
#   . "$(dirname "$0")/../servers/ganesha.sh"
#   ganesha_requires                 skips when ganesha/rpcbind are missing
#   start_ganesha DIR                exports DIR (Path = Pseudo = DIR) over
#                                    NFSv3 and v4 on free ports; sets
#                                    NFS_PORT, MNT_PORT, GANESHA_PID and the
#                                    URL helpers below; registers the stop
#   nfs3_url PATH / nfs4_url PATH    corfs URLs for a file under DIR
#   stop_ganesha                     SIGTERM by PID, wait (also at exit)
# rpcbind is started (in the foreground, by PID) only when none answers,
# and then stopped at exit; everything else lives under $T/ganesha.
# Ganesha needs root.

: "${GANESHA:=/usr/bin/ganesha.nfsd}"
: "${RPCBIND:=/usr/sbin/rpcbind}"
GANESHA_PID="" RPCBIND_PID=""

free_port () {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

ganesha_requires () {
  [ -x "$GANESHA" ] || skip "missing: $GANESHA (nfs-ganesha)"
  [ -f /usr/lib/x86_64-linux-gnu/ganesha/libfsalvfs.so ] || ls /usr/lib/*/ganesha/libfsalvfs.so >/dev/null 2>&1 \
    || skip "missing: nfs-ganesha-vfs (libfsalvfs.so)"
  [ "$(id -u)" = 0 ] || skip "nfs-ganesha needs root"
  [ -x /usr/sbin/rpcinfo ] || skip "missing: rpcinfo (rpcbind)"
  requires python3 --version
}

_rpcbind_up () { timeout 5 /usr/sbin/rpcinfo -p 127.0.0.1 >/dev/null 2>&1; }

# ensure_rpcbind: start rpcbind unless one answers; skip if it cannot run.
ensure_rpcbind () {
  _rpcbind_up && return 0
  [ -x "$RPCBIND" ] || skip "missing: rpcbind (and none is running)"
  mkdir -p /run/rpcbind
  "$RPCBIND" -f -w > "$T/rpcbind.log" 2>&1 &
  RPCBIND_PID=$!
  cleanup_fn stop_rpcbind
  for _ in $(seq 50); do _rpcbind_up && return 0; alive "$RPCBIND_PID" || break; sleep 0.1; done
  skip "rpcbind is needed and could not start: $(cat "$T/rpcbind.log")"
}
stop_rpcbind () {
  [ -n "$RPCBIND_PID" ] || return 0
  kill_pid "$RPCBIND_PID"; wait "$RPCBIND_PID" 2>/dev/null || true
  RPCBIND_PID=""
}

start_ganesha () {
  local dir=$1 g=$T/ganesha
  ensure_rpcbind
  mkdir -p "$g/recovery"
  NFS_PORT=$(free_port) MNT_PORT=$(free_port)
  while [ "$MNT_PORT" = "$NFS_PORT" ]; do MNT_PORT=$(free_port); done
  cat > "$g/ganesha.conf" <<EOF
NFS_CORE_PARAM {
  Bind_Addr = 127.0.0.1;
  NFS_Port = $NFS_PORT;
  MNT_Port = $MNT_PORT;
  Protocols = 3, 4;
  Enable_NLM = false;
  Enable_RQUOTA = false;
  Enable_UDP = false;
}
NFSV4 {
  Graceless = true;
  RecoveryBackend = fs;
  RecoveryRoot = "$g/recovery";
  RecoveryOldDir = "v4old";
  Lease_Lifetime = 30;
}
EXPORT {
  Export_Id = 1;
  Path = "$dir";
  Pseudo = "$dir";
  Access_Type = RW;
  Squash = No_Root_Squash;
  SecType = sys;
  Protocols = 3, 4;
  Transports = TCP;
  FSAL { Name = VFS; }
}
LOG {
  Default_Log_Level = EVENT;
}
EOF
  GANESHA_LOG=$g/ganesha.log
  "$GANESHA" -F -f "$g/ganesha.conf" -L "$GANESHA_LOG" -p "$g/ganesha.pid" -N NIV_EVENT \
    > "$g/stdout" 2>&1 &
  GANESHA_PID=$!
  cleanup_fn stop_ganesha
  for _ in $(seq 300); do
    alive "$GANESHA_PID" || break
    if grep -q "NFS SERVER INITIALIZED" "$GANESHA_LOG" 2>/dev/null &&
       (exec 3<>"/dev/tcp/127.0.0.1/$NFS_PORT") 2>/dev/null &&
       (exec 3<>"/dev/tcp/127.0.0.1/$MNT_PORT") 2>/dev/null; then
      echo "ganesha (pid $GANESHA_PID) exports $dir on NFS port $NFS_PORT, MNT port $MNT_PORT"
      return 0
    fi
    sleep 0.1
  done
  echo "--- ganesha log"; tail -n 40 "$GANESHA_LOG" 2>/dev/null; cat "$g/stdout"
  fail "nfs-ganesha did not start"
}

stop_ganesha () {
  [ -n "$GANESHA_PID" ] || return 0
  kill_pid "$GANESHA_PID"; wait "$GANESHA_PID" 2>/dev/null || true
  GANESHA_PID=""
}

# nfs3_url PATH / nfs4_url PATH: PATH absolute, under the exported DIR.
nfs3_url () { echo "nfs://127.0.0.1$1?version=3&nfsport=$NFS_PORT&mountport=$MNT_PORT"; }
nfs4_url () { echo "nfs://127.0.0.1$1?version=4&nfsport=$NFS_PORT"; }
