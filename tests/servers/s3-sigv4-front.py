#!/usr/bin/env python3
"""A SigV4-verifying HTTP front for s3rver (which does not check V4 signatures).

Every request must carry `Authorization: AWS4-HMAC-SHA256 Credential=KEY/DATE/
REGION/s3/aws4_request, SignedHeaders=..., Signature=...` with
x-amz-content-sha256 among the signed headers.  The front rebuilds the
request from the incoming method, raw path and query and the signed headers
only, recomputes the signature with botocore's S3SigV4Auth using the known
secret for KEY and the request's X-Amz-Date, and compares.  A missing or
wrong signature, an unknown key, a missing or wrong session token (for keys
given with one) or an unsigned x-amz-content-sha256 answer 403 with an
S3-style XML error; a good request is forwarded to s3rver without its
credentials (s3rver lets anonymous requests through), Range and If-Match
included, and s3rver's reply is streamed back as is (status, ETag,
Content-Range, Content-Length, body).

  s3-sigv4-front.py --upstream http://127.0.0.1:PORT --cred KEY:SECRET[:TOKEN]...
                    [--region R] [--port-file F] [--log F] [--pid-file F]

Listens on 127.0.0.1 on a free port, written to --port-file once listening.
The log has one line per request ("OK"/"DENY", method, path, reason; an OK
line gives the length of the session token received, token_len); for a
mismatch also the canonical request botocore computed, so what the client
signed can be compared.
"""
import argparse
import hashlib
import hmac
import http.client
import os
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

AUTH_RE = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=([^/,\s]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request\s*,\s*"
    r"SignedHeaders=([^,\s]+)\s*,\s*Signature=([0-9a-f]{64})\s*$")
HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
       "trailer", "upgrade"}
STRIP = {"authorization", "x-amz-security-token", "host"}   # not forwarded


class Denied(Exception):
    def __init__(self, code, message, detail=""):
        super().__init__(message)
        self.code, self.message, self.detail = code, message, detail


