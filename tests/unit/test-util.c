/* Unit tests: block arithmetic of the engine and the common helpers. */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/iobuf.h"
#include "common/util.h"
#include "cor/cor.h"

Test (cor, block_range_aligned)
{
  uint64_t first, end;
  cor_block_range (0, 65536, 16, &first, &end);
  cr_assert_eq (first, 0);
  cr_assert_eq (end, 1);
  cor_block_range (65536, 131072, 16, &first, &end);
  cr_assert_eq (first, 1);
  cr_assert_eq (end, 3);
}

Test (cor, block_range_unaligned)
{
  uint64_t first, end;
  /* One byte at the last byte of block 0. */
  cor_block_range (65535, 1, 16, &first, &end);
  cr_assert_eq (first, 0);
  cr_assert_eq (end, 1);
  /* Two bytes straddling blocks 0 and 1. */
  cor_block_range (65535, 2, 16, &first, &end);
  cr_assert_eq (first, 0);
  cr_assert_eq (end, 2);
  /* 4 KiB blocks, odd range in the middle. */
  cor_block_range (12345, 10000, 12, &first, &end);
  cr_assert_eq (first, 3);
  cr_assert_eq (end, (12345 + 10000 - 1) / 4096 + 1);
}

Test (cor, block_range_large_offsets)
{
  uint64_t first, end;
  uint64_t off = (1ULL << 50) + 7;
  cor_block_range (off, 1 << 20, 22, &first, &end);
  cr_assert_eq (first, off >> 22);
  cr_assert_eq (end, ((off + (1 << 20) - 1) >> 22) + 1);
}

Test (util, parse_size)
{
  uint64_t v;
  cr_assert_eq (parse_size ("4096", &v), 0); cr_assert_eq (v, 4096);
  cr_assert_eq (parse_size ("64K", &v), 0); cr_assert_eq (v, 65536);
  cr_assert_eq (parse_size ("64k", &v), 0); cr_assert_eq (v, 65536);
  cr_assert_eq (parse_size ("1M", &v), 0); cr_assert_eq (v, 1 << 20);
  cr_assert_eq (parse_size ("2G", &v), 0); cr_assert_eq (v, 2ULL << 30);
  cr_assert_eq (parse_size ("4MiB", &v), 0); cr_assert_eq (v, 4 << 20);
  cr_assert_eq (parse_size ("abc", &v), -1); cr_assert_eq (errno, EINVAL);
  cr_assert_eq (parse_size ("", &v), -1);
  cr_assert_eq (parse_size ("-1", &v), -1);
  cr_assert_eq (parse_size ("3X", &v), -1);
  cr_assert_eq (parse_size ("99999999999T", &v), -1); cr_assert_eq (errno, ERANGE);
}

Test (util, parse_bool)
{
  bool b;
  cr_assert_eq (parse_bool ("true", &b), 0); cr_assert (b);
  cr_assert_eq (parse_bool ("off", &b), 0); cr_assert (!b);
  cr_assert_eq (parse_bool ("maybe", &b), -1);
}

Test (util, name_is_valid)
{
  cr_assert (name_is_valid ("vm1"));
  cr_assert (name_is_valid ("disk.img-2_a"));
  cr_assert (!name_is_valid (""));
  cr_assert (!name_is_valid ("."));
  cr_assert (!name_is_valid (".."));
  cr_assert (!name_is_valid ("a/b"));
  cr_assert (!name_is_valid ("a b"));
  cr_assert (!name_is_valid ("01234567890123456789012345678901234567890123456789012345678901234"));
}

Test (util, url_redact)
{
  char *u = url_redact ("nbd://user:secret@host:10809/export");
  cr_assert_str_eq (u, "nbd://host:10809/export");
  free (u);
  u = url_redact ("https://bucket.example/disk.img?X-Amz-Signature=abc&X-Amz-Credential=k");
  cr_assert (strstr (u, "abc") == NULL, "signature leaked: %s", u);
  free (u);
  u = url_redact ("nbd+unix:///?socket=/run/p.sock");
  cr_assert_str_eq (u, "nbd+unix:///?socket=/run/p.sock");
  free (u);
}

/* Found with the URL fuzzer's check that no '@' stays in the authority:
 * a password holding an '@' kept its tail in the "redacted" URL, and an
 * '@' in the query of a URL without a path ate its host. */
Test (util, url_redact_userinfo_at)
{
  char *u = url_redact ("https://user:p@ss@host/disk.img");
  cr_assert_str_eq (u, "https://host/disk.img");
  free (u);
  u = url_redact ("nbd://u:a@b@c@host:10809");
  cr_assert_str_eq (u, "nbd://host:10809");
  free (u);
  u = url_redact ("http://host?x=a@b");
  cr_assert_str_eq (u, "http://host?x=a@b");
  free (u);
}

