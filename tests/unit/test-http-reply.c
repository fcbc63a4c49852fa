/* Unit tests: the HTTP reply header parser of the http backend. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "remote/http-reply.h"

static void
feed (struct xfer *x, const char *line)
{
  rhttp_reply_header (x, line, strlen (line));
}

Test (http_reply, fields)
{
  struct xfer x = { 0 };
  feed (&x, "HTTP/1.1 206 Partial Content\r\n");
  cr_assert_eq (x.status, 206);
  cr_assert_eq (x.content_length, -1);
  feed (&x, "etag: \"abc\"\r\n");
  feed (&x, "Content-Range:bytes 0-0/42 \r\n");
  feed (&x, "Content-Length: 1\r\n");
  feed (&x, "Accept-Ranges: Bytes\r\n");
  feed (&x, "Retry-After: 3\r\n");
  feed (&x, "Last-Modified: Tue, 01 Dec 2026 10:00:00 GMT\r\n");
  feed (&x, "X-ETag: \"not-this\"\r\n");
  feed (&x, "no colon here\r\n");
  cr_assert_str_eq (x.etag, "\"abc\"");
  cr_assert_str_eq (x.content_range, "bytes 0-0/42");
  cr_assert_eq (x.content_length, 1);
  cr_assert (x.accept_ranges);
  cr_assert_eq (x.retry_after, 3);
  cr_assert_str_eq (x.last_modified, "Tue, 01 Dec 2026 10:00:00 GMT");
  /* A new status line (a redirect followed) resets them. */
  feed (&x, "HTTP/2 302\r\n");
  cr_assert_eq (x.status, 302);
  cr_assert_str_eq (x.etag, "");
  cr_assert_eq (x.content_length, -1);
  cr_assert (!x.accept_ranges);
}

/* Lines longer than the 512 bytes once copied: a header after a long one
 * is still read, and a long value is not overrun (nor cut: absent). */
Test (http_reply, long_lines)
{
  struct xfer x = { 0 };
  char line[3000];

  feed (&x, "HTTP/1.1 200 OK\r\n");
  snprintf (line, sizeof line, "X-Amz-Id-2: %2900d\r\n", 7);
  feed (&x, line);
  memset (line, 'e', sizeof line);
  memcpy (line, "ETag: ", 6);
  rhttp_reply_header (&x, line, sizeof line);   /* not NUL-terminated */
  cr_assert_str_eq (x.etag, "");
  feed (&x, "Content-Length: 12345678901\r\n");
  cr_assert_eq (x.content_length, 12345678901LL);
  /* Content-Length whose value begins past byte 512 of the line. */
  snprintf (line, sizeof line, "Content-Length:%600s77\r\n", "");
  feed (&x, line);
  cr_assert_eq (x.content_length, 77);
}

/* A control character in a value (a CR would go back out in If-Match:
 * an injected header) makes the value absent; a tab is allowed. */
Test (http_reply, control_characters)
{
  struct xfer x = { 0 };

  feed (&x, "HTTP/1.1 200 OK\r\n");
  feed (&x, "ETag: \"abc\"\rX-Injected: 1\r\n");
  cr_assert_str_eq (x.etag, "");
  feed (&x, "ETag: \"a\nb\"\r\n");
  cr_assert_str_eq (x.etag, "");
  static const char nul_line[] = "ETag: \"a\0b\"\r\n";
  rhttp_reply_header (&x, nul_line, sizeof nul_line - 1);
  cr_assert_str_eq (x.etag, "");
  feed (&x, "Last-Modified: Tue,\x01 01 Dec 2026\r\n");
  cr_assert_str_eq (x.last_modified, "");
  feed (&x, "Content-Range: bytes 0-0/42\x7f\r\n");
  cr_assert_str_eq (x.content_range, "");
  feed (&x, "ETag: \"a\tb\"\r\n");
  cr_assert_str_eq (x.etag, "\"a\tb\"");
}

/* An ETag longer than the field is absent, not cut (a cut one never
 * matches the server's, so the parent looked changed for ever); one that
 * just fits is kept whole. */
