/* corfs: small helpers (see util.h). */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"

#define REDACTED "REDACTED"

int
full_pread (int fd, void *buf, size_t count, off_t offset)
{
  while (count > 0) {
    ssize_t r = pread (fd, buf, count, offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    if (r == 0) {
      errno = EIO;
      return -1;
    }
    buf = (char *) buf + r;
    count -= r;
    offset += r;
  }
  return 0;
}

int
full_pwrite (int fd, const void *buf, size_t count, off_t offset)
{
  while (count > 0) {
    ssize_t r = pwrite (fd, buf, count, offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    buf = (const char *) buf + r;
    count -= r;
    offset += r;
  }
  return 0;
}

uint64_t
now_ns (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * NS_PER_SEC + ts.tv_nsec;
}

void
sleep_ns (uint64_t ns)
{
  struct timespec ts = { ns / NS_PER_SEC, ns % NS_PER_SEC };
  while (nanosleep (&ts, &ts) == -1 && errno == EINTR)
    ;
}

int
parse_size (const char *s, uint64_t *out)
{
  char *end;
  unsigned long long v;
  int shift = 0;

  if (!s || !isdigit ((unsigned char) *s)) {
    errno = EINVAL;
    return -1;
  }
  errno = 0;
  v = strtoull (s, &end, 10);
  if (errno)
    return -1;
  switch (*end) {
  case '\0': break;
  case 'k': case 'K': shift = 10; end++; break;
  case 'm': case 'M': shift = 20; end++; break;
  case 'g': case 'G': shift = 30; end++; break;
  case 't': case 'T': shift = 40; end++; break;
  default: errno = EINVAL; return -1;
  }
  if (*end == 'i' && shift) end++;      /* accept "64Ki" too */
  if (*end == 'B' && shift) end++;      /* and "64KB", still binary */
  if (*end != '\0') {
    errno = EINVAL;
    return -1;
  }
  if (shift && v > (UINT64_MAX >> shift)) {
    errno = ERANGE;
    return -1;
  }
  *out = (uint64_t) v << shift;
  return 0;
}

int
parse_seconds (const char *s, uint64_t max_s, uint64_t *out)
{
  char *end;
  unsigned long long v;

  /* Digits only: strtoull alone would take "-1" (as 2^64 - 1) and
   * leading blanks. */
  if (!s || !isdigit ((unsigned char) *s)) {
    errno = EINVAL;
    return -1;
  }
  errno = 0;
  v = strtoull (s, &end, 10);
  if (errno == ERANGE || (*end == '\0' && v > max_s)) {
    errno = ERANGE;
    return -1;
  }
  if (errno || *end != '\0' || v == 0) {
    errno = EINVAL;
    return -1;
  }
  *out = v;
  return 0;
}

int
parse_epoch (const char *s, uint64_t *out)
{
  uint64_t v = 0;

  if (!s || !*s) {
    errno = EINVAL;
    return -1;
  }
  /* Digits only: strtoull would also take blanks, a sign and "-1" (as
   * 2^64 - 1). */
  for (; *s; s++) {
    if (!isdigit ((unsigned char) *s)) {
      errno = EINVAL;
      return -1;
    }
    if (v > (UINT64_MAX - (*s - '0')) / 10) {
      errno = ERANGE;
      return -1;
    }
    v = v * 10 + (*s - '0');
  }
  if (v == 0 || v > INT64_MAX) {        /* JSON integers are signed */
    errno = v ? ERANGE : EINVAL;
    return -1;
  }
  *out = v;
  return 0;
}

int
parse_bool (const char *s, bool *out)
{
  if (!strcasecmp (s, "true") || !strcasecmp (s, "yes") ||
      !strcasecmp (s, "on") || !strcmp (s, "1")) {
    *out = true;
    return 0;
  }
  if (!strcasecmp (s, "false") || !strcasecmp (s, "no") ||
      !strcasecmp (s, "off") || !strcmp (s, "0")) {
    *out = false;
    return 0;
  }
  errno = EINVAL;
  return -1;
}

bool
is_zero (const void *buf, size_t count)
{
  const unsigned char *p = buf;

  /* Compare the buffer with itself shifted by one byte: the trick nbdkit's
   * is_zero uses, which lets memcmp do the work at full speed. */
  if (count == 0)
    return true;
  if (p[0] != 0)
    return false;
  return memcmp (p, p + 1, count - 1) == 0;
}

/* Query parameters whose values are credentials, by name (compared
 * without case, after percent-decoding).  The list in README.md
 * ("URL redaction") must match. */
static const char *const secret_names[] = {
  /* generic API keys, tokens and passwords */
  "key", "apikey", "api_key", "api-key", "access_key", "accesskey", "secret",
  "secret_key", "client_secret", "password", "passwd", "pass", "pwd",
  "token", "access_token", "refresh_token", "id_token", "auth", "auth_token",
  "authorization", "credential", "credentials", "session_token", "sessionid",
  "sig", "signature", "sas", "code",
  /* Azure SAS (sig above; its start and expiry change at every issue) */
  "se", "st",
  /* signed URLs of CDNs: Signature above, with Policy, Key-Pair-Id, Expires */
  "policy", "key-pair-id", "expires",
  NULL
};
/* Whole families: SigV4 and GCS query authentication (X-Amz-Signature,
 * X-Amz-Credential, X-Amz-Security-Token, X-Amz-Date, ...), all of which
 * change at every signing. */
static const char *const secret_prefixes[] = { "x-amz-", "x-goog-", NULL };

static int
hex_value (char c)
{
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Is the parameter name [name, name + len) (still percent-encoded) one
 * whose value is a secret? */
static bool
param_is_secret (const char *name, size_t len)
{
  char dec[64];
  size_t n = 0;

  for (size_t i = 0; i < len && n < sizeof dec - 1; i++) {
    int hi, lo;
    if (name[i] == '%' && i + 2 < len &&
        (hi = hex_value (name[i + 1])) >= 0 && (lo = hex_value (name[i + 2])) >= 0) {
      dec[n++] = (char) (hi << 4 | lo);
      i += 2;
    }
    else
      dec[n++] = name[i] == '+' ? ' ' : name[i];
  }
  dec[n] = '\0';
  for (size_t i = 0; secret_prefixes[i]; i++)
    if (!strncasecmp (dec, secret_prefixes[i], strlen (secret_prefixes[i])))
      return true;
  if (n == sizeof dec - 1)
    return false;               /* longer than any listed name */
  for (size_t i = 0; secret_names[i]; i++)
    if (!strcasecmp (dec, secret_names[i]))
      return true;
  return false;
}

char *
url_redact (const char *url)
{
  size_t len = strlen (url), nparams = 1;
  const char *p = url, *auth, *auth_end, *at = NULL, *q, *frag;
  char *out, *o;

  for (const char *c = url; *c; c++)
    nparams += *c == '&' || *c == ';';
  /* Each redacted value may grow to "REDACTED". */
  if (!(out = malloc (len + nparams * (sizeof REDACTED - 1) + 1)))
    return NULL;
  o = out;
  /* The authority runs from "://" to the first '/', '?' or '#'; any
   * userinfo in it (user:password@, or a token as user name) goes. */
  auth = strstr (url, "://");
  if (auth) {
    auth += 3;
    auth_end = auth + strcspn (auth, "/?#");
    for (const char *c = auth; c < auth_end; c++)
      if (*c == '@')
        at = c;
    if (at) {
      memcpy (o, url, auth - url);
      o += auth - url;
      p = at + 1;
    }
  }
  q = strchr (p, '?');
  frag = strchr (p, '#');
  if (!q || (frag && frag < q)) {
    strcpy (o, p);
    return out;
  }
  memcpy (o, p, q + 1 - p);
  o += q + 1 - p;
  p = q + 1;
  if (!frag)
    frag = url + len;
  /* Each parameter NAME[=VALUE], separated by '&' or ';'. */
  while (p < frag) {
    size_t plen = strcspn (p, "&;#"), nlen;
    const char *eq = memchr (p, '=', plen);
    if (p + plen > frag)
      plen = frag - p;
    nlen = eq ? (size_t) (eq - p) : plen;
    if (eq && param_is_secret (p, nlen)) {
      memcpy (o, p, nlen + 1);
      o += nlen + 1;
      memcpy (o, REDACTED, sizeof REDACTED - 1);
      o += sizeof REDACTED - 1;
    }
    else {
      memcpy (o, p, plen);
      o += plen;
    }
    p += plen;
    if (p < frag)
      *o++ = *p++;              /* the separator */
  }
  strcpy (o, frag);
  return out;
}

bool
name_is_valid (const char *name)
{
  size_t n = strlen (name);

  if (n == 0 || n > 64 || !strcmp (name, ".") || !strcmp (name, ".."))
    return false;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = name[i];
    if (!isalnum (c) && c != '.' && c != '_' && c != '-')
      return false;
  }
  return true;
}

char *
read_small_file (const char *path)
{
  char *buf;
  ssize_t n, total = 0;
  int fd = open (path, O_RDONLY | O_CLOEXEC);

  if (fd == -1)
    return NULL;
  buf = malloc (65537);
  if (!buf) {
    close (fd);
    return NULL;
  }
  while ((n = read (fd, buf + total, 65536 - total)) > 0)
    total += n;
  close (fd);
  if (n == -1) {
    free (buf);
    return NULL;
  }
  buf[total] = '\0';
  while (total > 0 && (buf[total - 1] == '\n' || buf[total - 1] == '\r'))
    buf[--total] = '\0';
  return buf;
}

#include <signal.h>
int
thread_create_nosig (pthread_t *t, void *(*fn) (void *), void *arg)
{
  sigset_t all, old;
  int r;

  sigfillset (&all);
  pthread_sigmask (SIG_SETMASK, &all, &old);
  r = pthread_create (t, NULL, fn, arg);
  pthread_sigmask (SIG_SETMASK, &old, NULL);
  if (r) {
    errno = r;
    return -1;
  }
  return 0;
}

void
cond_init_monotonic (pthread_cond_t *c)
{
  pthread_condattr_t ca;

  pthread_condattr_init (&ca);
  pthread_condattr_setclock (&ca, CLOCK_MONOTONIC);
  pthread_cond_init (c, &ca);
  pthread_condattr_destroy (&ca);
}
