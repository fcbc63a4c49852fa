/* Unit-test fixture for the engine's tests (test-cor-*.c): a real engine
 * (src/cor) over a file:// parent and an index in a scratch directory,
 * no FUSE, built through the public headers only (cor.h, meta.h,
 * remote.h), as the daemon builds it.
 *
 * fx_setup creates DIR/parent.img filled with fx_pat (a byte pattern
 * that differs per offset and per block), DIR/index, and one disk "d"
 * whose overlay is DIR/d.overlay, then starts the engine.  fx_restart
 * closes the engine cleanly and opens it again over the same index,
 * overlay and parent (a daemon restart).  fx_teardown frees everything
 * and removes DIR.  Each test program includes this once; the helpers
 * are static and marked unused so that a program may skip some. */
#ifndef CORFS_COR_FIXTURE_H
#define CORFS_COR_FIXTURE_H

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "cor/cor.h"
#include "meta/meta.h"
#include "remote/remote.h"

#define KiB 1024ULL
#define MiB (1024 * KiB)
#define FX_UNUSED __attribute__ ((unused))

/* What the disk is made of; zeros give the defaults noted. */
struct fx_opts {
  uint64_t size;                /* default 1 MiB */
  uint32_t block_size;          /* default 64 KiB */
  enum meta_state state;        /* META_ACTIVE (0) by default */
  uint64_t epoch;
  bool parent_owned;            /* a writable parent (merge's write-back) */
  bool no_identity;             /* leave the record's identity empty */
  uint64_t hold_ns;             /* default 5 s */
  uint64_t readahead;
  enum cor_stream_mode stream;
  const struct cor_range *hints;
  size_t nr_hints;
};

static char fx_dir[64];
static char fx_parent[128], fx_url[160], fx_index[128], fx_overlay[128];
static struct fx_opts fx_o;
static struct meta *fx_m;
static struct cor_engine *fx_e;
static struct cor_disk *fx_d;

/* The parent's byte at offset off. */
static FX_UNUSED unsigned char
fx_pat (uint64_t off)
{
  return (unsigned char) (off * 7 + (off >> 12) * 13 + 3);
}

static FX_UNUSED void
fx_pat_fill (unsigned char *buf, uint64_t off, size_t n)
{
  for (size_t i = 0; i < n; i++)
    buf[i] = fx_pat (off + i);
}

static struct remote *
fx_remote (void)
{
  struct remote *r;
  int err = 0;
  struct remote_config rcfg = { .url = fx_url, .disk = "d", .writable = fx_o.parent_owned,
                                .connect_timeout_ns = NS_PER_SEC,
                                .request_timeout_ns = NS_PER_SEC };

  cr_assert_eq (remote_open (&rcfg, &r), 0);
  if (fx_o.parent_owned)
    cr_assert_eq (remote_make_writable (r, now_ns () + 5 * NS_PER_SEC, &err), 0,
                  "make writable: %s", strerror (err));
  return r;
}

/* Open disk d (creating its record from init if not NULL), add it to a
 * new engine and start that. */
static void
fx_engine (const struct meta_record *init, struct remote *r)
{
  struct meta_disk *md;

  cr_assert_eq (meta_disk_open (fx_m, "d", init, &md, NULL), 0, "meta_disk_open: %m");
  struct cor_disk_config cfg = { .name = "d", .overlay_path = fx_overlay, .md = md,
                                 .remote = r, .hold_ns = fx_o.hold_ns,
                                 .stream = fx_o.stream, .readahead = fx_o.readahead,
                                 .hints = fx_o.hints, .nr_hints = fx_o.nr_hints };
  cr_assert_eq (cor_engine_new (fx_m, &fx_e), 0);
  cr_assert_eq (cor_disk_add (fx_e, &cfg, &fx_d), 0, "cor_disk_add: %m");
  cr_assert_eq (cor_engine_start (fx_e), 0);
}

