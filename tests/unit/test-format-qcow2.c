/* Unit tests: the qcow2 reader (src/format) against QEMU as the oracle.
 * Images are made at test time with qemu-img and qemu-io (standalone,
 * compressed with zlib and zstd, zero and discarded clusters, extended
 * L2 entries, version 2, small and large clusters), read through a
 * file:// remote, and compared byte for byte with `qemu-img convert -O
 * raw` of the same image.  Corrupted headers and tables are refused
 * with the expected message, never a crash. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "format/format.h"
#include "format/qcow2-internal.h"

#define KiB 1024ULL
#define MiB (1024 * KiB)
#define DISK (4 * MiB)

static char dir[] = "/tmp/corfs-unit-qcow2.XXXXXX";

static void
sh (const char *fmt, ...)
{
  char cmd[1024];
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (cmd, sizeof cmd, fmt, ap);
  va_end (ap);
  cr_assert_eq (system (cmd), 0, "failed: %s", cmd);
}

/* A 4 MiB raw disk: a pattern that compresses (text-like) in the first
 * half, bytes that do not in [2M, 2M+256K), zeros and holes elsewhere. */
static void
setup (void)
{
  char path[256];
  uint8_t *buf = calloc (1, DISK);
  uint64_t x = 0x9e3779b97f4a7c15ULL;
  int fd;

  if (system ("command -v qemu-img >/dev/null && command -v qemu-io >/dev/null") != 0)
    cr_skip_test ("qemu-img and qemu-io are needed");
  cr_assert_not_null (mkdtemp (dir));
  for (size_t i = 0; i < 2 * MiB; i++)
    buf[i] = "corfs reads qcow2 "[i % 18] + (i / 65536) % 7;
  for (size_t i = 2 * MiB; i < 2 * MiB + 256 * KiB; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    buf[i] = x;
  }
  memset (buf + 3 * MiB, 0x5a, 4 * KiB);
  snprintf (path, sizeof path, "%s/base.raw", dir);
  fd = open (path, O_RDWR | O_CREAT | O_TRUNC, 0600);
  cr_assert_geq (fd, 0);
  cr_assert_eq (full_pwrite (fd, buf, 3 * MiB + 4 * KiB, 0), 0);
  cr_assert_eq (ftruncate (fd, DISK), 0);
  close (fd);
  free (buf);
}

static void
teardown (void)
{
  sh ("rm -rf %s", dir);
}

static uint8_t *
slurp (const char *path, size_t *len)
{
  struct stat st;
  uint8_t *buf;
  int fd = open (path, O_RDONLY);

  cr_assert_geq (fd, 0, "%s", path);
  cr_assert_eq (fstat (fd, &st), 0);
  buf = malloc (st.st_size + 1);
  cr_assert_eq (full_pread (fd, buf, st.st_size, 0), 0);
  close (fd);
  *len = st.st_size;
  return buf;
}

/* The settings of the last remote opened: backing files get them. */
static char last_url[300];
static struct remote_config last_rcfg = { .url = last_url, .disk = "unit",
                                          .connect_timeout_ns = NS_PER_SEC,
                                          .request_timeout_ns = NS_PER_SEC };

static struct remote *
open_remote (const char *name)
{
  struct remote *r;

  snprintf (last_url, sizeof last_url, "file://%s/%s", dir, name);
  cr_assert_eq (remote_open (&last_rcfg, &r), 0);
  return r;
}

static struct format *
open_format (struct remote *r, enum format_kind kind, uint64_t cache)
{
  struct format_config cfg = { .kind = kind, .l2_cache_bytes = cache, .remote = &last_rcfg };
  struct format *f;
  int err = 0;

  cr_assert_eq (format_open (r, &cfg, now_ns () + 5 * NS_PER_SEC, &f, &err), 0,
                "open: %s (%s)", strerror (err), log_last_error ());
  return f;
}

/* Read the image name through the reader in chunks of an odd size and
 * compare with qemu-img's conversion; check that every zero extent reads
 * as zeros in the oracle; return the zero extents' total. */
