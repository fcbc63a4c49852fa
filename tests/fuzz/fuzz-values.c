/* libFuzzer harness: the parsers of sizes, rates, durations (--hold,
 * connect-timeout), generations, epochs, booleans, stream modes and disk
 * names (src/common/util.c, src/daemon/config.c), each checked against a
 * plain reference written here.  The first byte picks the parser (and
 * parse_seconds' maximum); the rest is the text (up to its first NUL, as
 * from argv or a config line). */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/util.h"
#include "cor/cor.h"
#include "daemon/daemon.h"

#define CHECK(cond) \
  do { if (!(cond)) { fprintf (stderr, "fuzz-values: %s: check failed: %s\n", \
                               __func__, #cond); abort (); } } while (0)

/* Decimal digits with overflow detection; the digits end at *end. */
static int
ref_decimal (const char *s, uint64_t *v, const char **end)
{
  size_t n = strspn (s, "0123456789");

  *v = 0;
  *end = s + n;
  if (n == 0)
    return EINVAL;
  for (size_t i = 0; i < n; i++)
    if (__builtin_mul_overflow (*v, 10, v) || __builtin_add_overflow (*v, s[i] - '0', v))
      return ERANGE;
  return 0;
}

/* "64K", "64Ki", "64KB", "64KiB" (binary), "4096". 0 or the errno. */
static int
ref_size (const char *s, uint64_t *out)
{
  static const char units[] = "kmgt";
  const char *t, *u;
  uint64_t v;
  unsigned shift = 0;
  int e = ref_decimal (s, &v, &t);

  if (e)
    return e;
  if (*t && (u = strchr (units, *t | 0x20))) {
    shift = 10 * (unsigned) (u - units + 1);
    t++;
    if (*t == 'i') t++;
    if (*t == 'B') t++;
  }
  if (*t)
    return EINVAL;
  if (shift && v >> (64 - shift))
    return ERANGE;
  *out = v << shift;
  return 0;
}

static void
check_size (const char *s)
{
  uint64_t got = 0, want = 0;
  int e = ref_size (s, &want);

  errno = 0;
  int r = parse_size (s, &got);
  CHECK (r == 0 || r == -1);
  CHECK ((r == 0) == (e == 0));
  if (r == 0)
    CHECK (got == want);
  else
    CHECK (errno == EINVAL || errno == ERANGE);
}

static void
check_epoch (const char *s)
{
  uint64_t got = 0, want;
  const char *t;
  int e = ref_decimal (s, &want, &t);
  bool ok = !e && !*t && want >= 1 && want <= INT64_MAX;

  int r = parse_epoch (s, &got);
  CHECK ((r == 0) == ok);
  if (ok)
    CHECK (got == want);
  else
    CHECK (errno == EINVAL || errno == ERANGE);
}

/* Whole seconds, 1 to max ("hold", "connect-timeout"): digits only. */
static void
check_seconds (const char *s, uint64_t max)
{
  uint64_t got = 0, want;
  const char *t;
  int e = ref_decimal (s, &want, &t);
  bool ok = !e && !*t && want >= 1 && want <= max;
  int want_errno = e == ERANGE || (!e && !*t && want > max) ? ERANGE : EINVAL;

  int r = parse_seconds (s, max, &got);
  CHECK ((r == 0) == ok);
  if (ok)
    CHECK (got == want);
  else
    CHECK (errno == want_errno);
}

static void
check_bool (const char *s)
{
  static const char *yes[] = { "true", "yes", "on", NULL }, *no[] = { "false", "no", "off", NULL };
  int want = !strcmp (s, "1") ? 1 : !strcmp (s, "0") ? 0 : -1;
  bool b;

  for (int i = 0; yes[i]; i++)
    if (!strcasecmp (s, yes[i])) want = 1;
  for (int i = 0; no[i]; i++)
    if (!strcasecmp (s, no[i])) want = 0;
  if (parse_bool (s, &b) == 0)
    CHECK (want == (int) b);
  else
    CHECK (want == -1);
}

static void
check_stream_mode (const char *s)
{
  int m = parse_stream_mode (s);

  CHECK (m == -1 || m == COR_STREAM_ON || m == COR_STREAM_OFF || m == COR_STREAM_PAUSED);
  CHECK ((m != -1) == (!strcmp (s, "on") || !strcmp (s, "off") || !strcmp (s, "paused")));
}

static void
check_name (const char *s)
{
  size_t n = strlen (s);
  bool want = n >= 1 && n <= 64 && strcmp (s, ".") && strcmp (s, "..") &&
    strspn (s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") == n;

  CHECK (name_is_valid (s) == want);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  char *s;

  if (size < 1)
    return 0;
  if (!(s = strndup ((const char *) data + 1, size - 1)))
    return 0;
  switch (data[0] % 6) {
  case 0: check_size (s); break;
  case 1: check_epoch (s); break;
  case 2: check_bool (s); break;
  case 3: check_stream_mode (s); break;
  case 4: check_name (s); break;
  case 5: {
    /* parse_seconds documents no overflow below 18446744073 s. */
    static const uint64_t max[] = { 1, 3600, 86400, 18446744072ULL };
    check_seconds (s, max[data[0] / 6 % 4]);
    break;
  }
  }
  free (s);
  return 0;
}
