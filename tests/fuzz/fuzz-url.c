#include <ctype.h>
/* libFuzzer harness: url_redact (src/common/util.c), which every parent
 * URL passes through before it reaches the index, the log and status.
 * The semantics are README's "URL redaction": the userinfo goes, the value
 * of each query parameter named as a credential becomes REDACTED, all else
 * stays as given.  Checked on every input: a copy is returned, at most
 * REDACTED's length longer per parameter.  Checked when the first "://"
 * comes before any '?' or '#' (see below): no userinfo is left in the
 * authority (no '@' between "://" and the first '/', '?' or '#'); the
 * scheme, the fragment and the number of query parameters are kept; every
 * parameter named like a credential has the value REDACTED; and redacting
 * again changes nothing. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/util.h"

#define REDACTED "REDACTED"

#define CHECK(cond, url, red) \
  do { if (!(cond)) { fprintf (stderr, "fuzz-url: check failed: %s\n  url: %s\n  redacted: %s\n", \
                               #cond, url, red); abort (); } } while (0)

static bool
authority_has_at (const char *u)
{
  const char *auth = strstr (u, "://");

  if (!auth)
    return false;
  auth += 3;
  return memchr (auth, '@', strcspn (auth, "/?#")) != NULL;
}

/* The query of u (after its first '?', when no '#' comes before it), up
 * to the fragment; its length in *len.  NULL when there is none. */
static const char *
query_of (const char *u, size_t *len)
{
  const char *q = strchr (u, '?'), *frag = strchr (u, '#');

  if (!q || (frag && frag < q))
    return NULL;
  *len = strcspn (q + 1, "#");
  return q + 1;
}

static size_t
count_separators (const char *q, size_t len)
{
  size_t n = 0;

  for (size_t i = 0; i < len; i++)
    n += q[i] == '&';          /* a ';' may be inside a redacted value */
  return n;
}

/* Is the parameter name [name, name + n) one README lists as a credential?
 * A few of them, spelt plainly (no percent-encoding, no '+'), suffice. */
static bool
plain_secret_name (const char *name, size_t n)
{
  static const char *names[] = { "token", "password", "signature", "sig", "key", "secret",
    "auth", "code", NULL };      /* se, st: only in a signed URL (README) */

  if (memchr (name, '%', n) || memchr (name, '+', n))
    return false;
  if ((n >= 6 && !strncasecmp (name, "x-amz-", 6)) || (n >= 7 && !strncasecmp (name, "x-goog-", 7)))
    return true;
  for (int i = 0; names[i]; i++)
    if (n == strlen (names[i]) && !strncasecmp (name, names[i], n))
      return true;
  return false;
}

/* Every parameter NAME=VALUE with a credential's name has VALUE REDACTED. */
static bool
secrets_redacted (const char *u)
{
  size_t qlen;
  const char *q = query_of (u, &qlen), *end;

  if (!q)
    return true;
  end = q + qlen;
  while (q <= end) {
    size_t plen = strcspn (q, "&;#");
    const char *eq;
    if (q + plen > end)
      plen = end - q;
    eq = memchr (q, '=', plen);
    if (eq && plain_secret_name (q, eq - q) &&
        (q + plen - eq - 1 != strlen (REDACTED) || strncmp (eq + 1, REDACTED, strlen (REDACTED))))
      return false;
    q += plen + 1;
  }
  return true;
}

/* Is [url, sep) a URI scheme (RFC 3986: ALPHA *( ALPHA / DIGIT / "+" /
 * "-" / "." ))?  Only then does sep ("://") start an authority. */
static bool
scheme_at (const char *url, const char *sep)
{
  if (sep == url || !isalpha ((unsigned char) *url))
    return false;
  for (const char *c = url + 1; c < sep; c++)
    if (!isalnum ((unsigned char) *c) && *c != '+' && *c != '-' && *c != '.')
      return false;
  return true;
}

static void
check_kept (const char *url, const char *red)
{
  const char *s1 = strstr (url, "://"), *s2 = strstr (red, "://");
  size_t l1 = 0, l2 = 0;
  const char *q1 = query_of (url, &l1), *q2 = query_of (red, &l2);

  if (s1 && scheme_at (url, s1))
    CHECK (s2 && s1 - url == s2 - red && !strncmp (url, red, s1 - url + 3), url, red);
  CHECK ((q1 == NULL) == (q2 == NULL), url, red);
  if (q1) {
    CHECK (count_separators (q1, l1) == count_separators (q2, l2), url, red);
    CHECK (!strcmp (q1 + l1, q2 + l2), url, red);       /* the fragment */
  }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  char *url = strndup ((const char *) data, size), *red, *again;
  size_t nparams = 1;

  if (!url)
    return 0;
  for (const char *c = url; *c; c++)
    nparams += *c == '&' || *c == ';';
  red = url_redact (url);
  CHECK (red != NULL, url, "(null)");
  CHECK (strlen (red) <= strlen (url) + nparams * strlen (REDACTED), url, red);
  /* Only a "://" after a real scheme (RFC 3986) ends one; one
   * inside a query ("h/x?token=t&u=https://a@b") starts no authority
   * (url_redact once took it for one and left the query's start
   * unredacted: found by this harness). */
  const char *s = strstr (url, "://");
  if (s && scheme_at (url, s))
    CHECK (!authority_has_at (red), url, red);
  CHECK (secrets_redacted (red), url, red);
  /* A URL whose host part does not parse loses everything up to its
   * last '@' (a password holding '/', '?' or '#'), its query included:
   * only URLs with no '@' past the authority keep their shape. */
  if (!s || !scheme_at (url, s) || !strchr (s + 3 + strcspn (s + 3, "/?#"), '@'))
    check_kept (url, red);
  again = url_redact (red);
  CHECK (again && !strcmp (again, red), url, red);
  free (again);
  free (red);
  free (url);
  return 0;
}
