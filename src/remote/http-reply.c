/* corfs: HTTP reply header lines (see http-reply.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "remote/http-reply.h"
#include "remote/remote-internal.h"

/* Copy the value [v, v + n) into a field of size cap, cut to fit. */
static void
set_field (char *field, size_t cap, const char *v, size_t n)
{
  if (n >= cap)
    n = cap - 1;
  memcpy (field, v, n);
  field[n] = '\0';
}

/* A number from the value [v, v + n) (at most 31 digits are looked at). */
static long long
value_ll (const char *v, size_t n)
{
  char tmp[32];

  set_field (tmp, sizeof tmp, v, n);
  return strtoll (tmp, NULL, 10);
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
    const char *sp = memchr (data, ' ', len);
    x->status = sp ? (long) value_ll (sp + 1, end - sp - 1) : 0;
    x->etag[0] = x->last_modified[0] = x->content_range[0] = '\0';
    x->content_length = -1;
    x->accept_ranges = false;
    x->retry_after = 0;
    return;
  }
  /* The line ends at its first CR or LF: a bare CR inside it (no valid
   * field value has one) must not reach a stored value, which goes to the
   * index, the log and an If-Match header. */
  for (const char *c = data; c < end; c++)
    if (*c == '\r' || *c == '\n') {
      end = c;
      break;
    }
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
    /* Seconds form only; the caller's deadline bounds the wait anyway,
     * the cap keeps the product with NS_PER_SEC in range. */
    long long s = value_ll (v, vn);
    x->retry_after = s < 0 ? 0 : s > RHTTP_RETRY_AFTER_MAX ? RHTTP_RETRY_AFTER_MAX : (long) s;
  }
}