/* --epoch: digits only, 1 to INT64_MAX (strtoull took " -5" as 2^64 - 5). */
Test (util, parse_epoch)
{
  uint64_t v = 0;

  cr_assert_eq (parse_epoch ("12", &v), 0);
  cr_assert_eq (v, 12);
  cr_assert_eq (parse_epoch ("9223372036854775807", &v), 0);
  cr_assert_eq (v, INT64_MAX);
  cr_assert_eq (parse_epoch ("9223372036854775808", &v), -1);
  cr_assert_eq (errno, ERANGE);
  cr_assert_eq (parse_epoch ("99999999999999999999", &v), -1);
  cr_assert_eq (parse_epoch ("0", &v), -1);
  cr_assert_eq (parse_epoch ("", &v), -1);
  cr_assert_eq (parse_epoch (" -5", &v), -1);
  cr_assert_eq (parse_epoch ("+5", &v), -1);
  cr_assert_eq (parse_epoch (" 5", &v), -1);
  cr_assert_eq (parse_epoch ("5 ", &v), -1);
  cr_assert_eq (errno, EINVAL);
}

Test (util, is_zero)
{
  char buf[8192] = { 0 };
  cr_assert (is_zero (buf, sizeof buf));
  cr_assert (is_zero (buf, 0));
  buf[8191] = 1;
  cr_assert (!is_zero (buf, sizeof buf));
  buf[8191] = 0; buf[0] = 1;
  cr_assert (!is_zero (buf, sizeof buf));
}

/* iobuf: a thread gets back the buffer it returned, big enough. */
Test (iobuf, reuse_within_a_thread)
{
  char *a = iobuf_get (1 << 20);
  cr_assert_not_null (a);
  memset (a, 0xab, 1 << 20);            /* all of it is usable */
  iobuf_put (a, 1 << 20);
  char *b = iobuf_get (4096);           /* smaller: served by the kept one */
  cr_assert_eq (b, a);
  iobuf_put (b, 4096);
  char *c = iobuf_get (3 << 20);        /* larger: a new one */
  cr_assert_neq (c, a);
  memset (c, 0xcd, 3 << 20);
  iobuf_put (c, 3 << 20);               /* kept beside a */
  char *e = iobuf_get ((3 << 20) - 100);
  cr_assert_eq (e, c);
  iobuf_put (e, (3 << 20) - 100);
  iobuf_put (NULL, 10);                 /* ignored */
}

Test (iobuf, too_big_is_not_kept)
{
  size_t big = IOBUF_KEEP_MAX + 65536;
  cr_assert_eq (iobuf_kept (), 0);
  char *a = iobuf_get (big);
  cr_assert_not_null (a);
  memset (a, 1, big);
  iobuf_put (a, big);                   /* freed, not kept */
  cr_assert_eq (iobuf_kept (), 0);
  char *b = iobuf_get (65536);
  cr_assert_not_null (b);
  iobuf_put (b, 65536);
  cr_assert_eq (iobuf_kept (), 1 << 20);  /* small requests share 1 MiB buffers */
  char *c = iobuf_get (IOBUF_KEEP_MAX);
  iobuf_put (c, IOBUF_KEEP_MAX);        /* the limit itself is kept */
  cr_assert_eq (iobuf_kept (), (1 << 20) + IOBUF_KEEP_MAX);
}

Test (iobuf, two_kept)
{
  /* Merge's compare holds two buffers at once: both come back. */
  char *a = iobuf_get (1 << 20), *b = iobuf_get (1 << 20);
  cr_assert_neq (a, b);
  iobuf_put (a, 1 << 20);
  iobuf_put (b, 1 << 20);
  cr_assert_eq (iobuf_kept (), 2 << 20);
  char *c = iobuf_get (1 << 20), *d = iobuf_get (1 << 20);
  cr_assert ((c == a && d == b) || (c == b && d == a));
  iobuf_put (c, 1 << 20);
  iobuf_put (d, 1 << 20);
  char *e = iobuf_get (2 << 20);        /* larger: replaces one of them */
  iobuf_put (e, 2 << 20);
  cr_assert_eq (iobuf_kept (), 3 << 20);
}

static void *
other_thread (void *arg)
{
  /* Another thread's kept buffer is not this one's. */
  char *mine = iobuf_get (1 << 20);
  iobuf_put (mine, 1 << 20);
  return mine == arg ? (void *) 1 : NULL;
}

Test (iobuf, per_thread)
{
  pthread_t t;
  void *same;
  char *a = iobuf_get (1 << 20);
  iobuf_put (a, 1 << 20);               /* kept by this thread */
  cr_assert_eq (pthread_create (&t, NULL, other_thread, a), 0);
  cr_assert_eq (pthread_join (t, &same), 0);
  cr_assert_null (same);
  cr_assert_eq (iobuf_get (1 << 20), a);
  iobuf_put (a, 1 << 20);
}
