/* Unit tests: the remote wrappers' block-status cache and extent lists,
 * on a file:// parent (a sparse file in a temporary directory). */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "remote/http-reply.h"
#include "remote/remote-internal.h"

#define KiB 1024ULL
#define MiB (1024 * KiB)

static char dir[] = "/tmp/corfs-unit-remote.XXXXXX";
static char path[128], url[160];

/* 4 MiB: data at [0, 64K) and [1M, 1M+64K), holes elsewhere. */
static void
make_parent (void)
{
  char buf[64 * KiB];
  int fd;

  cr_assert_not_null (mkdtemp (dir));
  snprintf (path, sizeof path, "%s/parent.img", dir);
  snprintf (url, sizeof url, "file://%s", path);
  fd = open (path, O_RDWR | O_CREAT | O_TRUNC, 0600);
  cr_assert_geq (fd, 0);
  memset (buf, 0xab, sizeof buf);
  cr_assert_eq (pwrite (fd, buf, sizeof buf, 0), (ssize_t) sizeof buf);
  cr_assert_eq (pwrite (fd, buf, sizeof buf, MiB), (ssize_t) sizeof buf);
  cr_assert_eq (ftruncate (fd, 4 * MiB), 0);
  close (fd);
}

static void
remove_parent (void)
{
  unlink (path);
  rmdir (dir);
}

static struct remote *
open_parent (bool writable)
{
  struct remote_config cfg = { .url = url, .disk = "unit", .writable = writable,
                               .connect_timeout_ns = NS_PER_SEC,
                               .request_timeout_ns = NS_PER_SEC };
  struct remote *r;
  int err;

  cr_assert_eq (remote_open (&cfg, &r), 0);
  cr_assert_eq (remote_get_size (r, now_ns () + NS_PER_SEC, &err), (int64_t) (4 * MiB));
  return r;
}

static size_t
zeros (struct remote *r, uint64_t offset, uint64_t count, struct remote_extent **v)
{
  size_t n;
  int err;

  cr_assert_eq (remote_zero_extents (r, offset, count, now_ns () + NS_PER_SEC, v, &n, &err), 0);
  return n;
}

TestSuite (remote, .init = make_parent, .fini = remove_parent);

/* Answers for sub-ranges are clipped to the range asked, whether they
 * come from the parent or from the window kept after the first. */
Test (remote, zero_extents_clipped)
{
  struct remote *r = open_parent (false);
  struct remote_extent *v;
  size_t n;

  n = zeros (r, 0, 128 * KiB, &v);
  cr_assert_eq (n, 1);
  cr_assert_eq (v[0].offset, 64 * KiB);
  cr_assert_eq (v[0].length, 64 * KiB);
  free (v);

  n = zeros (r, 512 * KiB, 2 * MiB, &v);  /* spans the second data run */
  cr_assert_eq (n, 2);
  cr_assert_eq (v[0].offset, 512 * KiB);
  cr_assert_eq (v[0].length, 512 * KiB);
  cr_assert_eq (v[1].offset, MiB + 64 * KiB);
  cr_assert_eq (v[1].length, 2 * MiB + 512 * KiB - (MiB + 64 * KiB));
  free (v);

  n = zeros (r, MiB, 64 * KiB, &v);       /* all data */
  cr_assert_eq (n, 0);
  free (v);
  remote_close (r);
}

/* Our own write to the parent turns a hole into data: a block-status
 * answer kept from before it must not be used afterwards. */
Test (remote, zero_extents_see_our_writes)
{
  struct remote *r = open_parent (true);
  struct remote_extent *v;
  char buf[4 * KiB];
  size_t n;
  int err;

  n = zeros (r, 2 * MiB, MiB, &v);
  cr_assert_eq (n, 1);
  cr_assert_eq (v[0].length, MiB);
  free (v);

  memset (buf, 0x5a, sizeof buf);
  cr_assert_eq (remote_pwrite (r, buf, sizeof buf, 2 * MiB + 256 * KiB,
                               now_ns () + NS_PER_SEC, &err), 0);
  n = zeros (r, 2 * MiB, MiB, &v);
  cr_assert_eq (n, 2, "the write at 2.25 MiB is still reported as zeros");
  cr_assert_eq (v[0].offset, 2 * MiB);
  cr_assert_eq (v[0].length, 256 * KiB);
  cr_assert_eq (v[1].offset, 2 * MiB + 260 * KiB);
  free (v);
  remote_close (r);
}

/* Long lists (a fragmented parent) keep every extent, in order. */
Test (remote, extent_append_long)
{
  struct remote_extent *v = NULL;
  size_t n = 0;

  for (uint64_t i = 0; i < 100000; i++)
    cr_assert_eq (remote_extent_append (&v, &n, i * 8192, 4096), 0);
  cr_assert_eq (remote_extent_append (&v, &n, 100000 * 8192ULL - 4096, 4096), 0);  /* adjacent: merged */
  cr_assert_eq (n, 100000);
  for (size_t i = 0; i < n; i++) {
    cr_assert_eq (v[i].offset, i * 8192);
    cr_assert_eq (v[i].length, i + 1 < n ? 4096 : 8192);
  }
  free (v);
}

/* The HTTP parent's Content-Range parser (src/remote/http-reply.c): a
 * total of -1 (once returned as the parent's size, which then tripped an
 * assertion), numbers past int64 and inconsistent ranges are refused. */
Test (http_reply, content_range)
{
  uint64_t first, last;
  int64_t total;

  cr_assert_eq (http_content_range ("bytes 0-0/4194304", &first, &last, &total), 0);
  cr_assert (first == 0 && last == 0 && total == 4194304);
  cr_assert_eq (http_content_range ("bytes 10-19/*", &first, &last, &total), 0);
  cr_assert (first == 10 && last == 19 && total == -1);
  cr_assert_eq (http_content_range ("bytes 0-0/-1", &first, &last, &total), -1);
  cr_assert_eq (http_content_range ("bytes 0-0/99999999999999999999", &first, &last, &total), -1);
  cr_assert_eq (http_content_range ("bytes 5-4/10", &first, &last, &total), -1);
  cr_assert_eq (http_content_range ("bytes 0-10/10", &first, &last, &total), -1);
  cr_assert_eq (http_content_range ("bytes 0-1/10x", &first, &last, &total), -1);
  cr_assert_eq (http_content_range ("0-1/10", &first, &last, &total), -1);
}

/* Header lines as libcurl passes them; a status line resets. */
Test (http_reply, headers)
{
  struct xfer x = { 0 };
  static const char *lines[] = { "HTTP/1.1 206 Partial Content\r\n", "ETag: \"abc\"\r\n",
    "Content-Length: -5\r\n", "Retry-After: 999999999999999999\r\n",
    "Content-Range: bytes 0-0/7\r\n", NULL };

  for (int i = 0; lines[i]; i++)
    http_reply_header (&x, lines[i], strlen (lines[i]));
  cr_assert_str_eq (x.etag, "\"abc\"");
  cr_assert_eq (x.content_length, -1);
  cr_assert_eq (x.retry_after, HTTP_RETRY_AFTER_MAX);
  cr_assert_str_eq (x.content_range, "bytes 0-0/7");
  http_reply_header (&x, "HTTP/1.1 200 OK\r\n", 17);
  cr_assert_str_eq (x.etag, "");
  cr_assert_eq (x.content_length, -1);
}
