/* corfs: small helpers (see util.h). */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"

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

char *
url_redact (const char *url)
{
  char *out = strdup (url), *scheme_end, *at, *slash, *q;

  if (!out)
    return NULL;
  scheme_end = strstr (out, "://");
  if (scheme_end) {
    /* The userinfo ends at the authority's last '@' (a password may
     * hold an '@' of its own); the authority ends at '/', '?' or '#'. */
    char *auth = scheme_end + 3;
    slash = auth + strcspn (auth, "/?#");
    at = memrchr (auth, '@', slash - auth);
    if (at)
      memmove (auth, at + 1, strlen (at + 1) + 1);
  }
  /* Drop query parameters that carry secrets (presigned URLs, tokens). */
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
