/* corfs: what the HTTP parent (http.c) reads from a reply's headers,
 * parsed here, apart from libcurl, so that the fuzzer
 * (tests/fuzz/fuzz-http-reply.c) can reach it.  Internal to src/remote. */
#ifndef CORFS_HTTP_REPLY_H
#define CORFS_HTTP_REPLY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One response's body buffer and interesting headers (the headers are
 * reset on every status line, since redirects pass several responses
 * through). */
struct xfer {
  char *buf;
  size_t cap, len;
  bool overflow;
  char etag[256], last_modified[128], content_range[128];
  int64_t content_length;       /* -1: absent or not a number of bytes */
  bool accept_ranges;
  long retry_after;             /* seconds (0: none), at most HTTP_RETRY_AFTER_MAX */
};

/* Retry-After is obeyed up to this many seconds (the caller's deadline
 * bounds the wait anyway). */
#define HTTP_RETRY_AFTER_MAX 3600

/* Take one header line as libcurl hands it over (len bytes, not
 * NUL-terminated, usually ending in CRLF): a status line resets x's
 * headers, a header we use is stored, anything else is ignored. */
void http_reply_header (struct xfer *x, const char *data, size_t len);

/* Parse a Content-Range value "bytes FIRST-LAST/TOTAL" (TOTAL may be "*":
 * *total is then -1).  0, or -1 when it is not of that form, LAST <
 * FIRST, a number is out of range, or LAST is not below a known TOTAL. */
int http_content_range (const char *v, uint64_t *first, uint64_t *last, int64_t *total);

#endif
