/* libFuzzer harness: url_redact (src/common/util.c), which every parent
 * URL passes through before it reaches the index, the log and status.
 * Checked on every input: it returns a copy no longer than the URL; no
 * userinfo is left in the authority (no '@' between "://" and the first
 * '/', '?' or '#'); no query parameter named like a credential survives;
 * and redacting again changes nothing. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/util.h"

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

/* Does the query carry a parameter with one of these names? */
static bool
has_secret_param (const char *u)
{
  static const char *names[] = { "X-Amz-Signature", "X-Amz-Credential",
    "X-Amz-Security-Token", "token", "password", "signature", NULL };
  const char *q = strchr (u, '?');

  while (q) {
    const char *name = q + 1;
    size_t n = strcspn (name, "=&#");
    for (int i = 0; names[i]; i++)
      if (n == strlen (names[i]) && !strncasecmp (name, names[i], n) && name[n] == '=')
        return true;
    q = strchr (name, '&');
  }
  return false;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  char *url = strndup ((const char *) data, size), *red, *again;

  if (!url)
    return 0;
  red = url_redact (url);
  CHECK (red != NULL, url, "(null)");
  CHECK (strlen (red) <= strlen (url), url, red);
  CHECK (!authority_has_at (red), url, red);
  CHECK (!has_secret_param (red), url, red);
  again = url_redact (red);
  CHECK (again && !strcmp (again, red), url, red);
  free (again);
  free (red);
  free (url);
  return 0;
}
