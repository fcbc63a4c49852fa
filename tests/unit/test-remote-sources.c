/* Unit tests: source sets (src/remote/sources.c).
 *  - the fingerprint's samples: first and last block, the rest inside
 *    the image, the same for a seed, others for another seed;
 *  - the identity string round-trips;
 *  - the order: healthy and unchecked first, failed after, never a
 *    mismatch; spread rotates the healthy ones only;
 *  - over file:// sources: a missing first source fails over to the
 *    second; once it appears (same content), it is preferred again; a
 *    source with other content of the same size is refused and never
 *    read; with only that one left, reads fail (EIO);
 *  - sources added at run time are checked first (a different image is
 *    refused, not added), removed ones are no longer listed, and the last
 *    one cannot be removed. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "remote/remote-internal.h"
#include "remote/sources-internal.h"

#define SIZE (1024 * 1024 + 100)

Test (sources, samples)
{
  uint64_t off, off2;
  size_t len;
  unsigned differ = 0;

  sfp_sample (7, SIZE, 0, &off, &len);
  cr_assert_eq (off, 0);
  cr_assert_eq (len, SFP_BLOCK);
  sfp_sample (7, SIZE, 1, &off, &len);
  cr_assert_eq (off, SIZE - 100);
  cr_assert_eq (len, 100);
  for (unsigned i = 2; i < SFP_SAMPLES; i++) {
    sfp_sample (7, SIZE, i, &off, &len);
    cr_assert_lt (off, SIZE);
    cr_assert_eq (off % SFP_BLOCK, 0);
    cr_assert_leq (off + len, SIZE);
    sfp_sample (7, SIZE, i, &off2, &len);
    cr_assert_eq (off, off2);
    sfp_sample (8, SIZE, i, &off2, &len);
    differ += off != off2;
  }
  cr_assert_gt (differ, SFP_SAMPLES / 2);
  /* A one-block image: every sample is that block. */
  sfp_sample (7, 10, 5, &off, &len);
  cr_assert_eq (off, 0);
  cr_assert_eq (len, 10);
}

Test (sources, identity_string)
{
  char id[128];
  uint64_t size, seed, fp;

  sfp_format (id, sizeof id, 12345, 0xdeadbeefULL, 0x0123456789abcdefULL);
  cr_assert_eq (sfp_parse (id, &size, &seed, &fp), 0);
  cr_assert_eq (size, 12345);
  cr_assert_eq (seed, 0xdeadbeefULL);
  cr_assert_eq (fp, 0x0123456789abcdefULL);
  cr_assert_eq (sfp_parse ("http:size=1,etag=x", &size, &seed, &fp), -1);
  cr_assert_neq (sfp_mix (sfp_start (1, 2), "a", 1), sfp_mix (sfp_start (1, 2), "b", 1));
  cr_assert_neq (sfp_start (1, 2), sfp_start (2, 2));
}

Test (sources, order)
{
  enum sources_state st[] = { SOURCES_FAILED, SOURCES_MISMATCH, SOURCES_OK,
                              SOURCES_UNCHECKED, SOURCES_FAILED };
  size_t order[5], n = sources_pick_order (st, 5, order);

  cr_assert_eq (n, 4);
  cr_assert_eq (order[0], 2);
  cr_assert_eq (order[1], 3);
  cr_assert_eq (order[2], 0);
  cr_assert_eq (order[3], 4);
}

Test (sources, rotate)
{
  size_t order[] = { 3, 1, 4, 0 };

  sources_rotate (order, 3, 1);
  cr_assert_eq (order[0], 1);
  cr_assert_eq (order[1], 4);
  cr_assert_eq (order[2], 3);
  cr_assert_eq (order[3], 0);
  sources_rotate (order, 1, 5);
  cr_assert_eq (order[0], 1);
}

static char dir[] = "/tmp/corfs-sources-XXXXXX";

