#!/usr/bin/env bash
# Proves the control socket (docs/control.md, src/ctl) survives
# misbehaving clients and keeps serving the others:
#  - malformed JSON, a JSON value that is not an object, a request without
#    "cmd", an unknown command: each gets one {"ok": false, "error": ...}
#    reply (the "id" echoed where there is one) and the connection stays
#    usable;
#  - a 1 MiB line: exactly one error reply about its length, the rest of
#    the line is discarded, and a following ping on the same connection
#    is answered;
#  - 70 concurrent clients: at most 64 are served, the others get an error
#    line or are closed/refused, nobody hangs, the daemon lives on;
#  - clients that send half a request and disconnect;
#  - while a stream produces events: a subscriber that never reads, and
#    clients that flood requests without reading their replies (the daemon
#    drops them after its send timeout): a status request from another
#    client is still answered within 5 s;
#  - event subscribers that disconnect while the control thread is busy
#    with such a flooding client (their hang-up and pending events reach
#    the control thread together);
#  - afterwards the daemon answers status, the stream completes and the
#    disk reads correctly; `corfs events` printed stream-progress and
#    stream-complete lines during the stream.
. "$(dirname "$0")/../functions.sh"

requires nbdkit --version
requires fusermount3 --version
requires python3 --version
requires jq --version

MiB=$((1 << 20))
SIZE=$((256 * MiB))
img=$T/parent.img sock=$T/nbd.sock
head -c $SIZE /dev/urandom > "$img"
start_nbdkit "$T/nbd.pid" -r -U "$sock" file "$img"

st=$T/state mnt=$T/mnt
corfs_mount "$st" "$mnt" --stream=off --disk d="$(nbd_uri "$sock")"
dpid=$(daemon_pid "$st")
csock=$st/corfs.sock
jfield () { "$CORFS" status --state "$st" d --json | jq -r "$1"; }
# daemon_up WHEN: the daemon process exists and is not a zombie.
daemon_up () {
  local s; s=$(awk '{ print $3 }' "/proc/$dpid/stat" 2>/dev/null || true)
  [ -n "$s" ] && [ "$s" != Z ] || fail "the daemon (pid $dpid) died $1: $(tail -n 5 "$st/corfs.log")"
}

# The python side: each phase is a function; a failed check prints FAIL.
cat > "$T/ctl.py" <<'EOF'
import json, os, socket, sys, time

path = sys.argv[1]
phase = sys.argv[2]

def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)

def connect(timeout=10):
    # A blocking connect: on a full listen backlog it waits for the daemon
    # to accept (a non-blocking one fails with EAGAIN at once).
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.settimeout(timeout)
    return s

class Lines:
    def __init__(self, s):
        self.s, self.buf = s, b""
    def line(self, timeout=10):
        """One reply line as JSON, None on EOF/reset, raises on timeout."""
        end = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply within %.0f s" % timeout)
            self.s.settimeout(left)
            try:
                chunk = self.s.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                return None
            if not chunk:
                return None
            self.buf += chunk
        l, self.buf = self.buf.split(b"\n", 1)
        try:
            return json.loads(l)
        except ValueError:
            fail("reply is not JSON: %r" % l[:200])

def ask(s, lines, req, what, timeout=10):
    s.sendall(req if isinstance(req, bytes) else (json.dumps(req) + "\n").encode())
    try:
        r = lines.line(timeout)
    except TimeoutError as e:
        fail("%s: %s" % (what, e))
    if r is None:
        fail("%s: the daemon closed the connection" % what)
    if not isinstance(r, dict) or "ok" not in r:
        fail("%s: reply without ok: %r" % (what, r))
    return r

def expect_error(s, lines, req, what, want_id=None):
    r = ask(s, lines, req, what)
    if r.get("ok") is not False or not isinstance(r.get("error"), str) or not r["error"]:
        fail("%s: expected ok false with an error, got %r" % (what, r))
    if want_id is not None and r.get("id") != want_id:
        fail("%s: the reply does not echo id %r: %r" % (what, want_id, r))
    print("%s -> %s" % (what, r["error"]))
    return r

def ping(s, lines, what):
    r = ask(s, lines, {"cmd": "ping", "id": what}, what)
    if r.get("ok") is not True or not isinstance(r.get("pid"), int) or r.get("id") != what:
        fail("%s: bad ping reply %r" % (what, r))

def status_latency(what, limit=5.0):
    t = time.monotonic()
    s = connect(limit + 5)
    lines = Lines(s)
    r = ask(s, lines, {"cmd": "status", "disk": "d"}, what, timeout=limit + 5)
    dt = time.monotonic() - t
    s.close()
    if r.get("ok") is not True:
        fail("%s: status failed: %r" % (what, r))
    if dt > limit:
        fail("%s: status took %.1f s (limit %.0f s)" % (what, dt, limit))
    return dt, r["disks"][0]

