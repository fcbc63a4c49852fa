# shellcheck shell=bash
# S3 test servers: s3rver (real S3 semantics, no V4 signature checks) behind
# s3-sigv4-front.py (which checks them with botocore).  Source it after
# tests/functions.sh:
#   . "$(dirname "$0")/../servers/s3.sh"
#   start_s3 KEY:SECRET[:TOKEN]...   sets S3_ENDPOINT (the front), S3_UPSTREAM
#                                    (s3rver itself), S3_FRONT_LOG; registers
#                                    the cleanups
#   s3_mb KEY:SECRET[:TOKEN] BUCKET            create a bucket through the front
#   s3_put KEY:SECRET[:TOKEN] BUCKET KEY FILE  upload FILE, prints the ETag
# Everything listens on 127.0.0.1 only, on free ports.

_s3_top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
: "${S3RVER:=$_s3_top/tests/.npm/node_modules/.bin/s3rver}"
S3_FRONT=$_s3_top/tests/servers/s3-sigv4-front.py
# Debian's python3-botocore is what install-deps provides: prefer the
# system interpreter, whatever python3 comes first on PATH.
S3_PY=python3
/usr/bin/python3 -c "import botocore.auth" >/dev/null 2>&1 && S3_PY=/usr/bin/python3

# free_port: a TCP port free on 127.0.0.1 right now.
free_port () {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_port PORT [TENTHS]: until something accepts on 127.0.0.1:PORT.
wait_port () {
  for _ in $(seq "${2:-150}"); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

s3_requires () {
  requires node --version
  requires $S3_PY -c "import botocore.auth, botocore.session"
  [ -f "$S3RVER" ] || skip "missing: s3rver ($S3RVER)"
}

start_s3 () {
  local port c creds=()
  mkdir -p "$T/s3rver"
  port=$(free_port)
  node "$S3RVER" -d "$T/s3rver" -a 127.0.0.1 -p "$port" --silent > "$T/s3rver.log" 2>&1 &
  local s3pid=$!
  cleanup_fn kill_pid "$s3pid"
  wait_port "$port" || fail "s3rver did not listen on $port: $(cat "$T/s3rver.log")"
  S3_UPSTREAM=http://127.0.0.1:$port

  for c in "$@"; do creds+=(--cred "$c"); done
  S3_FRONT_LOG=$T/s3-front.log
  rm -f "$T/s3-front.port"
  $S3_PY "$S3_FRONT" --upstream "$S3_UPSTREAM" "${creds[@]}" --port-file "$T/s3-front.port" \
    --log "$S3_FRONT_LOG" > "$T/s3-front.out" 2>&1 &
  local fpid=$!
  cleanup_fn kill_pid "$fpid"
  for _ in $(seq 150); do [ -s "$T/s3-front.port" ] && break; alive "$fpid" || break; sleep 0.1; done
  [ -s "$T/s3-front.port" ] || fail "the SigV4 front did not start: $(cat "$T/s3-front.out")"
  S3_ENDPOINT=http://127.0.0.1:$(cat "$T/s3-front.port")
}

# _s3_client CRED BUCKET [KEY FILE]: botocore, path style, through the front.
_s3_client () {
  $S3_PY - "$S3_ENDPOINT" "$@" <<'EOF'
import sys, botocore.session
from botocore.config import Config
ep, cred, bucket = sys.argv[1:4]
key, secret, token = (cred.split(":", 2) + [None])[:3]
c = botocore.session.get_session().create_client(
    "s3", region_name="us-east-1", endpoint_url=ep, aws_access_key_id=key,
    aws_secret_access_key=secret, aws_session_token=token,
    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))
if len(sys.argv) == 4:
    c.create_bucket(Bucket=bucket)
else:
    with open(sys.argv[5], "rb") as f:
        print(c.put_object(Bucket=bucket, Key=sys.argv[4], Body=f)["ETag"])
EOF
}
s3_mb () { _s3_client "$1" "$2"; }
s3_put () { _s3_client "$1" "$2" "$3" "$4"; }