static uint64_t
compare_with_qemu (const char *name, uint64_t cache)
{
  char raw[300], path[300];
  size_t len;
  uint8_t *want, *got = malloc (DISK);
  struct remote *r = open_remote (name);
  struct format *f = open_format (r, FORMAT_QCOW2, cache);
  struct remote_extent *v;
  size_t n;
  uint64_t total = 0;
  int err;

  snprintf (path, sizeof path, "%s/%s", dir, name);
  snprintf (raw, sizeof raw, "%s/%s.oracle", dir, name);
  sh ("qemu-img convert -f qcow2 -O raw %s %s", path, raw);
  want = slurp (raw, &len);
  cr_assert_eq (format_size (f, now_ns () + NS_PER_SEC, &err), (int64_t) len);
  for (uint64_t off = 0; off < len; off += 100003) {
    size_t count = len - off < 100003 ? len - off : 100003;

    cr_assert_eq (format_pread (f, got + off, count, off, now_ns () + 5 * NS_PER_SEC, &err),
                  0, "read at %ju: %s", (uintmax_t) off, log_last_error ());
  }
  cr_assert_eq (memcmp (got, want, len), 0, "%s differs from qemu-img's conversion", name);
  cr_assert_eq (format_zero_extents (f, 0, len, now_ns () + 5 * NS_PER_SEC, &v, &n, &err), 0);
  for (size_t i = 0; i < n; i++) {
    cr_assert (is_zero (want + v[i].offset, v[i].length), "%s: extent %zu not zeros", name, i);
    total += v[i].length;
  }
  free (v);
  format_close (f);
  remote_close (r);
  free (want);
  free (got);
  return total;
}

/* Zero clusters (written as zeros) and discarded clusters. */
static void
punch (const char *name)
{
  sh ("qemu-io -f qcow2 -c 'write -z 1M 128k' -c 'discard 1536k 64k' "
      "-c 'write -P 0x33 3584k 8k' %s/%s >/dev/null", dir, name);
}

TestSuite (qcow2, .init = setup, .fini = teardown);

Test (qcow2, standalone)
{
  sh ("qemu-img convert -f raw -O qcow2 %s/base.raw %s/a.qcow2", dir, dir);
  punch ("a.qcow2");
  cr_assert_geq (compare_with_qemu ("a.qcow2", 0), 192 * KiB);
}

Test (qcow2, version2_small_clusters_tiny_cache)
{
  sh ("qemu-img convert -f raw -O qcow2 -o compat=0.10,cluster_size=512 %s/base.raw "
      "%s/v2.qcow2", dir, dir);
  /* 512-byte clusters: 128 L2 tables for 4 MiB, through one cached. */
  compare_with_qemu ("v2.qcow2", 1);
}

Test (qcow2, large_clusters)
{
  sh ("qemu-img convert -f raw -O qcow2 -o cluster_size=2M %s/base.raw %s/big.qcow2", dir,
      dir);
  compare_with_qemu ("big.qcow2", 0);
}

Test (qcow2, compressed_zlib)
{
  sh ("qemu-img convert -c -f raw -O qcow2 %s/base.raw %s/c.qcow2", dir, dir);
  punch ("c.qcow2");
  compare_with_qemu ("c.qcow2", 0);
}

Test (qcow2, compressed_zstd)
{
  sh ("qemu-img convert -c -f raw -O qcow2 -o compression_type=zstd %s/base.raw "
      "%s/z.qcow2", dir, dir);
  punch ("z.qcow2");
  compare_with_qemu ("z.qcow2", 0);
}

Test (qcow2, subclusters)
{
  sh ("qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=128k %s/s.qcow2 4M", dir);
  sh ("qemu-io -f qcow2 -c 'write -P 0x11 0 4k' -c 'write -P 0x22 68k 12k' "
      "-c 'write -z 132k 8k' -c 'write -P 0x44 1M 128k' -c 'write -z 1028k 4k' "
      "-c 'discard 1056k 32k' %s/s.qcow2 >/dev/null", dir);
  cr_assert_geq (compare_with_qemu ("s.qcow2", 0), 3 * MiB);
}

