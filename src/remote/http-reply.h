/* corfs: the HTTP reply headers the http backend reads, parsed one line
 * at a time.  Kept apart from http.c so that the parser can be tested and
 * fuzzed without libcurl or a server. */
#ifndef CORFS_HTTP_REPLY_H
#define CORFS_HTTP_REPLY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One transfer: the body buffer and one response's interesting headers
 * (reset on every status line: a request can see several responses). */
struct xfer {
  char *buf;
  size_t cap, len;
  bool overflow;
  long status;                  /* from the last status line, 0 before one */
  char etag[256], last_modified[128], content_range[128];
  int64_t content_length;
  bool accept_ranges;
  long retry_after;
};

/* Take one raw header line (len bytes, not NUL-terminated, usually ending
 * in CRLF; it ends at its first CR or LF) into x.  A status line
 * ("HTTP/...") resets the fields; lines of any length are accepted; values
 * longer than a field are cut to it. */
void rhttp_reply_header (struct xfer *x, const char *data, size_t len);

/* Retry-After is taken up to this many seconds. */
#define RHTTP_RETRY_AFTER_MAX 3600

/* A size in a header value of n bytes (Content-Length, the total of
 * Content-Range): decimal digits only (trailing blanks allowed), at most
 * REMOTE_MAX_SIZE.  The size, or -1. */
int64_t rhttp_header_size (const char *s, size_t n);

/* The total size in a Content-Range value ("bytes A-B/TOTAL"), or -1
 * ("*", absent or not a size). */
int64_t rhttp_range_total (const char *content_range);

#endif
