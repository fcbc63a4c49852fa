#!/usr/bin/env bash
# Proves the metrics over HTTP (src/ctl/metrics-http.c, --metrics-listen)
# and the version in ping and metrics (issue 19):
#  - `--metrics-listen PORT` serves GET /metrics on 127.0.0.1:PORT: the
#    Prometheus text with corfs_build_info (the version and commit of
#    `corfs --version`), corfs_disk_info with the parent's backend, and
#    the per-disk metrics; the same series as `corfs metrics`;
#  - every line follows the text exposition format (a promtool-like check:
#    names, labels, values, HELP/TYPE before the samples, _total on
#    counters, complete histograms, no duplicate series);
#  - HEAD is 200 without a body; other paths are 404, other methods 405
#    (with Allow);
#  - the control socket's ping gives the version and commit;
#  - a hostile client holding 50 idle connections and a slow client
#    sending its request a byte at a time stall neither the HTTP server
#    (curl still gets the metrics) nor the daemon (cold reads from the
#    parent and `status` answer); the server closes the idle connections
#    after its timeout;
#  - at unmount the port is released (it can be bound again at once);
#  - the config key `metrics-listen` works, with IPv6 [::1]:PORT when the
#    machine has it;
#  - bad values (--metrics-listen and the config key), a port in use and
#    an address the machine does not have are refused with a clear
#    error, nothing mounted.
. "$(dirname "$0")/../functions.sh"
. "$(dirname "$0")/../servers/nginx.sh"    # free_port

requires fusermount3 --version
requires curl --version
requires python3 --version

SIZE=$((16 << 20))
img=$T/parent.img
head -c $SIZE /dev/urandom > "$img"
port=$(free_port)
st=$T/st mnt=$T/mnt
url=http://127.0.0.1:$port/metrics

corfs_mount "$st" "$mnt" --disk d="file://$img" --metrics-listen "$port"
grep -q "metrics: serving http://127.0.0.1:$port/metrics" "$st/corfs.log" ||
  fail "the log does not say where the metrics are served"

# ---- the text, and the same series as `corfs metrics` ----
m=$(curl -sS --max-time 10 -D "$T/headers" "$url") || fail "curl $url failed"
grep -qi '^content-type: text/plain; version=0.0.4' "$T/headers" ||
  fail "content type: $(grep -i content-type "$T/headers")"
read -r _ version _ commit < <("$CORFS" --version | tr -d '()')
grep -qxF "corfs_build_info{version=\"$version\",commit=\"$commit\"} 1" <<< "$m" ||
  fail "no corfs_build_info for $version/$commit in: $(echo "$m" | grep build_info)"
grep -qxF 'corfs_disk_info{disk="d",backend="file"} 1' <<< "$m" || fail "no corfs_disk_info for d"
grep -qxF "corfs_disk_size_bytes{disk=\"d\"} $SIZE" <<< "$m" || fail "no corfs_disk_size_bytes for d"
grep -q '^corfs_fetched_bytes_total{disk="d",source="guest"} ' <<< "$m" || fail "no fetched bytes for d"
grep -q '^corfs_guest_fault_seconds_bucket{disk="d",le="+Inf"} ' <<< "$m" || fail "no histogram for d"
series () { grep -v '^#' | sed 's/ [^ ]*$//' | sort; }
diff <(echo "$m" | series) <("$CORFS" metrics --state "$st" | series) ||
  fail "GET /metrics and corfs metrics give different series"

# ---- promtool-like check of the exposition format ----
echo "$m" > "$T/metrics.txt"
python3 - "$T/metrics.txt" <<'EOF' || fail "the metrics text breaks the exposition format"
import re, sys
text = open(sys.argv[1]).read()
NAME = r'[a-zA-Z_:][a-zA-Z0-9_:]*'
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE = re.compile(r'^(%s)(\{(?:%s)(?:,%s)*\})? (\S+)$' % (NAME, LABEL, LABEL))
errors, types, helps, seen, samples = [], {}, set(), set(), {}
assert text.endswith('\n'), 'no final newline'
for n, line in enumerate(text.splitlines(), 1):
    if line.startswith('# HELP '):
        name = line.split(' ')[2]
        if not re.fullmatch(NAME, name) or name in helps:
            errors.append('%d: bad or repeated HELP: %s' % (n, line))
        helps.add(name)
        continue
    if line.startswith('# TYPE '):
        parts = line.split(' ')
        if len(parts) != 4 or parts[3] not in ('counter', 'gauge', 'histogram', 'summary', 'untyped') \
           or parts[2] in types or parts[2] in samples:
            errors.append('%d: bad, repeated or late TYPE: %s' % (n, line))
        types[parts[2]] = parts[3]
        continue
    if line.startswith('#') or not line:
        errors.append('%d: unexpected line %r' % (n, line)); continue
    mo = SAMPLE.match(line)
    if not mo:
        errors.append('%d: not a sample: %r' % (n, line)); continue
    name, labels, value = mo.groups()
    try:
        float(value)
    except ValueError:
        errors.append('%d: bad value %r' % (n, value))
    family = re.sub(r'_(bucket|sum|count)$', '', name) if re.sub(r'_(bucket|sum|count)$', '', name) in types else name
    if family not in types:
        errors.append('%d: sample before its TYPE: %s' % (n, name))
    samples.setdefault(family, []).append((name, labels or '', value))
    if (name, labels) in seen:
        errors.append('%d: duplicate series %s%s' % (n, name, labels or ''))
    seen.add((name, labels))
    if labels and len(set(re.findall(r'([a-zA-Z_]\w*)=', labels))) != len(re.findall(r'([a-zA-Z_]\w*)=', labels)):
        errors.append('%d: repeated label: %s' % (n, line))
