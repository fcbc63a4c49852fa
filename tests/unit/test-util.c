/* Unit tests: block arithmetic of the engine and the common helpers. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

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