Test (qcow2, empty_image_is_zeros_without_reads)
{
  sh ("qemu-img create -q -f qcow2 %s/e.qcow2 4M", dir);
  cr_assert_eq (compare_with_qemu ("e.qcow2", 0), DISK);
}

/* Never probed: the same file opened raw is its own bytes. */
Test (qcow2, raw_format_presents_the_container)
{
  struct remote *r;
  struct format *f;
  char head[4];
  int err;

  sh ("qemu-img convert -f raw -O qcow2 %s/base.raw %s/a.qcow2", dir, dir);
  r = open_remote ("a.qcow2");
  f = open_format (r, FORMAT_RAW, 0);
  cr_assert_eq (format_pread (f, head, 4, 0, now_ns () + NS_PER_SEC, &err), 0);
  cr_assert_eq (memcmp (head, "QFI\xfb", 4), 0);
  format_close (f);
  remote_close (r);
}

/* The host map: data ranges merged while contiguous in the file,
 * compressed clusters one by one, zeros. */
Test (qcow2, map)
{
  struct remote *r;
  struct format *f;
  struct format_map *m;
  size_t n, nzero = 0, ndata = 0, ncomp = 0;
  uint64_t covered = 0;
  int err;

  sh ("qemu-img convert -c -f raw -O qcow2 %s/base.raw %s/c.qcow2", dir, dir);
  punch ("c.qcow2");
  r = open_remote ("c.qcow2");
  f = open_format (r, FORMAT_QCOW2, 0);
  cr_assert_eq (format_map (f, 0, DISK, now_ns () + NS_PER_SEC, &m, &n, &err), 0);
  for (size_t i = 0; i < n; i++) {
    cr_assert_eq (m[i].offset, covered);
    covered += m[i].length;
    nzero += m[i].kind == FORMAT_MAP_ZERO;
    ndata += m[i].kind == FORMAT_MAP_DATA;
    ncomp += m[i].kind == FORMAT_MAP_COMPRESSED;
  }
  cr_assert_eq (covered, DISK);
  cr_assert_gt (ncomp, 10);
  cr_assert_gt (ndata, 0);      /* the uncompressible bytes and the write */
  cr_assert_gt (nzero, 0);
  free (m);
  format_close (f);
  remote_close (r);
}

struct reader {
  struct format *f;
  const uint8_t *want;
  unsigned seed;
  bool ok;
};

static void *
read_random (void *arg)
{
  struct reader *rd = arg;
  uint8_t *buf = malloc (256 * KiB);
  int err;

  rd->ok = true;
  for (int i = 0; i < 200 && rd->ok; i++) {
    uint64_t off = rand_r (&rd->seed) % DISK;
    size_t count = 1 + rand_r (&rd->seed) % (256 * KiB);

    if (count > DISK - off)
      count = DISK - off;
    rd->ok = format_pread (rd->f, buf, count, off, now_ns () + 5 * NS_PER_SEC, &err) == 0 &&
      memcmp (buf, rd->want + off, count) == 0;
  }
  free (buf);
  return NULL;
}

/* Concurrent readers through a cache of 4 tables of 4 KiB clusters. */
Test (qcow2, concurrent_readers)
{
  struct reader rd[4];
  pthread_t t[4];
  struct remote *r;
  struct format *f;
  uint8_t *want;
  size_t len;
  char raw[300];

  sh ("qemu-img convert -c -f raw -O qcow2 -o cluster_size=4k %s/base.raw %s/c4.qcow2", dir,
      dir);
  snprintf (raw, sizeof raw, "%s/c4.oracle", dir);
  sh ("qemu-img convert -f qcow2 -O raw %s/c4.qcow2 %s", dir, raw);
  want = slurp (raw, &len);
  r = open_remote ("c4.qcow2");
  f = open_format (r, FORMAT_QCOW2, 16 * KiB);
  for (int i = 0; i < 4; i++) {
    rd[i] = (struct reader) { .f = f, .want = want, .seed = i + 1 };
    pthread_create (&t[i], NULL, read_random, &rd[i]);
  }
  for (int i = 0; i < 4; i++) {
    pthread_join (t[i], NULL);
    cr_assert (rd[i].ok, "reader %d", i);
  }
  format_close (f);
  remote_close (r);
  free (want);
}