Test (http_reply, etag_fits_or_absent)
{
  struct xfer x = { 0 };
  char line[400];

  feed (&x, "HTTP/1.1 200 OK\r\n");
  snprintf (line, sizeof line, "ETag: \"%0298d\"\r\n", 0);   /* 300 bytes */
  feed (&x, line);
  cr_assert_str_eq (x.etag, "");
  snprintf (line, sizeof line, "ETag: \"%0253d\"\r\n", 0);   /* 255 bytes */
  feed (&x, line);
  cr_assert_eq (strlen (x.etag), 255);
}

/* Numbers are read whole: Retry-After past 31 digits or 2^64 saturates at
 * the cap; anything else than digits is no number. */
Test (http_reply, numbers_whole)
{
  struct xfer x = { 0 };
  char line[200];

  feed (&x, "HTTP/1.1 503 Busy\r\n");
  cr_assert_eq (x.status, 503);
  feed (&x, "Retry-After: 18446744073\r\n");
  cr_assert_eq (x.retry_after, RHTTP_RETRY_AFTER_MAX);
  snprintf (line, sizeof line, "Retry-After: %060d9\r\n", 0);
  feed (&x, line);
  cr_assert_eq (x.retry_after, 9);
  feed (&x, "Retry-After: 99999999999999999999999999999999999999\r\n");
  cr_assert_eq (x.retry_after, RHTTP_RETRY_AFTER_MAX);
  feed (&x, "Retry-After: 5x\r\n");
  cr_assert_eq (x.retry_after, 0);
  feed (&x, "Retry-After: -5\r\n");
  cr_assert_eq (x.retry_after, 0);
  feed (&x, "Retry-After: Wed, 21 Oct 2026 07:28:00 GMT\r\n");
  cr_assert_eq (x.retry_after, 0);
  feed (&x, "HTTP/1.1 2060 Odd\r\n");
  cr_assert_eq (x.status, 0);
  feed (&x, "HTTP/2 206\r\n");
  cr_assert_eq (x.status, 206);
}

/* The total of a Content-Range (the parent's size on a ranged GET): -1,
 * a number past any size and trailing garbage are no size (a total of -1
 * was once returned as the parent's size, which then tripped an
 * assertion). */
Test (http_reply, range_total)
{
  cr_assert_eq (rhttp_range_total ("bytes 0-0/4194304"), 4194304);
  cr_assert_eq (rhttp_range_total ("bytes 0-0/7 "), 7);
  cr_assert_eq (rhttp_range_total ("bytes 10-19/*"), -1);
  cr_assert_eq (rhttp_range_total ("bytes 0-0/-1"), -1);
  cr_assert_eq (rhttp_range_total ("bytes 0-0/99999999999999999999"), -1);
  cr_assert_eq (rhttp_range_total ("bytes 0-1/10x"), -1);
  cr_assert_eq (rhttp_range_total ("bytes 0-1/ 10"), -1);
  cr_assert_eq (rhttp_range_total ("bytes 0-1"), -1);
  cr_assert_eq (rhttp_range_total (""), -1);
}

/* Values that are no number: a negative Content-Length is absent, a huge
 * Retry-After is capped, a negative one is none. */
Test (http_reply, bad_numbers)
{
  struct xfer x = { 0 };

  feed (&x, "HTTP/1.1 503 Slow Down\r\n");
  feed (&x, "Content-Length: -5\r\n");
  cr_assert_eq (x.content_length, -1);
  feed (&x, "Content-Length: 12x\r\n");
  cr_assert_eq (x.content_length, -1);
  feed (&x, "Retry-After: 999999999999999999\r\n");
  cr_assert_eq (x.retry_after, RHTTP_RETRY_AFTER_MAX);
  feed (&x, "Retry-After: -7\r\n");
  cr_assert_eq (x.retry_after, 0);
}

/* A bare CR inside a line makes its value absent (found by the fuzzer:
 * the rest of the line was stored, CR included, in the ETag or
 * Content-Range, which reach the index, the log and the If-Match
 * header). */
Test (http_reply, bare_cr)
{
  struct xfer x = { 0 };

  feed (&x, "HTTP/1.1 206 Partial Content\r\n");
  feed (&x, "ETag: \"a\"\rX-Injected: 1\r\n");
  cr_assert_str_eq (x.etag, "");
  feed (&x, "Content-Range: bytes 0-0/42\rjunk\n");
  cr_assert_str_eq (x.content_range, "");
  cr_assert_eq (rhttp_range_total (x.content_range), -1);
}
