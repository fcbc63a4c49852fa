/* libFuzzer harness: the HTTP reply headers the HTTP/S3 parent reads
 * (src/remote/http-reply.c: the status line, ETag, Last-Modified,
 * Content-Range, Content-Length, Accept-Ranges, Retry-After), fed line by
 * line as libcurl feeds them.  Checked after every line: the stored values
 * are bounded strings without line breaks, Content-Length is a size or -1,
 * Retry-After is within its cap; and every size rhttp_header_size or
 * rhttp_range_total accepts is at most REMOTE_MAX_SIZE and reads back the
 * same once printed. */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "remote/http-reply.h"
#include "remote/remote-internal.h"

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

/* A size accepted is in range and is the number printed back. */
static void
check_size (int64_t size)
{
  char again[32];

  if (size == -1)
    return;
  CHECK (size >= 0 && (uint64_t) size <= REMOTE_MAX_SIZE);
  snprintf (again, sizeof again, "%" PRId64, size);
  CHECK (rhttp_header_size (again, strlen (again)) == size);
}

/* The total of a Content-Range value: what follows its last '/'. */
static void
check_range_total (const char *v)
{
  int64_t total = rhttp_range_total (v);
  const char *slash = strrchr (v, '/');

  check_size (total);
  if (total >= 0) {
    CHECK (slash && slash[1] >= '0' && slash[1] <= '9');
    CHECK (rhttp_header_size (slash + 1, strlen (slash + 1)) == total);
  }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct xfer x;
  const char *p = (const char *) data, *end = p + size;

  memset (&x, 0, sizeof x);
  rhttp_reply_header (&x, "HTTP/1.1 206 Partial Content\r\n", 30);
  CHECK (x.status == 206);
  check_size (rhttp_header_size (p, size));    /* raw bytes, not NUL-terminated */
  while (p < end) {
    const char *nl = memchr (p, '\n', end - p);
    size_t len = nl ? (size_t) (nl - p) + 1 : (size_t) (end - p);
    char *line;

    rhttp_reply_header (&x, p, len);    /* not NUL-terminated, as from libcurl */
    check_string (x.etag, sizeof x.etag);
    check_string (x.last_modified, sizeof x.last_modified);
    check_string (x.content_range, sizeof x.content_range);
    CHECK (x.content_length >= -1);
    check_size (x.content_length);
    CHECK (x.retry_after >= 0 && x.retry_after <= RHTTP_RETRY_AFTER_MAX);
    check_range_total (x.content_range);
    if ((line = strndup (p, len))) {    /* the parser on raw text too */
      check_range_total (line);
      free (line);
    }
    p += len;
  }
  return 0;
}