/* Corruption, on a copy of a good image in memory. */

static uint8_t *image;
static size_t image_len;

static void
good_image (const char *opts)
{
  char path[300];

  snprintf (path, sizeof path, "%s/good.qcow2", dir);
  sh ("qemu-img convert -f raw -O qcow2 %s %s/base.raw %s", opts, dir, path);
  image = slurp (path, &image_len);
}

static uint64_t
get64 (size_t off)
{
  uint64_t v = 0;
  for (int i = 0; i < 8; i++)
    v = v << 8 | image[off + i];
  return v;
}

static void
put64 (size_t off, uint64_t v)
{
  for (int i = 7; i >= 0; i--, v >>= 8)
    image[off + i] = v;
}

static void
put32 (size_t off, uint32_t v)
{
  for (int i = 3; i >= 0; i--, v >>= 8)
    image[off + i] = v;
}

/* The offset in the file of the first L2 table's first entry. */
static size_t
first_l2_entry (void)
{
  return get64 (get64 (40)) & 0x00fffffffffffe00ULL;
}

static void
refused_at_open (int want_err, const char *want)
{
  struct format_config cfg = { .kind = FORMAT_QCOW2 };
  struct format *f = NULL;
  int err = 0;

  cr_assert_eq (format_open_memory (image, image_len, "mem.qcow2", &cfg, &f, &err), -1,
                "not refused: %s", want);
  cr_assert_eq (err, want_err, "%s: errno %d", want, err);
  cr_assert_not_null (strstr (log_last_error (), "qcow2 image mem.qcow2: "),
                      "%s", log_last_error ());
  cr_assert_not_null (strstr (log_last_error (), want), "want \"%s\" in \"%s\"", want,
                      log_last_error ());
}

static void
refused_at_read (const char *want)
{
  struct format_config cfg = { .kind = FORMAT_QCOW2 };
  struct format *f;
  uint8_t *buf = malloc (DISK);
  char last[512];
  int err = 0;

  cr_assert_eq (format_open_memory (image, image_len, "mem.qcow2", &cfg, &f, &err), 0,
                "%s", log_last_error ());
  cr_assert_eq (format_pread (f, buf, DISK, 0, 0, &err), -1, "not refused: %s", want);
  cr_assert_eq (err, EIO);
  format_last_error (f, last, sizeof last);
  cr_assert_not_null (strstr (last, want), "want \"%s\" in \"%s\"", want, last);
  cr_assert_not_null (strstr (log_last_error (), "qcow2 image mem.qcow2: "));
  format_close (f);
  free (buf);
}

Test (qcow2, refuses_bad_headers)
{
  good_image ("");
  struct { size_t off; int width; uint64_t v; int err; const char *want; } c[] = {
    { 0, 32, 0x12345678, EINVAL, "no qcow2 magic at offset 0" },
    { 4, 32, 4, ENOTSUP, "qcow2 version 4 (at offset 4)" },
    { 20, 32, 30, EINVAL, "cluster_bits 30 (at offset 20)" },
    { 20, 32, 8, EINVAL, "cluster_bits 8" },
    { 32, 32, 1, ENOTSUP, "encrypted (crypt_method 1" },
    { 72, 64, 2, EINVAL, "the corrupt bit is set" },
    { 72, 64, 4, ENOTSUP, "external data file" },
    { 72, 64, 1ULL << 40, ENOTSUP, "unknown incompatible feature bits 0x10000000000" },
    { 24, 64, 1ULL << 62, EINVAL, "virtual size 4611686018427387904 (at offset 24) is above" },
    { 36, 32, 0, EINVAL, "l1_size 0 (at offset 36) is too small" },
    { 36, 32, 0x10000000, EINVAL, "above QEMU's limit" },
    { 40, 64, 0, EINVAL, "overlaps the header" },
    { 40, 64, 0x10100, EINVAL, "not cluster-aligned" },
    { 40, 64, 1ULL << 40, EINVAL, "lies past the end of the file" },
    { 100, 32, 64, EINVAL, "header_length 64 (at offset 100)" },
    { 100, 32, 1 << 20, EINVAL, "larger than a cluster" },
    { 96, 32, 7, EINVAL, "refcount_order 7" },
  };
  uint8_t *copy = malloc (image_len);

  memcpy (copy, image, image_len);
  for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
    memcpy (image, copy, image_len);
    if (c[i].width == 32)
      put32 (c[i].off, c[i].v);
    else
      put64 (c[i].off, c[i].v);
    refused_at_open (c[i].err, c[i].want);
  }
  free (copy);
}

