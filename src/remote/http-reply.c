/* corfs: HTTP reply header lines (see http-reply.h).
 *
 * Notes on the thread model: no shared state; each call works on its
 * caller's struct xfer, from any thread. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "remote/http-reply.h"
#include "remote/remote-internal.h"

bool
rhttp_value_ok (const char *s, size_t n)
{
  for (size_t i = 0; i < n; i++)
    if (((unsigned char) s[i] < 0x20 && s[i] != '\t') || s[i] == 0x7f)
      return false;
  return true;
}

/* Copy the value [v, v + n) into a field of size cap.  A value that does
 * not fit, or holds a control character other than tab (a CR would be
 * sent back in If-Match: a header injected into our request), is taken
 * as absent: "" (a cut ETag never matches the server's own). */
static void
set_field (char *field, size_t cap, const char *v, size_t n)
{
  field[0] = '\0';
  if (n >= cap || !rhttp_value_ok (v, n))
    return;
  memcpy (field, v, n);
  field[n] = '\0';
}

/* A whole number in the value [v, v + n): decimal digits, then only
 * blanks, of any length, saturated at max.  -1 when it is not one. */
static long long
value_num (const char *v, size_t n, long long max)
{
  const char *end = v + n;
  long long r = 0;

  if (n == 0 || *v < '0' || *v > '9')
    return -1;
  for (; v < end && *v >= '0' && *v <= '9'; v++)
    r = r > (max - (*v - '0')) / 10 ? max : r * 10 + (*v - '0');
  while (v < end && (*v == ' ' || *v == '\t'))
    v++;
  return v < end ? -1 : r;
}

int64_t
rhttp_header_size (const char *s, size_t n)
{
  const char *end = s + n;
  uint64_t v = 0;

  if (n == 0 || *s < '0' || *s > '9')
    return -1;
  for (; s < end && *s >= '0' && *s <= '9'; s++) {
    v = v * 10 + (*s - '0');
    if (v > REMOTE_MAX_SIZE)
      return -1;
  }
  while (s < end && (*s == ' ' || *s == '\t'))
    s++;
  return s < end ? -1 : (int64_t) v;
}

int64_t
rhttp_range_total (const char *content_range)
{
  const char *slash = strrchr (content_range, '/');
  return slash ? rhttp_header_size (slash + 1, strlen (slash + 1)) : -1;
}

/* Does [v, v + n) contain word, in any case? */
static bool
has_word (const char *v, size_t n, const char *word)
{
  size_t wn = strlen (word);

  for (size_t i = 0; i + wn <= n; i++)
    if (!strncasecmp (v + i, word, wn))
      return true;
  return false;
}

static bool
name_is (const char *name, size_t n, const char *want)
{
  return n == strlen (want) && !strncasecmp (name, want, n);
}

void
rhttp_reply_header (struct xfer *x, const char *data, size_t len)
{
  const char *colon, *v, *end = data + len;

  if (len >= 5 && !strncmp (data, "HTTP/", 5)) {
    const char *sp = memchr (data, ' ', len), *code_end;
    /* The three digits of the status code, ended by a blank or the line. */
    x->status = 0;
    if (sp) {
      code_end = sp + 1;
      while (code_end < end && *code_end >= '0' && *code_end <= '9')
        code_end++;
      if (code_end - sp - 1 == 3)
        x->status = (long) value_num (sp + 1, 3, 999);
    }
    x->etag[0] = x->last_modified[0] = x->content_range[0] = '\0';
    x->content_length = -1;
    x->accept_ranges = false;
    x->retry_after = 0;
    return;
  }
  /* Only the line's own CRLF is trimmed: a CR or LF inside it makes the
   * value absent (set_field), never cut, since a cut value would be
   * pinned and sent back as if it were the server's. */
  while (end > data && (end[-1] == '\n' || end[-1] == '\r'))
    end--;
  if (!(colon = memchr (data, ':', end - data)))
    return;
  for (v = colon + 1; v < end && (*v == ' ' || *v == '\t'); v++)
    ;
  while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
    end--;
  size_t nn = colon - data, vn = end - v;
  if (name_is (data, nn, "ETag"))
    set_field (x->etag, sizeof x->etag, v, vn);
  else if (name_is (data, nn, "Last-Modified"))
    set_field (x->last_modified, sizeof x->last_modified, v, vn);
  else if (name_is (data, nn, "Content-Range"))
    set_field (x->content_range, sizeof x->content_range, v, vn);
  else if (name_is (data, nn, "Content-Length"))
    x->content_length = rhttp_header_size (v, vn);   /* -1: unusable, probe instead */
  else if (name_is (data, nn, "Accept-Ranges"))
    x->accept_ranges = has_word (v, vn, "bytes");
  else if (name_is (data, nn, "Retry-After")) {
    /* Seconds form only (an HTTP date is ignored: 0); the caller's
     * deadline bounds the wait anyway, the cap keeps the product with
     * NS_PER_SEC in range. */
    long long s = value_num (v, vn, RHTTP_RETRY_AFTER_MAX);
    x->retry_after = s < 0 ? 0 : (long) s;
  }
}