def flooder():
    """A client that floods pings and never reads its replies: it writes
    what its socket takes at once (far more requests than the replies the
    daemon can queue to it) and returns, leaving the daemon to choke."""
    s = connect()
    s.setblocking(False)
    data = b'{"cmd":"ping"}\n' * 20000
    try:
        s.send(data)
    except (BlockingIOError, BrokenPipeError, ConnectionResetError):
        pass
    return s

if phase == "protocol":
    s = connect(); L = Lines(s)
    expect_error(s, L, b"not json\n", "garbage")
    expect_error(s, L, b"[1, 2, 3]\n", "a JSON array")
    expect_error(s, L, b'"status"\n', "a JSON string")
    expect_error(s, L, b"42\n", "a JSON number")
    expect_error(s, L, b'{"id": 5}\n', "no cmd", want_id=5)
    expect_error(s, L, b'{"cmd": 7, "id": "x"}\n', "cmd not a string", want_id="x")
    expect_error(s, L, b'{"cmd": "frobnicate", "id": 7}\n', "unknown cmd", want_id=7)
    expect_error(s, L, b'{"cmd": "status", "disk": "nosuch", "id": [1]}\n', "unknown disk", want_id=[1])
    expect_error(s, L, b'{"cmd": "stream", "disk": "d", "action": "explode"}\n', "unknown stream action")
    expect_error(s, L, b'{"cmd": "stream", "disk": "d", "rate": -5, "action": "rate"}\n', "negative rate")
    expect_error(s, L, b'{"cmd": "stream", "disk": "d", "rate": "fast", "action": "rate"}\n', "rate not a number")
    ping(s, L, "ping after the errors")
    # Several requests in one write, answered in order.
    s.sendall(b'{"cmd":"ping","id":1}\n{"cmd":"ping","id":2}\nnot json\n{"cmd":"ping","id":3}\n')
    ids = [L.line().get("id") for _ in range(4)]
    if ids != [1, 2, None, 3]:
        fail("pipelined requests: replies' ids %r (expected [1, 2, None, 3])" % ids)
    # A 1 MiB line without a newline, then the newline.
    s.sendall(b"x" * (1 << 20))
    s.sendall(b"\n")
    r = L.line()
    if r is None or r.get("ok") is not False or "long" not in r.get("error", ""):
        fail("1 MiB line: expected one error about its length, got %r" % r)
    print("1 MiB line -> %s" % r["error"])
    ping(s, L, "ping after the long line")   # (a second error reply would show up here)
    # A long line that is valid JSON: same treatment.
    s.sendall(b'{"cmd":"ping","pad":"' + b"y" * 200000 + b'"}\n')
    r = L.line()
    if r is None or r.get("ok") is not False:
        fail("200 KB JSON line: expected an error, got %r" % r)
    ping(s, L, "ping after the long JSON line")
    s.close()
    # Half requests, then gone.
    for i in range(20):
        h = connect()
        h.sendall(b'{"cmd": "sta')
        if i % 2:
            h.shutdown(socket.SHUT_WR)
        h.close()
    # Half a request, then the rest in a second write.
    s = connect(); L = Lines(s)
    s.sendall(b'{"cmd": "pi'); time.sleep(0.2); s.sendall(b'ng", "id": "split"}\n')
    r = L.line()
    if not r or r.get("ok") is not True or r.get("id") != "split":
        fail("a request split over two writes: %r" % r)
    s.close()
    print("protocol: ok")

elif phase == "many":
    socks, refused = [], 0
    for i in range(70):
        try:
            socks.append(connect(10))
        except OSError as e:
            refused += 1
    served = errors = closed = 0
    for s in socks:
        try:
            s.sendall(b'{"cmd":"ping"}\n')
        except OSError:
            pass
    for s in socks:
        L = Lines(s)
        try:
            r = L.line(10)
        except TimeoutError:
            fail("one of 70 concurrent clients got no answer within 10 s (neither served nor refused)")
        except OSError:
            r = None
        if r is None:
            closed += 1
        elif r.get("ok") is True:
            served += 1
        elif r.get("ok") is False and r.get("error"):
            errors += 1
        else:
            fail("70 clients: odd reply %r" % r)
    print("70 clients: %d served, %d error replies, %d closed, %d refused" % (served, errors, closed, refused))
    if served > 64:
        fail("%d clients served at once (the limit is 64)" % served)
    if served < 50:
        fail("only %d of 70 concurrent clients served (the limit is 64)" % served)
    for s in socks:
        s.close()
    time.sleep(0.5)
    # The slots are free again.
    more = [connect() for _ in range(60)]
    for i, s in enumerate(more):
        ping(s, Lines(s), "client %d after the 70" % i)
    for s in more:
        s.close()

