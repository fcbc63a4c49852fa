#!/usr/bin/env python3
"""A small HTTP server for corfs tests: serves one file at /disk.img with
correct Range / ETag / Content-Range / If-Match handling and HEAD, plus
faults switched on through a control URL.

Usage: http-fault.py --file IMG --port-file F [--port N] [--ignore-range]

  Binds 127.0.0.1 (port 0 = a free one), writes the port to --port-file
  once listening.  --ignore-range: a server without range support (no
  Accept-Ranges; every GET answers 200 with the whole body).

Control (GET, answers 200 "ok" / JSON):
  /_control?mode=MODE&count=N[&delay=S]
                                arm a fault for the next N requests
                                (count -1 = until reset; default 1);
                                delay: latency in seconds added before
                                every answer on the file (default 0)
      MODE = 503    503 with Retry-After: 1 (any request on the file, HEAD too)
             500    500 without Retry-After (any request on the file)
             drop   ranged GET: headers and half the body, then close
             stall  ranged GET: headers, then sleep 30 s, then close
             200    ranged GET: 200 with the whole body
             etag   ranged GET: 206 with the right bytes but another ETag
                    (If-Match ignored, like servers that do not check it)
             total  ranged GET: 206 with the right bytes and ETag but
                    another total size in Content-Range
             none   reset
  /_stats                       JSON: requests, heads, gets, faults
                                injected per mode, mode, count left, and
                                "log": the last 200 requests on the file
                                as [unix time, method, status or fault]
The file's ETag is "size-mtime_ns" in hex, recomputed on every request.
"""
import argparse
import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

STALL_SECONDS = 30

lock = threading.Lock()
state = {"mode": "none", "count": 0, "delay": 0.0}
stats = {"requests": 0, "heads": 0, "gets": 0, "ranged_gets": 0,
         "faults": {}, "log": []}
args = None


def take_fault(applies):
    """If the armed mode is in `applies`, consume one count and return it."""
    with lock:
        m = state["mode"]
        if m == "none" or m not in applies or state["count"] == 0:
            return None
        if state["count"] > 0:
            state["count"] -= 1
        stats["faults"][m] = stats["faults"].get(m, 0) + 1
        return m


def etag_of(st):
    return '"%x-%x"' % (st.st_size, st.st_mtime_ns)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "corfs-test-fault/1"

    def log_message(self, fmt, *a):
        sys.stderr.write("%s %s\n" % (time.strftime("%H:%M:%S"), fmt % a))

    def send_simple(self, code, body=b"", extra=()):
        self.send_response(code)
        for k, v in extra:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def control(self, q):
        mode = q.get("mode", ["none"])[0]
        count = int(q.get("count", ["1"])[0])
        delay = float(q.get("delay", ["0"])[0])
        if mode not in ("none", "503", "500", "drop", "stall", "200", "etag", "total"):
            self.send_simple(400, b"bad mode\n")
            return
        with lock:
            state["mode"] = mode
            state["count"] = 0 if mode == "none" else count
            state["delay"] = delay
        self.send_simple(200, b"ok\n")

    def do_HEAD(self):
        self.serve(head=True)

    def do_GET(self):
        self.serve(head=False)

    def serve(self, head):
        u = urlsplit(self.path)
        q = parse_qs(u.query)
        if u.path == "/_control":
            self.control(q)
            return
        if u.path == "/_stats":
            with lock:
                body = json.dumps(dict(stats, mode=state["mode"],
                                       count=state["count"])).encode() + b"\n"
            self.send_simple(200, body, [("Content-Type", "application/json")])
            return
        if u.path != "/disk.img":
            self.send_simple(404, b"not found\n")
            return
        with lock:
            stats["requests"] += 1
            stats["heads" if head else "gets"] += 1
            delay = state["delay"]
        if delay > 0:
            time.sleep(delay)
        fault = take_fault(("503", "500"))
        if fault:
            self.note(head, fault)
            if fault == "503":
                self.send_simple(503, b"busy\n", [("Retry-After", "1")])
            else:
                self.send_simple(500, b"internal error\n")
            return
        try:
            f = open(args.file, "rb")
        except OSError:
            self.send_simple(404, b"gone\n")
            return
        with f:
            st = os.fstat(f.fileno())
            size = st.st_size
            etag = etag_of(st)
            rng = self.headers.get("Range")
            if args.ignore_range or head or not rng:
                self.note(head, "200")
                hdrs = [("ETag", etag), ("Content-Type", "application/octet-stream")]
                if not args.ignore_range:
                    hdrs.append(("Accept-Ranges", "bytes"))
                self.send_whole(f, size, hdrs, head)
                return
            with lock:
                stats["ranged_gets"] += 1
            try:
                unit, spec = rng.split("=", 1)
                a, b = spec.split("-", 1)
                first = int(a)
                last = int(b) if b else size - 1
                if unit.strip() != "bytes" or "," in spec:
                    raise ValueError
            except ValueError:
                self.send_simple(400, b"bad range\n")
                return
            if first >= size or last < first:
                self.send_simple(416, b"", [("Content-Range", "bytes */%d" % size)])
                return
            last = min(last, size - 1)
            fault = take_fault(("drop", "stall", "200", "etag", "total"))
            if fault:
                self.note(head, fault)
            if fault == "200":
                self.send_whole(f, size, [("ETag", etag), ("Accept-Ranges", "bytes")], False)
                return
            if fault == "etag":
                etag = '"other-%x"' % int(time.time() * 1e6)
            else:
                im = self.headers.get("If-Match")
                if im and im.strip() != "*" and etag not in [t.strip() for t in im.split(",")]:
                    self.note(head, "412")
                    self.send_simple(412, b"precondition failed\n", [("ETag", etag)])
                    return
                if not fault:
                    self.note(head, "206")
            n = last - first + 1
            self.send_response(206)
            self.send_header("ETag", etag)
            self.send_header("Accept-Ranges", "bytes")
            total = size + 65536 if fault == "total" else size
            self.send_header("Content-Range", "bytes %d-%d/%d" % (first, last, total))
            self.send_header("Content-Length", str(n))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            f.seek(first)
            if fault == "stall":
                self.wfile.flush()
                time.sleep(STALL_SECONDS)
                self.close_now()
                return
            if fault == "drop":
                half = max(1, n // 2)
                self.wfile.write(f.read(half))
                self.wfile.flush()
                self.close_now()
                return
            self.copy(f, n)

    def note(self, head, what):
        with lock:
            stats["log"].append([round(time.time(), 3), "HEAD" if head else "GET", what])
            del stats["log"][:-200]

    def send_whole(self, f, size, hdrs, head):
        self.send_response(200)
        for k, v in hdrs:
            self.send_header(k, v)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if not head:
            f.seek(0)
            self.copy(f, size)

    def copy(self, f, n):
        try:
            while n > 0:
                chunk = f.read(min(n, 1 << 20))
                if not chunk:
                    break
                self.wfile.write(chunk)
                n -= len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def close_now(self):
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def main():
    global args
    p = argparse.ArgumentParser()
    p.add_argument("--file", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file", required=True)
    p.add_argument("--ignore-range", action="store_true")
    args = p.parse_args()
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.allow_reuse_address = True
    srv = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as pf:
        pf.write("%d\n" % srv.server_address[1])
    os.rename(tmp, args.port_file)
    srv.serve_forever()


if __name__ == "__main__":
    main()
