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

/* URL redaction (url_redact; README.md "URL redaction" lists the same
 * rules).  A query parameter's name is percent-decoded and cut into
 * words at '-', '_', '.', ' ' and at camelCase and letter/digit
 * boundaries ("x-api-key", "accessToken", "q-signature").  Its value is a
 * secret when one of the words is below (without case), when a word ends
 * in one of secret_suffixes ("apitoken", "clientsecret"), when the whole
 * name is in secret_exact, or when the name starts with one of
 * secret_prefixes. */
static const char *const secret_words[] = {
  "token", "secret", "password", "passwd", "pwd", "pass", "passphrase",
  "key", "apikey", "accesskey", "secretkey", "privatekey", "signingkey",
  "sig", "signature", "credential", "credentials", "auth", "authorization",
  "sas", "session", "sessionid", "jwt", "bearer",
  NULL
};
static const char *const secret_suffixes[] = {
  "token", "secret", "password", "passwd", "signature", NULL
};
/* Names too generic to match as words ("country_code"): whole names only.
 * ?code= is, among others, a function key of some cloud HTTP triggers. */
static const char *const secret_exact[] = { "code", NULL };
/* Whole families: SigV4 and GCS query authentication (X-Amz-Signature,
 * X-Amz-Credential, X-Amz-Security-Token, X-Amz-Date, ...), all of which
 * change at every signing. */
static const char *const secret_prefixes[] = { "x-amz-", "x-goog-", NULL };
/* The validity window and policy of a signed URL (Azure SAS st, se and
 * its user-delegation key's skt, ske, skoid, sktid; signed-CDN Expires
 * and Policy): they change at every signing, so they are redacted, but
 * only in a URL that carries a signature ("sig", "Signature", any name
 * with the word sig or signature), because as plain names they are
 * harmless. */
static const char *const signed_window[] = {
  "st", "se", "skt", "ske", "skoid", "sktid", "expires", "policy", NULL
};