class Front(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"          # keep-alive, as libcurl expects

    def log_message(self, fmt, *args):      # no stderr chatter
        pass

    def _log(self, line):
        if self.server.log:
            with self.server.log_lock:
                self.server.log.write(line + "\n")
                self.server.log.flush()

    # ---- verification --------------------------------------------------
    def verify(self, body):
        auth = self.headers.get("Authorization")
        if not auth:
            raise Denied("AccessDenied", "no Authorization header (anonymous request)")
        m = AUTH_RE.match(auth.strip())
        if not m:
            raise Denied("AccessDenied", "Authorization is not a SigV4 header: " + auth[:80])
        key, date, region, service, signed, sig = m.groups()
        creds = self.server.creds.get(key)
        if creds is None:
            raise Denied("InvalidAccessKeyId", "unknown access key " + key)
        secret, token = creds
        if region != self.server.region or service != "s3":
            raise Denied("AuthorizationHeaderMalformed",
                         f"credential scope {region}/{service}, expected {self.server.region}/s3")
        names = signed.split(";")
        if "x-amz-content-sha256" not in names:
            raise Denied("AccessDenied", "x-amz-content-sha256 is not a signed header",
                         "SignedHeaders=" + signed)
        if "host" not in names:
            raise Denied("AccessDenied", "host is not a signed header", "SignedHeaders=" + signed)
        amz_date = self.headers.get("X-Amz-Date", "")
        if amz_date[:8] != date:
            raise Denied("AccessDenied", f"X-Amz-Date {amz_date!r} does not match scope date {date}")
        got_token = self.headers.get("X-Amz-Security-Token")
        if got_token is not None and "x-amz-security-token" not in names:
            raise Denied("AccessDenied", "x-amz-security-token sent but not signed",
                         "SignedHeaders=" + signed)
        if token is not None and got_token != token:
            raise Denied("InvalidToken", "missing or wrong x-amz-security-token")
        if token is None and got_token is not None:
            raise Denied("InvalidToken", "x-amz-security-token for a key without a session token")
        payload = self.headers.get("X-Amz-Content-SHA256", "")
        if payload != "UNSIGNED-PAYLOAD" and payload != hashlib.sha256(body).hexdigest():
            raise Denied("XAmzContentSHA256Mismatch", "x-amz-content-sha256 is not the body's hash")

        # Rebuild the request from what the client says it signed.
        hdrs = {}
        for n in names:
            vals = self.headers.get_all(n)
            if vals is None:
                raise Denied("AccessDenied", f"signed header {n} is absent", "SignedHeaders=" + signed)
            hdrs[n] = ",".join(vals)
        req = AWSRequest(method=self.command, url="http://" + hdrs["host"] + self.path,
                         headers=hdrs, data=body)
        req.context["timestamp"] = amz_date
        signer = S3SigV4Auth(Credentials(key, secret, token), "s3", region)
        creq = signer.canonical_request(req)
        want = signer.signature(signer.string_to_sign(req, creq), req)
        if not hmac.compare_digest(want, sig):
            raise Denied("SignatureDoesNotMatch",
                         "The request signature we calculated does not match the signature "
                         "you provided. Check your key and signing method.",
                         "SignedHeaders=" + signed + "\ncanonical request (botocore):\n" + creq)
        return key, signed

    # ---- replies ---------------------------------------------------------
    def deny(self, d):
        self._log(f"DENY {self.command} {self.path} {d.code}: {d.message}"
                  + ("\n  " + d.detail.replace("\n", "\n  ") if d.detail else ""))
        xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{d.code}</Code>'
               f"<Message>{escape(d.message)}</Message><Resource>{escape(self.path)}</Resource>"
               "</Error>").encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(xml)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(xml)

    def forward(self, body):
        up = urlsplit(self.server.upstream)
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
        try:
            hdrs = {k: v for k, v in self.headers.items()
                    if k.lower() not in STRIP and k.lower() not in HOP}
            hdrs["Host"] = up.netloc
            conn.request(self.command, self.path, body=body if body else None, headers=hdrs)
            r = conn.getresponse()
            self.send_response(r.status, r.reason)
            length = r.getheader("Content-Length")
            for k, v in r.getheaders():
                if k.lower() not in HOP:
                    self.send_header(k, v)
            bodyless = self.command == "HEAD" or r.status in (204, 304) or 100 <= r.status < 200
            if length is None and not bodyless:
                self.send_header("Connection", "close")     # delimit the body by closing
                self.close_connection = True
            self.end_headers()
            if not bodyless:
                while True:
                    chunk = r.read(65536)
                    if not chunk:
                        break
                    self.wfile.write(chunk)
            return r.status
        finally:
            conn.close()

    def handle_any(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n > 0 else b""
        try:
            key, signed = self.verify(body)
        except Denied as d:
            self.deny(d)
            return
        status = self.forward(body)
        token = self.headers.get("X-Amz-Security-Token")
        self._log(f"OK {self.command} {self.path} key={key} range={self.headers.get('Range')} "
                  f"if-match={self.headers.get('If-Match')} signed={signed} "
                  f"token_len={len(token) if token is not None else 0} -> {status}")

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = handle_any


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--upstream", required=True, help="s3rver's URL, http://127.0.0.1:PORT")
    ap.add_argument("--cred", action="append", required=True, help="KEY:SECRET[:TOKEN]")
    ap.add_argument("--region", default="us-east-1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("--pid-file")
    ap.add_argument("--log")
    a = ap.parse_args()

    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Front)
    srv.daemon_threads = True
    srv.upstream, srv.region = a.upstream, a.region
    srv.creds = {}
    for c in a.cred:
        parts = c.split(":", 2)
        if len(parts) < 2:
            sys.exit("--cred must be KEY:SECRET[:TOKEN]")
        srv.creds[parts[0]] = (parts[1], parts[2] if len(parts) == 3 else None)
    srv.log = open(a.log, "a") if a.log else None
    srv.log_lock = threading.Lock()
    if a.pid_file:
        with open(a.pid_file + ".tmp", "w") as f:
            f.write(f"{os.getpid()}\n")
        os.rename(a.pid_file + ".tmp", a.pid_file)
    if a.port_file:                        # written last: we are listening
        with open(a.port_file + ".tmp", "w") as f:
            f.write(f"{srv.server_address[1]}\n")
        os.rename(a.port_file + ".tmp", a.port_file)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