static FX_UNUSED void
fx_setup (const struct fx_opts *o)
{
  struct meta_record init;
  struct remote *r;
  unsigned char *buf;
  int fd, err = 0;

  fx_o = *o;
  if (!fx_o.size)
    fx_o.size = MiB;
  if (!fx_o.block_size)
    fx_o.block_size = 64 * KiB;
  if (!fx_o.hold_ns)
    fx_o.hold_ns = 5 * NS_PER_SEC;
  snprintf (fx_dir, sizeof fx_dir, "/tmp/corfs-unit-cor.XXXXXX");
  cr_assert_not_null (mkdtemp (fx_dir));
  snprintf (fx_parent, sizeof fx_parent, "%s/parent.img", fx_dir);
  snprintf (fx_url, sizeof fx_url, "file://%s", fx_parent);
  snprintf (fx_index, sizeof fx_index, "%s/index", fx_dir);
  snprintf (fx_overlay, sizeof fx_overlay, "%s/d.overlay", fx_dir);
  cr_assert_not_null (buf = malloc (fx_o.size));
  fx_pat_fill (buf, 0, fx_o.size);
  fd = open (fx_parent, O_RDWR | O_CREAT | O_TRUNC, 0600);
  cr_assert_geq (fd, 0);
  cr_assert_eq (write (fd, buf, fx_o.size), (ssize_t) fx_o.size);
  close (fd);
  free (buf);
  cr_assert_eq (mkdir (fx_index, 0700), 0);
  cr_assert_eq (meta_open (fx_index, &fx_m), 0);

  r = fx_remote ();
  cr_assert_eq (remote_get_size (r, now_ns () + 5 * NS_PER_SEC, &err),
                (int64_t) fx_o.size);
  memset (&init, 0, sizeof init);
  snprintf (init.url, sizeof init.url, "%s", fx_url);
  if (!fx_o.no_identity)
    remote_identity (r, init.identity, sizeof init.identity);
  init.size = fx_o.size;
  init.block_size = fx_o.block_size;
  init.state = fx_o.state;
  init.epoch = fx_o.epoch;
  init.parent_owned = fx_o.parent_owned;
  init.generation = 1;
  fx_engine (&init, r);
}

/* A daemon restart: close the engine cleanly (asserting so), then open
 * the same disk again from its record. */
static FX_UNUSED void
fx_restart (void)
{
  struct remote *r;
  int err = 0;

  cor_engine_quiesce (fx_e);
  cr_assert_eq (cor_engine_free (fx_e), 0, "the engine did not close cleanly");
  fx_e = NULL;
  fx_d = NULL;
  r = fx_remote ();
  cr_assert_eq (remote_get_size (r, now_ns () + 5 * NS_PER_SEC, &err),
                (int64_t) fx_o.size);
  fx_engine (NULL, r);
}

static int
fx_remove_one (const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
  return remove (path) == -1 ? -1 : 0;
}

static FX_UNUSED void
fx_teardown (void)
{
  if (fx_e) {
    cor_engine_quiesce (fx_e);
    cor_engine_free (fx_e);
  }
  if (fx_m)
    meta_close (fx_m);
  fx_e = NULL;
  fx_m = NULL;
  nftw (fx_dir, fx_remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Overwrite the parent in place (same file, so its pinned identity
 * still holds on the open connection). */
static FX_UNUSED void
fx_parent_write (uint64_t off, const void *buf, size_t n)
{
  int fd = open (fx_parent, O_WRONLY);
  cr_assert_geq (fd, 0);
  cr_assert_eq (pwrite (fd, buf, n, off), (ssize_t) n);
  close (fd);
}

static FX_UNUSED void
fx_parent_read (uint64_t off, void *buf, size_t n)
{
  int fd = open (fx_parent, O_RDONLY);
  cr_assert_geq (fd, 0);
  cr_assert_eq (pread (fd, buf, n, off), (ssize_t) n);
  close (fd);
}

static FX_UNUSED void
fx_read (void *buf, size_t n, uint64_t off)
{
  int err = 0;
  cr_assert_eq (cor_read (fx_d, buf, n, off, &err), (ssize_t) n,
                "read of %zu at %llu: %s", n, (unsigned long long) off, strerror (err));
}

static FX_UNUSED void
fx_write (const void *buf, size_t n, uint64_t off)
{
  int err = 0;
  cr_assert_eq (cor_write (fx_d, buf, n, off, &err), 0,
                "write of %zu at %llu: %s", n, (unsigned long long) off, strerror (err));
}

/* The index bit of map for block blk of disk d. */
static FX_UNUSED bool
fx_bit (enum meta_map map, uint64_t blk)
{
  return meta_test (cor_disk_meta (fx_d), map, blk);
}

static FX_UNUSED uint64_t
fx_count (enum meta_map map)
{
  return meta_count (cor_disk_meta (fx_d), map);
}

/* Is every byte of buf[0, n) the parent's original, from offset off? */
static FX_UNUSED bool
fx_is_pat (const unsigned char *buf, uint64_t off, size_t n)
{
  for (size_t i = 0; i < n; i++)
    if (buf[i] != fx_pat (off + i))
      return false;
  return true;
}

static FX_UNUSED bool
fx_is_byte (const unsigned char *buf, unsigned char c, size_t n)
{
  for (size_t i = 0; i < n; i++)
    if (buf[i] != c)
      return false;
  return true;
}

static FX_UNUSED enum meta_state
fx_state (void)
{
  struct meta_record rec;
  meta_disk_record (cor_disk_meta (fx_d), &rec);
  return rec.state;
}

/* Wait (at most 10 s) until stream_state names state. */
static FX_UNUSED bool
fx_wait_stream (const char *state)
{
  struct cor_status st;
  uint64_t deadline = now_ns () + 10 * NS_PER_SEC;

  do {
    cor_disk_status (fx_d, &st);
    if (!strcmp (st.stream_state, state))
      return true;
    usleep (10000);
  } while (now_ns () < deadline);
  return false;
}

#endif