static void
write_image (const char *name, int seed)
{
  char path[256];
  unsigned char *buf = malloc (SIZE);
  int fd;

  for (size_t i = 0; i < SIZE; i++)
    buf[i] = (i * 31 + seed + i / 4096) & 0xff;
  snprintf (path, sizeof path, "%s/%s", dir, name);
  fd = open (path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  cr_assert_geq (fd, 0);
  cr_assert_eq (write (fd, buf, SIZE), SIZE);
  close (fd);
  free (buf);
}

static struct remote *
open_set (const char **names, size_t n, const char *pinned)
{
  static char urls[4][300];
  struct remote_config src[4];
  struct remote_config cfg = { .disk = "d", .pinned_identity = pinned, .sources = src,
                               .nr_sources = n, .source_timeout_ns = NS_PER_SEC,
                               .connect_timeout_ns = NS_PER_SEC,
                               .request_timeout_ns = NS_PER_SEC };
  struct remote *r;

  for (size_t i = 0; i < n; i++) {
    snprintf (urls[i], sizeof urls[i], "file://%s/%s", dir, names[i]);
    src[i] = (struct remote_config) { .url = urls[i], .disk = "d",
                                      .connect_timeout_ns = NS_PER_SEC,
                                      .request_timeout_ns = NS_PER_SEC };
  }
  cr_assert_eq (remote_open (&cfg, &r), 0);
  return r;
}

static void
info (struct remote *r, size_t i, struct remote_source_info *si)
{
  cr_assert_lt (i, remote_nr_sources (r));
  remote_source_info (r, i, si);
}

Test (sources, failover_and_back)
{
  const char *names[] = { "a.img", "b.img" };
  struct remote_source_info si;
  char buf[8192], id[128];
  int err;
  struct remote *r;

  cr_assert_not_null (mkdtemp (dir));
  write_image ("b.img", 1);
  r = open_set (names, 2, NULL);
  cr_assert_eq (remote_get_size (r, now_ns () + 5 * NS_PER_SEC, &err), SIZE);
  remote_identity (r, id, sizeof id);
  cr_assert (strncmp (id, "sources:", 8) == 0, "%s", id);
  cr_assert_eq (remote_pread (r, buf, sizeof buf, 4096, now_ns () + 5 * NS_PER_SEC, &err), 0);
  info (r, 0, &si);
  cr_assert_str_eq (si.state, "failed");
  info (r, 1, &si);
  cr_assert_str_eq (si.state, "ok");
  cr_assert_eq (si.reads, 1);
  /* The first appears, with the same content: the prober brings it back,
   * and it is preferred again. */
  write_image ("a.img", 1);
  for (int i = 0; i < 100; i++) {
    info (r, 0, &si);
    if (!strcmp (si.state, "ok"))
      break;
    sleep_ns (100 * 1000000ULL);
  }
  cr_assert_str_eq (si.state, "ok");
  cr_assert_eq (remote_pread (r, buf, sizeof buf, 0, now_ns () + 5 * NS_PER_SEC, &err), 0);
  info (r, 0, &si);
  cr_assert_eq (si.reads, 1);
  remote_close (r);

  /* Pinned from the run above: a source with other content is refused,
   * the good one serves; without it, reads fail. */
  write_image ("c.img", 2);
  const char *names2[] = { "c.img", "b.img" };
  r = open_set (names2, 2, id);
  cr_assert_eq (remote_pread (r, buf, sizeof buf, 0, now_ns () + 5 * NS_PER_SEC, &err), 0);
  info (r, 0, &si);
  cr_assert_str_eq (si.state, "mismatch");
  cr_assert_eq (si.reads, 0);
  remote_close (r);
  const char *names3[] = { "c.img" };
  r = open_set (names3, 1, id);
  cr_assert_eq (remote_pread (r, buf, sizeof buf, 0, now_ns () + 2 * NS_PER_SEC, &err), -1);
  cr_assert_eq (err, EIO);
  cr_assert_eq (remote_get_size (r, now_ns () + NS_PER_SEC, &err), -1);
  info (r, 0, &si);
  cr_assert_str_eq (si.state, "mismatch");
  remote_close (r);

  /* At run time: c refused, a added; b removed; a, the last, stays. */
  char url[300], why[512];
  r = open_set (names2 + 1, 1, id);
  cr_assert_eq (remote_get_size (r, now_ns () + 5 * NS_PER_SEC, &err), SIZE);
  struct remote_config add = { .url = url };
  snprintf (url, sizeof url, "file://%s/c.img", dir);
  cr_assert_eq (remote_sources_add (r, &add, now_ns () + 5 * NS_PER_SEC, why, sizeof why), -1);
  cr_assert (strstr (why, "different image"), "%s", why);
  cr_assert_eq (remote_nr_sources (r), 1);
  snprintf (url, sizeof url, "file://%s/a.img", dir);
  cr_assert_eq (remote_sources_add (r, &add, now_ns () + 5 * NS_PER_SEC, why, sizeof why), 0,
                "%s", why);
  cr_assert_eq (remote_sources_add (r, &add, now_ns () + 5 * NS_PER_SEC, why, sizeof why), -1);
  cr_assert_eq (remote_nr_sources (r), 2);
  info (r, 1, &si);
  cr_assert_str_eq (si.url, url);
  cr_assert_str_eq (si.state, "ok");
  info (r, 0, &si);
  char burl[300];
  snprintf (burl, sizeof burl, "%s", si.url);
  cr_assert_eq (remote_sources_remove (r, burl, why, sizeof why), 0, "%s", why);
  cr_assert_eq (remote_nr_sources (r), 1);
  info (r, 0, &si);
  cr_assert_str_eq (si.url, url);
  cr_assert_eq (remote_pread (r, buf, sizeof buf, 0, now_ns () + 5 * NS_PER_SEC, &err), 0);
  info (r, 0, &si);
  cr_assert_eq (si.reads, 1);
  cr_assert_eq (remote_sources_remove (r, url, why, sizeof why), -1);
  cr_assert (strstr (why, "last source"), "%s", why);
  remote_close (r);

  char cmd[300];
  snprintf (cmd, sizeof cmd, "rm -rf %s", dir);
  cr_assert_eq (system (cmd), 0);
}
