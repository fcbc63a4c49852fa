/* libFuzzer harness: the HTTP reply headers the HTTP/S3 parent reads
 * (src/remote/http-reply.c: ETag, Last-Modified, Content-Range,
 * Content-Length, Accept-Ranges, Retry-After), fed line by line as libcurl
 * feeds them.  Checked after every line: the stored values are bounded
 * strings without line breaks, Content-Length is a size or -1, Retry-After
 * is within its cap; and every Content-Range accepted is consistent
 * (FIRST <= LAST < TOTAL) and reads back the same once printed. */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "remote/http-reply.h"

#define CHECK(cond) \
  do { if (!(cond)) { fprintf (stderr, "fuzz-http-reply: check failed: %s\n", #cond); \
                      abort (); } } while (0)

static void
check_string (const char *s, size_t cap)
{
  size_t n = strnlen (s, cap);
  CHECK (n < cap);
  CHECK (!memchr (s, '\r', n) && !memchr (s, '\n', n));
}

static void
check_content_range (const char *v)
{
  uint64_t first, last, f2, l2;
  int64_t total, t2;
  char again[128];

  if (http_content_range (v, &first, &last, &total) == -1)
    return;
  CHECK (first <= last);
  CHECK (total == -1 || (total >= 0 && last < (uint64_t) total));
  if (total == -1)
    snprintf (again, sizeof again, "bytes %" PRIu64 "-%" PRIu64 "/*", first, last);
  else
    snprintf (again, sizeof again, "bytes %" PRIu64 "-%" PRIu64 "/%" PRId64, first, last, total);
  CHECK (http_content_range (again, &f2, &l2, &t2) == 0);
  CHECK (f2 == first && l2 == last && t2 == total);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct xfer x;
  const char *p = (const char *) data, *end = p + size;

  memset (&x, 0, sizeof x);
  http_reply_header (&x, "HTTP/1.1 206 Partial Content\r\n", 30);
  while (p < end) {
    const char *nl = memchr (p, '\n', end - p);
    size_t len = nl ? (size_t) (nl - p) + 1 : (size_t) (end - p);
    char *line;

    http_reply_header (&x, p, len);     /* not NUL-terminated, as from libcurl */
    check_string (x.etag, sizeof x.etag);
    check_string (x.last_modified, sizeof x.last_modified);
    check_string (x.content_range, sizeof x.content_range);
    CHECK (x.content_length >= -1);
    CHECK (x.retry_after >= 0 && x.retry_after <= HTTP_RETRY_AFTER_MAX);
    check_content_range (x.content_range);
    if ((line = strndup (p, len))) {    /* the parser on raw text too */
      check_content_range (line);
      free (line);
    }
    p += len;
  }
  return 0;
}