Test (qcow2, refuses_features)
{
  good_image ("");
  /* zstd named without the feature bit */
  image[104] = 1;
  refused_at_open (EINVAL, "without the compression-type incompatible feature bit");
  image[104] = 9;
  put64 (72, 8);
  refused_at_open (ENOTSUP, "unknown compression type 9");
  image[104] = 0;
  /* subclusters need clusters of 16 KiB at least */
  put64 (72, 16);
  put32 (20, 12);
  refused_at_open (EINVAL, "extended L2 entries with 4096-byte clusters");
}

Test (qcow2, refuses_truncated_files)
{
  good_image ("");
  image_len = 50;
  refused_at_open (EINVAL, "file too small for a qcow2 header (50 bytes)");
  image_len = 90;
  refused_at_open (EINVAL, "file too small for a version 3 header");
}

Test (qcow2, refuses_a_backing_file)
{
  char path[300];

  sh ("qemu-img create -q -f qcow2 %s/base.qcow2 4M", dir);
  sh ("qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 %s/top.qcow2", dir);
  snprintf (path, sizeof path, "%s/top.qcow2", dir);
  image = slurp (path, &image_len);
  refused_at_open (ENOTSUP, "has a backing file \"base.qcow2\"");
  put32 (16, 5000);
  refused_at_open (EINVAL, "backing file name size 5000");
}

Test (qcow2, refuses_bad_l1_entries)
{
  size_t l1;

  good_image ("");
  l1 = get64 (40);
  put64 (l1, 1ULL << 45);
  refused_at_open (EINVAL, "L2 table of L1 entry 0 (virtual offset 0x0) at 0x200000000000 "
                   "lies past the end of the file");
  put64 (l1, 0x10200);
  refused_at_open (EINVAL, "L2 table of L1 entry 0 (virtual offset 0x0) at 0x10200 is "
                   "not cluster-aligned");
}

Test (qcow2, refuses_bad_l2_entries)
{
  size_t e;

  good_image ("");
  e = first_l2_entry ();
  put64 (e, (1ULL << 63) | (1ULL << 44));
  refused_at_read ("L2 entry 0 of the table at 0x");
  refused_at_read ("(virtual offset 0x0) at 0x100000000000 lies past the end of the file");
  put64 (e, 0x10200);
  refused_at_read ("not cluster-aligned");
}

Test (qcow2, refuses_bad_compressed_clusters)
{
  size_t e;
  uint64_t coff, entry;

  good_image ("-c");
  e = first_l2_entry ();
  entry = get64 (e);
  cr_assert (entry & (1ULL << 62), "the first cluster is not compressed");
  coff = entry & ((1ULL << 54) - 1);
  /* At offset 0x100: in the header. */
  put64 (e, (entry & ~((1ULL << 54) - 1)) | 0x100);
  refused_at_read ("compressed cluster at 0x100 overlaps the header");
  /* Its length runs past the end of the file. */
  put64 (e, (1ULL << 62) | (0xffULL << 54) | (image_len - 1024));
  refused_at_read ("lies past the end of the file");
  /* Garbage instead of deflate. */
  put64 (e, entry);
  memset (image + coff, 0xff, 64);
  refused_at_read ("compressed cluster at 0x");
  refused_at_read ("zlib: ");
}

