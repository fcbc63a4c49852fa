/* libFuzzer harness: the qcow2 reader (src/format), over an image held in
 * memory: the header and its extensions, the L1 table, L2 entries
 * (standard and extended), compressed clusters (zlib and zstd).  The
 * input is the image file.  Checked on every input: open returns 0 or -1
 * with an errno; after a successful open, the map of the first 8 MiB of
 * the virtual disk covers it in order without gaps, the zero extents lie
 * inside it sorted, a read returns 0 or -1 (EIO, with the fault kept for
 * status), and what the zero extents promise reads as zeros.  Everything
 * is freed (leaks are reported). */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "format/format.h"

#define CHECK(cond) \
  do { if (!(cond)) { fprintf (stderr, "fuzz-qcow2: check failed: %s\n", #cond); \
                      abort (); } } while (0)

#define WINDOW (8ULL << 20)
#define READ_MAX (1ULL << 20)

static void
check_map (struct format *f, uint64_t len)
{
  struct format_map *m;
  size_t n;
  uint64_t at = 0;
  int err = 0;

  if (format_map (f, 0, len, 0, &m, &n, &err) == -1) {
    CHECK (err != 0);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    CHECK (m[i].offset == at && m[i].length > 0);
    at += m[i].length;
  }
  CHECK (at == len);
  free (m);
}

static void
check_read (struct format *f, uint64_t len)
{
  struct remote_extent *v;
  size_t n;
  uint8_t *buf;
  uint64_t count = len < READ_MAX ? len : READ_MAX;
  int err = 0;
  char last[512];

  if (format_zero_extents (f, 0, len, 0, &v, &n, &err) == -1) {
    CHECK (err != 0);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    CHECK (v[i].length > 0 && v[i].offset + v[i].length <= len);
    CHECK (i == 0 || v[i].offset > v[i - 1].offset + v[i - 1].length);
  }
  buf = malloc (count ? count : 1);
  CHECK (buf != NULL);
  if (format_pread (f, buf, count, 0, 0, &err) == -1) {
    CHECK (err == EIO || err == ENOMEM);
    format_last_error (f, last, sizeof last);
    CHECK (err == ENOMEM || strncmp (last, "qcow2 image fuzz: ", 18) == 0);
  }
  else {
    for (size_t i = 0; i < n && v[i].offset < count; i++) {
      uint64_t end = v[i].offset + v[i].length;
      CHECK (is_zero (buf + v[i].offset, (end < count ? end : count) - v[i].offset));
    }
  }
  free (buf);
  free (v);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct format_config cfg = { .kind = FORMAT_QCOW2, .l2_cache_bytes = 1 << 20 };
  struct format *f;
  int64_t vsize;
  uint64_t len;
  int err = 0;

  if (format_open_memory (data, size, "fuzz", &cfg, &f, &err) == -1) {
    CHECK (err == EINVAL || err == ENOTSUP || err == ENOMEM || err == EIO);
    return 0;
  }
  vsize = format_size (f, 0, &err);
  CHECK (vsize >= 0);
  len = (uint64_t) vsize < WINDOW ? (uint64_t) vsize : WINDOW;
  check_map (f, len);
  check_read (f, len);
  format_close (f);
  return 0;
}