static int
hex_value (char c)
{
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Percent-decode the name [name, name + len) into dec (of size cap).
 * false when it does not fit. */
static bool
decode_name (const char *name, size_t len, char *dec, size_t cap)
{
  size_t n = 0;

  for (size_t i = 0; i < len; i++) {
    int hi, lo;
    if (n + 1 >= cap)
      return false;
    if (name[i] == '%' && i + 2 < len &&
        (hi = hex_value (name[i + 1])) >= 0 && (lo = hex_value (name[i + 2])) >= 0) {
      dec[n++] = (char) (hi << 4 | lo);
      i += 2;
    }
    else
      dec[n++] = name[i] == '+' ? ' ' : name[i];
  }
  dec[n] = '\0';
  return true;
}

static bool
in_list (const char *const *list, const char *s, size_t n)
{
  for (size_t i = 0; list[i]; i++)
    if (strlen (list[i]) == n && !strncasecmp (s, list[i], n))
      return true;
  return false;
}

static bool
ends_with_listed (const char *const *list, const char *s, size_t n)
{
  for (size_t i = 0; list[i]; i++) {
    size_t ln = strlen (list[i]);
    if (ln <= n && !strncasecmp (s + n - ln, list[i], ln))
      return true;
  }
  return false;
}

/* Does a word of the decoded name dec match: in words, or (if suffixes)
 * ending in one of suffixes? */
static bool
has_word (const char *dec, const char *const *words, const char *const *suffixes)
{
  const char *w = dec;

  while (*w) {
    const char *e = w;
    unsigned char c;
    if (strchr ("-_. ", *w)) {
      w++;
      continue;
    }
    /* A word: up to a separator, a lower-to-upper step (accessToken), an
     * upper followed by upper-lower (APIKey: API|Key), or a letter/digit
     * step. */
    for (e = w + 1; (c = *e) && !strchr ("-_. ", c); e++) {
      unsigned char p = e[-1];
      if ((islower (p) && isupper (c)) ||
          (isupper (p) && isupper (c) && islower ((unsigned char) e[1])) ||
          (!!isdigit (p) != !!isdigit (c)))
        break;
    }
    if (in_list (words, w, e - w) || (suffixes && ends_with_listed (suffixes, w, e - w)))
      return true;
    w = e;
  }
  return false;
}

#define NAME_MAX_DECODED 256

/* Is the parameter name [name, name + len) (still percent-encoded) one
 * whose value is a secret?  signed: the URL carries a signature. */
static bool
param_is_secret (const char *name, size_t len, bool is_signed)
{
  char dec[NAME_MAX_DECODED];

  if (!decode_name (name, len, dec, sizeof dec))
    return true;                /* an absurd name: on the safe side */
  for (size_t i = 0; secret_prefixes[i]; i++)
    if (!strncasecmp (dec, secret_prefixes[i], strlen (secret_prefixes[i])))
      return true;
  /* The whole name first, in any case ("toKen", "PassWord"), then its
   * words ("accessToken", "x-api-key"). */
  if (in_list (secret_exact, dec, strlen (dec)) || in_list (secret_words, dec, strlen (dec)) ||
      has_word (dec, secret_words, secret_suffixes))
    return true;
  return is_signed && in_list (signed_window, dec, strlen (dec));
}

/* Does the query [p, end) carry a signature parameter? */
static bool
query_is_signed (const char *p, const char *end)
{
  static const char *const sig_words[] = { "sig", "signature", NULL };
  char dec[NAME_MAX_DECODED];

  while (p < end) {
    size_t plen = strcspn (p, "&;#");
    const char *eq;
    if (p + plen > end)
      plen = end - p;
    eq = memchr (p, '=', plen);
    if (eq && decode_name (p, eq - p, dec, sizeof dec) && has_word (dec, sig_words, NULL))
      return true;
    p += plen + 1;
  }
  return false;
}

/* Does the authority [a, a + n) read as host[:port] or [v6][:port]? */
static bool
authority_parses (const char *a, size_t n)
{
  const char *end = a + n, *colon;

  if (n && *a == '[') {
    const char *rb = memchr (a, ']', n);
    if (!rb)
      return false;
    colon = rb + 1;
    if (colon == end)
      return true;
    if (*colon != ':')
      return false;
  }
  else if (!(colon = memchr (a, ':', n)))
    return true;
  for (const char *c = colon + 1; c < end; c++)
    if (!isdigit ((unsigned char) *c))
      return false;
  return true;
}

/* Where the host begins: after the userinfo if there is one.  An '@'
 * inside the authority (from "://" to the first '/', '?' or '#') ends
 * the userinfo; when the authority does not parse as host[:port] (a
 * password holding '/', '?' or '#': "u:pa/ss@host"), everything up to
 * the last '@' of the URL is taken as userinfo, which may take more than
 * the userinfo of a URL that is broken anyway but never leaves a
 * password.  NULL: no userinfo. */
static const char *
userinfo_end (const char *auth)
{
  const char *auth_end = auth + strcspn (auth, "/?#"), *at = NULL;

  for (const char *c = auth; c < auth_end; c++)
    if (*c == '@')
      at = c;
  /* What follows the userinfo must read as a host: if not, a password
   * held '/', '?' or '#', and everything up to the URL's last '@' goes
   * (which also makes a second redaction change nothing). */
  if (at ? authority_parses (at + 1, auth_end - at - 1) : authority_parses (auth, auth_end - auth))
    return at;
  return strrchr (auth, '@');
}

/* Is [s, s + n) a URI scheme (RFC 3986, section 3.1)? */
static bool
is_scheme (const char *s, size_t n)
{
  if (n == 0 || !isalpha ((unsigned char) s[0]))
    return false;
  for (size_t i = 1; i < n; i++)
    if (!isalnum ((unsigned char) s[i]) && s[i] != '+' && s[i] != '-' && s[i] != '.')
      return false;
  return true;
}

char *
url_redact (const char *url)
{
  size_t len = strlen (url), nparams = 1;
  const char *p = url, *auth, *at = NULL, *q, *frag;
  bool is_signed;
  char *out, *o;

  for (const char *c = url; *c; c++)
    nparams += *c == '&' || *c == ';';
  /* Each redacted value may grow to "REDACTED". */
  if (!(out = malloc (len + nparams * (sizeof REDACTED - 1) + 1)))
    return NULL;
  o = out;
  /* Any userinfo (user:password@, or a token as user name) goes. */
  /* What comes before the first "://" is a scheme only if it is one
   * (RFC 3986: a letter, then letters, digits, '+', '-', '.'): in
   * "h/x?token=t&u=https://a@b" that "://" is inside the query, and
   * taking it for the authority would drop the query's start as userinfo
   * (found by the fuzzer). */
  auth = strstr (url, "://");
  if (auth && !is_scheme (url, auth - url))
    auth = NULL;
  if (auth && (at = userinfo_end (auth + 3))) {
    memcpy (o, url, auth + 3 - url);
    o += auth + 3 - url;
    p = at + 1;
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
  is_signed = query_is_signed (p, frag);
  /* Each parameter NAME[=VALUE], separated by '&' or ';'.  A secret's
   * value runs to the next '&' (or the fragment): a ';' may be part of
   * it (?password=hunter;2). */
  while (p < frag) {
    size_t plen = strcspn (p, "&;#"), nlen;
    const char *eq;
    if (p + plen > frag)
      plen = frag - p;
    eq = memchr (p, '=', plen);
    nlen = eq ? (size_t) (eq - p) : plen;
    if (eq && param_is_secret (p, nlen, is_signed)) {
      plen = strcspn (p, "&#");
      if (p + plen > frag)
        plen = frag - p;
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

char *
url_redact_legacy (const char *url)
{
  char *out = strdup (url), *scheme_end, *at, *slash, *q;

  if (!out)
    return NULL;
  scheme_end = strstr (out, "://");
  if (scheme_end) {
    char *auth = scheme_end + 3;
    slash = strchr (auth, '/');
    at = strchr (auth, '@');
    if (at && (!slash || at < slash))
      memmove (auth, at + 1, strlen (at + 1) + 1);
  }
  q = strchr (out, '?');
  if (q) {
    static const char *secret[] = { "X-Amz-Signature", "X-Amz-Credential",
      "X-Amz-Security-Token", "token", "sig", "signature", "password", NULL };
    for (size_t i = 0; secret[i]; i++) {
      if (strcasestr (q, secret[i])) {
        *q = '\0';
        break;
      }
    }
  }
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
  return read_small_file_len (path, NULL);
}

char *
read_small_file_len (const char *path, size_t *len)
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
  if (len)
    *len = total;
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

bool
thread_join_until (pthread_t t, uint64_t deadline_ns)
{
  struct timespec ts;
  uint64_t now = now_ns (), left = deadline_ns > now ? deadline_ns - now : 0;

  /* pthread_timedjoin_np takes a CLOCK_REALTIME instant. */
  clock_gettime (CLOCK_REALTIME, &ts);
  left += ts.tv_nsec;
  ts.tv_sec += left / NS_PER_SEC;
  ts.tv_nsec = left % NS_PER_SEC;
  return pthread_timedjoin_np (t, NULL, &ts) == 0;
}