Test (qcow2, refuses_bad_subcluster_bitmaps)
{
  size_t e;

  good_image ("-o extended_l2=on");
  e = first_l2_entry ();
  put64 (e + 8, 0x0000000100000001ULL);
  refused_at_read ("marks subclusters both allocated and zero");
  put64 (e, 0);
  put64 (e + 8, 1);
  refused_at_read ("subclusters allocated in an unallocated cluster");
}

/* A fault through a remote names the image's URL. */
Test (qcow2, fault_names_the_url)
{
  struct remote *r;
  struct format_config cfg = { .kind = FORMAT_QCOW2 };
  struct format *f;
  char want[300];
  int err;

  good_image ("");
  put32 (32, 2);
  sh ("cp %s/good.qcow2 %s/bad.qcow2", dir, dir);
  {
    char path[300];
    int fd;

    snprintf (path, sizeof path, "%s/bad.qcow2", dir);
    fd = open (path, O_WRONLY);
    cr_assert_eq (full_pwrite (fd, image, 64, 0), 0);
    close (fd);
  }
  r = open_remote ("bad.qcow2");
  cr_assert_eq (format_open (r, &cfg, now_ns () + NS_PER_SEC, &f, &err), -1);
  cr_assert_eq (err, ENOTSUP);
  snprintf (want, sizeof want, "qcow2 image file://%s/bad.qcow2: encrypted", dir);
  cr_assert_not_null (strstr (log_last_error (), want), "%s", log_last_error ());
  remote_close (r);
}

/* A lazy open reads nothing until the first use; a first use that fails
 * (the parent unreadable: a corrupt header here) leaves it to the next. */
Test (qcow2, lazy_open)
{
  struct format_config cfg = { .kind = FORMAT_QCOW2, .lazy = true };
  struct format *f;
  uint8_t buf[4096];
  int err = 0;

  good_image ("");
  put32 (0, 0);
  cr_assert_eq (format_open_memory (image, image_len, "mem.qcow2", &cfg, &f, &err), 0);
  cr_assert_eq (format_pread (f, buf, sizeof buf, 0, 0, &err), -1);
  cr_assert_eq (err, EINVAL);
  cr_assert_not_null (strstr (log_last_error (), "no qcow2 magic"), "%s", log_last_error ());
  put32 (0, 0x514649fb);
  cr_assert_eq (format_size (f, 0, &err), DISK);
  cr_assert_eq (format_pread (f, buf, sizeof buf, 0, 0, &err), 0);
  format_close (f);
}

/* Compressed clusters adjacent in the file are read with few requests
 * (not one per cluster), and the disk still reads exactly. */
Test (qcow2, compressed_reads_coalesce)
{
  struct remote *r;
  struct format *f;
  struct remote_stats st;
  uint8_t *got = malloc (DISK), *want;
  char raw[300];
  size_t len;
  int err;

  sh ("qemu-img convert -c -f raw -O qcow2 %s/base.raw %s/c.qcow2", dir, dir);
  snprintf (raw, sizeof raw, "%s/c.oracle", dir);
  sh ("qemu-img convert -f qcow2 -O raw %s/c.qcow2 %s", dir, raw);
  want = slurp (raw, &len);
  r = open_remote ("c.qcow2");
  f = open_format (r, FORMAT_QCOW2, 0);
  cr_assert_eq (format_pread (f, got, DISK, 0, now_ns () + 5 * NS_PER_SEC, &err), 0);
  cr_assert_eq (memcmp (got, want, DISK), 0);
  remote_get_stats (r, &st);
  /* 64 clusters, 32 of them compressed text; header, L1, one L2 table. */
  cr_assert_lt (st.requests, 16, "%ju requests", (uintmax_t) st.requests);
  format_close (f);
  remote_close (r);
  free (got);
  free (want);
}

/* Backing chains: qcow2 over qcow2 over a compressed qcow2, qcow2 over
 * raw, a backing file shorter than the image; each read as QEMU reads
 * it, zero extents included (compare_with_qemu checks them). */
