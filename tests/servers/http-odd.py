#!/usr/bin/env python3
"""A small HTTP server for corfs tests of hostile or odd replies: serves one
file at /disk.img (HEAD, single Range, strict If-Match) and a redirect to
it whose body never ends.

Usage: http-odd.py --file IMG --port-file F [--etag ETAG] [--hop-delay S]

  Binds 127.0.0.1 on a free port, writes the port to --port-file once
  listening.  --etag: the ETag sent (default "size-mtime" in hex, quoted);
  If-Match is compared with it exactly (412 otherwise, as a strict server
  does).  Last-Modified is the file's mtime.

  /redirect.img  302 to /disk.img with Content-Length 1 GiB, and a body
                 sent 64 KiB every 0.2 s until the client closes (the
                 bytes sent are counted)
  /hop/N         after --hop-delay seconds, 302 to /hop/N-1 (/hop/0: to
                 /disk.img): a chain of slow redirects
  /_control?retry_after=V   from now on every request on /disk.img gets
                 503 with "Retry-After: V" (V empty: back to normal)
  /_stats        JSON: requests, redirect_body_bytes, injected (requests
                 that carried an X-Injected header), precondition_failed
"""
import argparse
import email.utils
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

lock = threading.Lock()
state = {"retry_after": None}
stats = {"requests": 0, "redirect_body_bytes": 0, "injected": 0,
         "precondition_failed": 0}
args = None


def etag_of(st):
    return args.etag if args.etag else '"%x-%x"' % (st.st_size, st.st_mtime_ns)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "corfs-test-odd/1"

    def log_message(self, fmt, *a):
        sys.stderr.write("%s %s\n" % (time.strftime("%H:%M:%S"), fmt % a))

    def simple(self, code, body=b"", extra=()):
        self.send_response(code)
        for k, v in extra:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        self.handle_any()

    def do_GET(self):
        self.handle_any()

    def handle_any(self):
        u = urlsplit(self.path)
        if u.path == "/_control":
            q = parse_qs(u.query, keep_blank_values=True)
            with lock:
                v = q.get("retry_after", [""])[0]
                state["retry_after"] = v or None
            return self.simple(200, b"ok")
        if u.path == "/_stats":
            with lock:
                body = json.dumps(stats).encode()
            return self.simple(200, body)
        with lock:
            stats["requests"] += 1
            if "X-Injected" in self.headers:
                stats["injected"] += 1
            retry_after = state["retry_after"]
        if u.path == "/redirect.img":
            return self.endless_redirect()
        if u.path.startswith("/hop/"):
            n = int(u.path[5:])
            time.sleep(args.hop_delay)
            to = "/hop/%d" % (n - 1) if n > 0 else "/disk.img"
            return self.simple(302, b"", [("Location", to)])
        if u.path != "/disk.img":
            return self.simple(404)
        if retry_after is not None:
            return self.simple(503, b"busy", [("Retry-After", retry_after)])
        st = os.stat(args.file)
        etag = etag_of(st)
        common = [("ETag", etag), ("Accept-Ranges", "bytes"),
                  ("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))]
        im = self.headers.get("If-Match")
        if im is not None and im != "*" and im != etag:
            with lock:
                stats["precondition_failed"] += 1
            return self.simple(412, b"precondition failed")
        rng = self.headers.get("Range")
        if self.command == "HEAD" or not rng:
            self.send_response(200)
            for k, v in common:
                self.send_header(k, v)
            self.send_header("Content-Length", str(st.st_size))
            self.end_headers()
            if self.command == "GET":
                with open(args.file, "rb") as f:
                    self.wfile.write(f.read())
            return
        a, b = rng.split("=", 1)[1].split("-")
        a, b = int(a), min(int(b), st.st_size - 1)
        with open(args.file, "rb") as f:
            f.seek(a)
            data = f.read(b - a + 1)
        self.send_response(206)
        for k, v in common:
            self.send_header(k, v)
        self.send_header("Content-Range", "bytes %d-%d/%d" % (a, b, st.st_size))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def endless_redirect(self):
        self.send_response(302)
        self.send_header("Location", "/disk.img")
        self.send_header("Content-Length", str(1 << 30))
        self.end_headers()
        if self.command == "HEAD":
            return
        chunk = b"r" * 65536
        try:
            for _ in range(16384):          # bounded: 1 GiB, about an hour
                self.wfile.write(chunk)
                self.wfile.flush()
                with lock:
                    stats["redirect_body_bytes"] += len(chunk)
                time.sleep(0.2)
        except OSError:
            pass
        self.close_connection = True


def main():
    global args
    p = argparse.ArgumentParser()
    p.add_argument("--file", required=True)
    p.add_argument("--port-file", required=True)
    p.add_argument("--etag")
    p.add_argument("--hop-delay", type=float, default=0.0)
    args = p.parse_args()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    with open(args.port_file + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    os.rename(args.port_file + ".tmp", args.port_file)
    srv.serve_forever()


if __name__ == "__main__":
    main()