elif phase == "stall":
    # A subscriber that never reads: held open for the rest of this phase.
    sub = connect()
    sub.sendall(b'{"cmd":"events"}\n')
    worst = 0.0
    for rnd in range(3):
        fls = [flooder() for _ in range(2)]
        for i in range(5):
            dt, d = status_latency("status during flood %d/%d" % (rnd, i))
            worst = max(worst, dt)
            time.sleep(0.1)
        for f in fls:
            f.close()
    if d["stream"]["state"] != "running":
        fail("the stream is %s during the stall phase (expected running)" % d["stream"]["state"])
    print("stall: worst status latency %.2f s with a flooding client and a non-reading subscriber" % worst)
    sub.close()

elif phase == "hangup":
    # Subscribers that hang up while the control thread is stuck sending
    # to flooding clients: on its next wake-up it has both pending events
    # and their hang-ups.
    for rnd in range(4):
        subs = []
        for i in range(8):
            s = connect(); L = Lines(s)
            r = ask(s, L, {"cmd": "events"}, "subscribe")
            if r.get("ok") is not True:
                fail("events subscription refused: %r" % r)
            subs.append(s)
        fls = [flooder() for _ in range(2)]
        time.sleep(0.3)
        for s in subs:
            s.close()
        time.sleep(2)
        for f in fls:
            f.close()
        dt, d = status_latency("status after hang-up round %d" % rnd, limit=10)
    print("hangup: ok, last status in %.2f s" % dt)

else:
    fail("unknown phase " + phase)
EOF
ctl_phase () { local out rc=0; out=$(timeout 120 python3 "$T/ctl.py" "$csock" "$1" 2>&1) || rc=$?
  echo "$out"; [ $rc -eq 0 ] || { daemon_up "during phase $1"; fail "phase $1: $(echo "$out" | grep -m1 FAIL || echo "$out" | tail -3)"; }; }

# `corfs events` follows the stream from here on.
"$CORFS" events --state "$st" > "$T/events.out" 2> "$T/events.err" & epid=$!
cleanup_fn kill_pid $epid

ctl_phase protocol; daemon_up "after the protocol phase"
ctl_phase many; daemon_up "after 70 concurrent clients"

# A slow stream produces events for the rest.
"$CORFS" stream --state "$st" d --rate 12M || fail "corfs stream --rate 12M failed"
"$CORFS" stream --state "$st" d || fail "corfs stream (a start on a running stream: a no-op) failed"
sleep 1
ctl_phase stall; daemon_up "after the stall phase"
ctl_phase hangup; daemon_up "after the hang-up phase"
case $(jfield .stream.state) in running|complete) ;; *) fail "stream.state is $(jfield .stream.state) after the abuse";; esac
[ "$(jfield .stream.streamed_bytes)" -gt 0 ] || fail "nothing streamed during the abuse"

# Finish quickly; the daemon still serves everything.
"$CORFS" stream --state "$st" d --rate 0 || fail "corfs stream --rate 0 failed"
rc=0; timeout 120 "$CORFS" stream --state "$st" d --wait || rc=$?
[ $rc -eq 0 ] || fail "corfs stream --wait exited $rc"
[ "$(jfield .complete)" = true ] || fail "not complete after --wait"
"$CORFS" metrics --state "$st" | grep -q '^corfs_disk_size_bytes{disk="d"} '"$SIZE" || fail "corfs metrics after the abuse"
cmp "$mnt/d" "$img" || fail "the disk differs from the image"
daemon_up "at the end"

# `corfs events` saw the stream (it is still subscribed: give it a moment).
for _ in $(seq 30); do grep -q '"stream-complete"' "$T/events.out" && break; sleep 0.1; done
kill -0 $epid 2>/dev/null || fail "corfs events exited early: $(cat "$T/events.err")"
echo "corfs events: $(wc -l < "$T/events.out") lines; $(grep -c stream-progress "$T/events.out") stream-progress"
head -3 "$T/events.out"
grep -q '"event":"stream-progress"' "$T/events.out" || fail "corfs events printed no stream-progress line"
grep -q '"event":"stream-complete"' "$T/events.out" || fail "corfs events printed no stream-complete line"
python3 - "$T/events.out" "$SIZE" <<'EOF' || fail "corfs events output"
import json, sys
n = 0
for l in open(sys.argv[1]):
    e = json.loads(l)
    if e.get("disk") != "d" or "time" not in e:
        print("FAIL: event without disk d/time: %r" % e); sys.exit(1)
    if e["event"] == "stream-complete" and (e.get("done") != int(sys.argv[2]) or e.get("total") != int(sys.argv[2])):
        print("FAIL: stream-complete with done/total %r/%r" % (e.get("done"), e.get("total"))); sys.exit(1)
    n += 1
EOF
kill_pid $epid

corfs_unmount "$mnt" || fail "corfs unmount failed"
echo OK