Test (qcow2, backing_chains)
{
  sh ("qemu-img convert -c -f raw -O qcow2 %s/base.raw %s/b0.qcow2", dir, dir);
  sh ("qemu-img create -q -f qcow2 -b b0.qcow2 -F qcow2 %s/b1.qcow2", dir);
  sh ("qemu-io -f qcow2 -c 'write -P 0x61 64k 64k' -c 'write -z 1M 64k' "
      "-c 'write -P 0x62 2100k 4k' %s/b1.qcow2 >/dev/null", dir);
  sh ("qemu-img create -q -f qcow2 -b b1.qcow2 -F qcow2 %s/b2.qcow2", dir);
  sh ("qemu-io -f qcow2 -c 'write -P 0x63 96k 8k' -c 'discard 3M 64k' %s/b2.qcow2 >/dev/null",
      dir);
  compare_with_qemu ("b2.qcow2", 0);
  sh ("mkdir -p %s/sub && cp %s/base.raw %s/sub/base.raw", dir, dir, dir);
  sh ("qemu-img create -q -f qcow2 -b sub/base.raw -F raw %s/r1.qcow2", dir);
  sh ("qemu-io -f qcow2 -c 'write -P 0x64 8k 8k' %s/r1.qcow2 >/dev/null", dir);
  compare_with_qemu ("r1.qcow2", 0);
  /* A 4 MiB image over a 1 MiB backing file: zeros past its end. */
  sh ("qemu-img create -q -f raw %s/short.raw 1M && qemu-io -f raw -c 'write -P 0x65 0 1M' "
      "%s/short.raw >/dev/null", dir, dir);
  sh ("qemu-img create -q -f qcow2 -b short.raw -F raw %s/long.qcow2 4M", dir);
  cr_assert_geq (compare_with_qemu ("long.qcow2", 0), 3 * MiB);
}

static void
refused_via_remote (const char *name, const char *want)
{
  struct remote *r = open_remote (name);
  struct format_config cfg = { .kind = FORMAT_QCOW2, .remote = &last_rcfg };
  struct format *f;
  int err = 0;

  cr_assert_eq (format_open (r, &cfg, now_ns () + 5 * NS_PER_SEC, &f, &err), -1,
                "%s not refused", name);
  cr_assert_not_null (strstr (log_last_error (), want), "want \"%s\" in \"%s\"", want,
                      log_last_error ());
  remote_close (r);
}

Test (qcow2, backing_refusals)
{
  sh ("qemu-img create -q -f qcow2 %s/l0.qcow2 4M", dir);
  /* a loop: l1 over l2 over l1 */
  sh ("qemu-img create -q -f qcow2 -b l0.qcow2 -F qcow2 %s/l1.qcow2", dir);
  sh ("qemu-img create -q -f qcow2 -b l1.qcow2 -F qcow2 %s/l2.qcow2", dir);
  sh ("qemu-img rebase -q -u -b l2.qcow2 -F qcow2 %s/l1.qcow2", dir);
  refused_via_remote ("l2.qcow2", "is an image of its own chain (a loop)");
  /* absolute, protocol-prefixed, json:, going up */
  sh ("qemu-img rebase -q -u -b %s/l0.qcow2 -F qcow2 %s/l1.qcow2", dir, dir);
  refused_via_remote ("l1.qcow2", "absolute backing file name");
  sh ("qemu-img rebase -q -u -b 'http://x/l0.qcow2' -F qcow2 %s/l1.qcow2", dir);
  refused_via_remote ("l1.qcow2", "names a protocol");
  sh ("qemu-img rebase -q -u -b '../l0.qcow2' -F qcow2 %s/l1.qcow2", dir);
  refused_via_remote ("l1.qcow2", "goes up a directory");
  /* a backing file that is not there names it */
  sh ("qemu-img rebase -q -u -b gone.qcow2 -F qcow2 %s/l1.qcow2", dir);
  refused_via_remote ("l1.qcow2", "backing file \"gone.qcow2\"");
  /* a chain of 9 files */
  sh ("cp %s/l0.qcow2 %s/d0.qcow2", dir, dir);
  for (int i = 1; i <= 9; i++)
    sh ("qemu-img create -q -f qcow2 -b d%d.qcow2 -F qcow2 %s/d%d.qcow2", i - 1, dir, i);
  refused_via_remote ("d9.qcow2", "backing chain too deep");
  compare_with_qemu ("d7.qcow2", 0);      /* 8 files: read */
}