for family, kind in types.items():
    if kind == 'counter' and not family.endswith('_total'):
        errors.append('counter %s does not end in _total' % family)
    if kind != 'counter' and family.endswith('_total'):
        errors.append('%s ends in _total but is a %s' % (family, kind))
    if kind == 'histogram':
        names = {s[0] for s in samples.get(family, [])}
        if names != {family + '_bucket', family + '_sum', family + '_count'}:
            errors.append('histogram %s has %s' % (family, sorted(names)))
        if not any('le="+Inf"' in s[1] for s in samples.get(family, [])):
            errors.append('histogram %s has no +Inf bucket' % family)
    if family not in helps:
        errors.append('%s has no HELP' % family)
    if not family.startswith('corfs_'):
        errors.append('%s lacks the corfs_ prefix' % family)
    if re.search(r'_(ms|us|kb|mb|kib|mib|milliseconds)(_|$)', family):
        errors.append('%s is not in base units' % family)
for e in errors:
    print(e)
sys.exit(1 if errors else 0)
EOF

# ---- HEAD, 404, 405 ----
code () { curl -s -o "$T/body" -w '%{http_code}' --max-time 10 "$@"; }
[ "$(code -I "$url")" = 200 ] || fail "HEAD /metrics is not 200"
for p in / /metric /metrics/ /metrics.txt /x/metrics; do
  c=$(code "http://127.0.0.1:$port$p"); [ "$c" = 404 ] || fail "GET $p gave $c (expected 404)"
done
for meth in POST PUT DELETE PATCH OPTIONS; do
  c=$(code -X $meth -D "$T/h405" "$url"); [ "$c" = 405 ] || fail "$meth /metrics gave $c (expected 405)"
  grep -qi '^allow: GET, HEAD' "$T/h405" || fail "$meth: the 405 has no Allow header"
done
c=$(code -X POST --data-binary @"$img" "$url") || true
[ "$c" = 405 ] || fail "POST with a 16 MiB body gave $c (expected 405)"

# ---- ping gives the version and commit ----
python3 - "$st/corfs.sock" "$version" "$commit" <<'EOF' || fail "ping reply"
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1])
s.sendall(b'{"cmd":"ping"}\n')
buf = b''
while not buf.endswith(b'\n'):
    d = s.recv(4096)
    if not d: break
    buf += d
r = json.loads(buf)
assert r.get('ok') is True and isinstance(r.get('pid'), int), r
assert r.get('version') == sys.argv[2] and r.get('commit') == sys.argv[3], r
EOF

# ---- hostile and slow clients do not stall anything ----
# 50 idle connections (never a byte sent) and one client sending its
# request a byte every 0.3 s; held until $T/go appears (60 s at most),
# then the idle ones are watched for the server closing them (30 s at
# most: its timeout is 10 s).
python3 - "$port" "$T/ready" "$T/go" > "$T/hostile.out" 2>&1 <<'EOF' &
import os, select, socket, sys, time
port, ready, go = int(sys.argv[1]), sys.argv[2], sys.argv[3]
idle = []
for _ in range(50):
    s = socket.create_connection(('127.0.0.1', port), timeout=10)
    idle.append(s)
slow = socket.create_connection(('127.0.0.1', port), timeout=10)
req = b'GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n'
open(ready, 'w').close()
deadline = time.time() + 60
i = 0
while not os.path.exists(go) and time.time() < deadline:
    if i < len(req) - 1:
        try:
            slow.send(req[i:i + 1]); i += 1
        except OSError:
            pass
    time.sleep(0.3)
print('slow client sent %d bytes' % i)
closed, deadline = set(), time.time() + 30
while len(closed) < len(idle) and time.time() < deadline:
    r, _, _ = select.select([s for s in idle if s not in closed], [], [], 1)
    for s in r:
        try:
            if s.recv(1) == b'':
                closed.add(s)
        except OSError:
            closed.add(s)
