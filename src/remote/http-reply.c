/* corfs: parsing an HTTP reply's headers (see http-reply.h). */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "remote/http-reply.h"

/* A decimal number of at most 18 digits (below INT64_MAX: a size no
 * parent has), nothing else; sets *end past it.  -1 if there is none. */
static int64_t
decimal (const char *s, const char **end)
{
  int64_t v = 0;
  int n = 0;

  while (isdigit ((unsigned char) s[n])) {
    if (n == 18)
      return -1;
    v = v * 10 + (s[n] - '0');
    n++;
  }
  *end = s + n;
  return n ? v : -1;
}

int
http_content_range (const char *v, uint64_t *first, uint64_t *last, int64_t *total)
{
  const char *p;
  int64_t f, l, t = -1;

  if (strncasecmp (v, "bytes ", 6) != 0)
    return -1;
  v += 6;
  while (*v == ' ')
    v++;
  if ((f = decimal (v, &p)) < 0 || *p != '-' || (l = decimal (p + 1, &p)) < 0 || l < f ||
      *p != '/')
    return -1;
  p++;
  if (*p == '*')
    p++;
  else if ((t = decimal (p, &p)) < 0 || l >= t)
    return -1;
  while (*p == ' ' || *p == '\t')
    p++;
  if (*p)
    return -1;
  *first = f;
  *last = l;
  *total = t;
  return 0;
}

void
http_reply_header (struct xfer *x, const char *data, size_t len)
{
  char line[512], *v;
  const char *end;

  if (len >= 5 && !strncmp (data, "HTTP/", 5)) {
    x->etag[0] = x->last_modified[0] = x->content_range[0] = '\0';
    x->content_length = -1;
    x->accept_ranges = false;
    x->retry_after = 0;
    return;
  }
  snprintf (line, sizeof line, "%.*s", (int) (len < sizeof line - 1 ? len : sizeof line - 1), data);
  line[strcspn (line, "\r\n")] = '\0';
  if (!(v = strchr (line, ':')))
    return;
  *v++ = '\0';
  while (*v == ' ' || *v == '\t')
    v++;
  if (!strcasecmp (line, "ETag"))
    snprintf (x->etag, sizeof x->etag, "%s", v);
  else if (!strcasecmp (line, "Last-Modified"))
    snprintf (x->last_modified, sizeof x->last_modified, "%s", v);
  else if (!strcasecmp (line, "Content-Range"))
    snprintf (x->content_range, sizeof x->content_range, "%s", v);
  else if (!strcasecmp (line, "Content-Length")) {
    int64_t n = decimal (v, &end);
    x->content_length = n >= 0 && !*end ? n : -1;
  }
  else if (!strcasecmp (line, "Accept-Ranges"))
    x->accept_ranges = strcasestr (v, "bytes") != NULL;
  else if (!strcasecmp (line, "Retry-After")) {
    /* The seconds form only (an HTTP date means: retry as usual). */
    int64_t n = decimal (v, &end);
    x->retry_after = n < 0 || *end ? 0 : n > HTTP_RETRY_AFTER_MAX ? HTTP_RETRY_AFTER_MAX : n;
  }
}