Test (qcow2, backing_urls)
{
  static const struct { const char *url, *name, *want; } ok[] = {
    { "file:///img/top.qcow2", "base.qcow2", "file:///img/base.qcow2" },
    { "file:///img/top.qcow2", "sub/b-1_2.raw", "file:///img/sub/b-1_2.raw" },
    { "http://h:8080/a/b/top.qcow2?sig=x#f", "base.qcow2", "http://h:8080/a/b/base.qcow2" },
    { "s3://bucket/images/top.qcow2", "base.qcow2", "s3://bucket/images/base.qcow2" },
    { "nfs://srv/export/top.qcow2?version=3", "base.raw", "nfs://srv/export/base.raw?version=3" },
  };
  static const struct { const char *url, *name, *want; } bad[] = {
    { "file:///img/top.qcow2", "/abs/base.qcow2", "absolute" },
    { "file:///img/top.qcow2", "json:{}", "names a protocol" },
    { "file:///img/top.qcow2", "nbd:h:1", "names a protocol" },
    { "file:///img/top.qcow2", "a/../../b", "goes up a directory" },
    { "file:///img/top.qcow2", "a b", "characters" },
    { "file:///img/top.qcow2", "", "empty" },
    { "nbd://h/export", "base.qcow2", "under an NBD image" },
    { "nbd+unix:///e?socket=/s", "base.qcow2", "under an NBD image" },
    { "http://host", "base.qcow2", "no path" },
  };
  char out[256], why[256];

  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    cr_assert_eq (qcow2_backing_url (ok[i].url, ok[i].name, out, sizeof out, why, sizeof why),
                  0, "%s + %s: %s", ok[i].url, ok[i].name, why);
    cr_assert_str_eq (out, ok[i].want);
  }
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    cr_assert_eq (qcow2_backing_url (bad[i].url, bad[i].name, out, sizeof out, why,
                                     sizeof why), -1, "%s + %s accepted", bad[i].url,
                  bad[i].name);
    cr_assert_not_null (strstr (why, bad[i].want), "%s", why);
  }
}

/* Clusters a guest wrote out of order (the last first) are read in the
 * order of the file, adjacent ones with one request, and land where the
 * disk has them. */
Test (qcow2, data_read_in_file_order)
{
  char cmd[4096], raw[300];
  size_t n = 0, len;
  struct remote *r;
  struct format *f;
  struct remote_stats st;
  uint8_t *got = malloc (MiB), *want;
  int err;

  sh ("qemu-img create -q -f qcow2 %s/rev.qcow2 4M", dir);
  n += snprintf (cmd + n, sizeof cmd - n, "qemu-io -f qcow2");
  for (int i = 15; i >= 0; i--)
    n += snprintf (cmd + n, sizeof cmd - n, " -c 'write -P %d %dk 64k'", 0x10 + i, i * 64);
  snprintf (cmd + n, sizeof cmd - n, " %s/rev.qcow2 >/dev/null", dir);
  sh ("%s", cmd);
  snprintf (raw, sizeof raw, "%s/rev.oracle", dir);
  sh ("qemu-img convert -f qcow2 -O raw %s/rev.qcow2 %s", dir, raw);
  want = slurp (raw, &len);
  r = open_remote ("rev.qcow2");
  f = open_format (r, FORMAT_QCOW2, 0);
  remote_get_stats (r, &st);
  uint64_t before = st.requests;
  cr_assert_eq (format_pread (f, got, MiB, 0, now_ns () + 5 * NS_PER_SEC, &err), 0);
  cr_assert_eq (memcmp (got, want, MiB), 0);
  remote_get_stats (r, &st);
  /* the L2 table and one gathered read, not 16 */
  cr_assert_leq (st.requests - before, 2, "%ju requests", (uintmax_t) (st.requests - before));
  format_close (f);
  remote_close (r);
  free (got);
  free (want);
}