print('closed by the server: %d of %d' % (len(closed), len(idle)))
EOF
hostile=$!
cleanup_fn kill_pid "$hostile"
for _ in $(seq 100); do [ -e "$T/ready" ] && break; sleep 0.1; done
[ -e "$T/ready" ] || fail "the hostile client did not connect: $(cat "$T/hostile.out")"
sleep 1
est=$(ss -Htn state established "( sport = :$port )" | wc -l)
echo "established on the server side: $est"
[ "$est" -ge 50 ] || fail "only $est connections held by the hostile clients"
for i in 1 2 3; do
  m2=$(curl -sS --max-time 5 "$url") || fail "curl $i while 51 connections are held"
  grep -q '^corfs_build_info' <<< "$m2" || fail "curl $i: no corfs_build_info"
done
dd if="$mnt/d" of=/dev/null bs=1M count=4 iflag=direct status=none & rd=$!
t0=$(date +%s%N)
timeout 10 "$CORFS" status --state "$st" d > /dev/null || fail "status stalled while the clients hold connections"
wait $rd || fail "a cold read failed while the clients hold connections"
t1=$(date +%s%N)
echo "status and a 4 MiB cold read took $(( (t1 - t0) / 1000000 )) ms"
cmp <(dd if="$mnt/d" bs=1M count=4 iflag=direct status=none) <(head -c $((4 << 20)) "$img") ||
  fail "data read while the clients hold connections differs"
touch "$T/go"
wait "$hostile" || true
cat "$T/hostile.out"
grep -q 'closed by the server: 50 of 50' "$T/hostile.out" ||
  fail "the server did not close the idle connections after its timeout"
m3=$(curl -sS --max-time 5 "$url") || fail "curl after the hostile clients left"
grep -q '^corfs_build_info' <<< "$m3" || fail "curl after the hostile clients left: no corfs_build_info"

# ---- the port is released at unmount ----
pid=$(daemon_pid "$st")
corfs_unmount "$mnt" || fail "unmount failed"
wait_gone "$pid"
grep -q "daemon: clean exit" "$st/corfs.log" || fail "no clean exit"
python3 -c '
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1)' "$port" ||
  fail "port $port is still taken after unmount"

# ---- the config key; IPv6 when the machine has ::1 ----
p2=$(free_port)
if grep -q '^0\{31\}1 .* lo$' /proc/net/if_inet6 2>/dev/null; then
  listen="[::1]:$p2" url2="http://[::1]:$p2/metrics"
else
  echo "no ::1 here: the config key is tried on 127.0.0.1"
  listen="127.0.0.1:$p2" url2="http://127.0.0.1:$p2/metrics"
fi
printf '[corfs]\nmetrics-listen = %s\n' "$listen" > "$T/c.conf"
corfs_mount "$T/st2" "$T/mnt2" --config "$T/c.conf" --disk d="file://$img"
m4=$(curl -sS -g --max-time 10 "$url2") || fail "curl $url2 failed"
grep -q '^corfs_disk_info{disk="d",backend="file"} 1$' <<< "$m4" ||
  fail "no metrics on $url2 (config metrics-listen = $listen)"
corfs_unmount "$T/mnt2" || fail "unmount 2 failed"

# ---- refused: bad values, a port in use, an address not here ----
refused () {   # refused WHAT EXPECTED ARGS...
  local what=$1 want=$2; shift 2
  local s=$T/st-bad m=$T/mnt-bad rc=0
  rm -rf "$s"; mkdir -p "$s" "$m"
  timeout 60 "$CORFS" mount --state "$s" --stream=off --disk d="file://$img" "$@" "$m" \
    > "$T/err" 2>&1 || rc=$?
  if is_mounted "$m"; then fusermount3 -u "$m"; fail "$what: mounted"; fi
  [ $rc -ne 0 ] || fail "$what: exit 0"
  grep -q -- "$want" "$T/err" || fail "$what: the error does not say '$want': $(cat "$T/err")"
  echo "$what: $(head -n 1 "$T/err")"
}
for bad in foo 0 65536 -1 ":$port" "127.0.0.1:" "[::1]" "::1:80" "example.org:80" "1.2.3.4.5:80"; do
  refused "--metrics-listen $bad" "expected PORT" --metrics-listen "$bad"
done
printf '[corfs]\nmetrics-listen = nonsense\n' > "$T/bad.conf"
refused "config metrics-listen = nonsense" "metrics-listen = nonsense: expected PORT" --config "$T/bad.conf"
python3 -c '
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1)
open(sys.argv[2], "w").close(); time.sleep(60)' "$p2" "$T/busy" & busy=$!
cleanup_fn kill_pid "$busy"
for _ in $(seq 100); do [ -e "$T/busy" ] && break; sleep 0.1; done
refused "a port in use" "cannot listen on 127.0.0.1:$p2: Address already in use" --metrics-listen "$p2"
kill_pid "$busy"
# TEST-NET-1 (RFC 5737): on no interface here, so bind fails; nothing is sent.
refused "an address not on this machine" "cannot listen on 192.0.2.1:$p2" --metrics-listen "192.0.2.1:$p2"
echo PASS
