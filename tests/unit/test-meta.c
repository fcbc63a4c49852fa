/* corfs: unit tests for the block index (src/meta).
 *
 * Every test gets a fresh temporary directory holding STATE/index; the
 * fixture closes whatever a failing test left open and removes the
 * directory.  A "crash" is simulated with meta_disk_close (d, false):
 * pending chunks are thrown away and the open mark stays set, exactly what
 * a killed daemon leaves behind; the environment is then closed and opened
 * again, so everything checked afterwards comes from LMDB.
 */
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <lmdb.h>                 /* only to forge an index from the future */

#include "common/log.h"
#include "meta/meta.h"

#define CHUNK_BITS 8192         /* blocks per bitmap chunk (1024-byte page) */
#define KiB 1024ULL
#define MiB (1024 * KiB)
#define GiB (1024 * MiB)

static char tmpdir[PATH_MAX];
static char idxdir[PATH_MAX + 16];
static struct meta *m;

/* Disks the current test has open, so that the fixture can close them
 * (meta_close asserts that no disk is open) if an assertion fails. */
#define MAX_OPEN 8
static struct meta_disk *open_disks[MAX_OPEN];

static void
track (struct meta_disk *d)
{
  for (int i = 0; i < MAX_OPEN; i++)
    if (!open_disks[i]) {
      open_disks[i] = d;
      return;
    }
  cr_assert_fail ("too many open disks in one test");
}

static void
untrack (struct meta_disk *d)
{
  for (int i = 0; i < MAX_OPEN; i++)
    if (open_disks[i] == d)
      open_disks[i] = NULL;
}

static int
rm_one (const char *path, const struct stat *st, int type, struct FTW *ftw)
{
  return remove (path);
}

static void
meta_tmp_setup (void)
{
  snprintf (tmpdir, sizeof tmpdir, "%s/corfs-test-meta.XXXXXX",
            getenv ("TMPDIR") ? getenv ("TMPDIR") : "/tmp");
  cr_assert_not_null (mkdtemp (tmpdir), "mkdtemp: %s", strerror (errno));
  snprintf (idxdir, sizeof idxdir, "%s/index", tmpdir);
  memset (open_disks, 0, sizeof open_disks);
  cr_assert_eq (meta_open (idxdir, &m), 0, "meta_open: %s", strerror (errno));
}

static void
meta_tmp_teardown (void)
{
  for (int i = 0; i < MAX_OPEN; i++)
    if (open_disks[i]) {
      meta_disk_close (open_disks[i], false);
      open_disks[i] = NULL;
    }
  meta_close (m);
  m = NULL;
  if (tmpdir[0])
    nftw (tmpdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
  tmpdir[0] = '\0';
}

TestSuite (meta, .init = meta_tmp_setup, .fini = meta_tmp_teardown, .timeout = 60);

/* ---- helpers ---- */

static struct meta_record
mkrec (uint64_t size, uint32_t block_size)
{
  struct meta_record r;

  memset (&r, 0, sizeof r);
  snprintf (r.url, sizeof r.url, "nbd+unix:///export?socket=/run/parent.sock");
  snprintf (r.identity, sizeof r.identity, "nbd:size=%llu;export=export",
            (unsigned long long) size);
  r.size = size;
  r.block_size = block_size;
  r.state = META_INCOMING;
  r.epoch = 7;
  r.mirror = true;
  r.parent_owned = true;
  r.complete = false;
  r.generation = 1;
  r.widened_generation = 0;
  return r;
}

static struct meta_disk *
open_disk (const char *name, const struct meta_record *init, bool *widened)
{
  struct meta_disk *d = NULL;
  bool w = true;

  cr_assert_eq (meta_disk_open (m, name, init, &d, &w), 0,
                "meta_disk_open %s: %s", name, strerror (errno));
  cr_assert_not_null (d);
  track (d);
  if (widened)
    *widened = w;
  return d;
}

/* Open a disk that must not have been widened. */
static struct meta_disk *
open_clean (const char *name, const struct meta_record *init)
{
  bool w;
  struct meta_disk *d = open_disk (name, init, &w);
  cr_assert (!w, "disk %s unexpectedly widened", name);
  return d;
}

static void
close_disk (struct meta_disk *d, bool clean)
{
  untrack (d);
  cr_assert_eq (meta_disk_close (d, clean), 0, "meta_disk_close: %s",
                strerror (errno));
}

/* Close and reopen the environment: everything after this comes from disk. */
static void
reopen_env (void)
{
  for (int i = 0; i < MAX_OPEN; i++)
    cr_assert_null (open_disks[i], "reopen_env with a disk still open");
  meta_close (m);
  m = NULL;
  cr_assert_eq (meta_open (idxdir, &m), 0, "meta_open: %s", strerror (errno));
}

/* One complete batch; returns whether d had chunks in it. */
static bool
run_batch (struct meta_disk *d)
{
  struct meta_batch *b = meta_batch_begin (m);
  bool has;

  cr_assert_not_null (b, "meta_batch_begin: %s", strerror (errno));
  has = d ? meta_batch_has (b, d) : false;
  cr_assert_eq (meta_batch_commit (b), 0, "meta_batch_commit: %s", strerror (errno));
  return has;
}

static void
assert_record_eq (const struct meta_record *a, const struct meta_record *e)
{
  cr_assert_str_eq (a->url, e->url);
  cr_assert_str_eq (a->identity, e->identity);
  cr_assert_eq (a->size, e->size);
  cr_assert_eq (a->block_size, e->block_size);
  cr_assert_eq (a->state, e->state);
  cr_assert_eq (a->epoch, e->epoch);
  cr_assert_eq (a->mirror, e->mirror);
  cr_assert_eq (a->parent_owned, e->parent_owned);
  cr_assert_eq (a->complete, e->complete);
  cr_assert_eq (a->generation, e->generation);
  cr_assert_eq (a->widened_generation, e->widened_generation);
  cr_assert_str_eq (a->format, e->format);
  cr_assert_str_eq (a->backing_identity, e->backing_identity);
}

static void
free_names (char **names)
{
  for (size_t i = 0; names[i]; i++)
    free (names[i]);
  free (names);
}

static size_t
nr_names (char **names)
{
  size_t n = 0;
  while (names[n])
    n++;
  return n;
}

static bool
has_name (char **names, const char *name)
{
  for (size_t i = 0; names[i]; i++)
    if (!strcmp (names[i], name))
      return true;
  return false;
}

/* Assert that exactly blocks [blk, blk + nr) of the range [lo, hi) are set. */
static void
assert_only_range (struct meta_disk *d, enum meta_map map, uint64_t lo,
                   uint64_t hi, uint64_t blk, uint64_t nr)
{
  for (uint64_t i = lo; i < hi; i++)
    cr_assert_eq (meta_test (d, map, i), i >= blk && i < blk + nr,
                  "map %d block %llu: expected %d", map, (unsigned long long) i,
                  i >= blk && i < blk + nr);
}

/* Small deterministic PRNG (xorshift64*). */
static uint64_t
rnd (uint64_t *s)
{
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return *s * 0x2545F4914F6CDD1DULL;
}

/* ---- environment and records ---- */

Test (meta, create_record_roundtrip)
{
  const uint64_t size = GiB + 12345;
  struct meta_record init = mkrec (size, 64 * KiB), rec;
  struct meta_disk *d;
  char **names = NULL;

  d = open_clean ("disk0", &init);
  /* 1 GiB is 16384 blocks of 64K; 12345 more bytes need one more block. */
  cr_assert_eq (meta_nr_blocks (d), 16385);
  cr_assert_str_eq (meta_disk_name (d), "disk0");
  for (int map = 0; map < META_NR_MAPS; map++) {
    cr_assert_eq (meta_count (d, map), 0);
    cr_assert_eq (meta_next (d, map, true, 0), 16385);
    cr_assert_eq (meta_next (d, map, false, 0), 0);
  }

  meta_disk_record (d, &rec);
  assert_record_eq (&rec, &init);
  cr_assert_eq (meta_record_get (m, "disk0", &rec), 0);
  assert_record_eq (&rec, &init);

  cr_assert_eq (meta_disk_names (m, &names), 0);
  cr_assert_eq (nr_names (names), 1);
  cr_assert_str_eq (names[0], "disk0");
  free_names (names);

  /* The record is durable on return from open: survive a crash. */
  close_disk (d, false);
  reopen_env ();
  memset (&rec, 0xa5, sizeof rec);
  cr_assert_eq (meta_record_get (m, "disk0", &rec), 0);
  assert_record_eq (&rec, &init);
  cr_assert_eq (meta_disk_names (m, &names), 0);
  cr_assert_eq (nr_names (names), 1);
  cr_assert_str_eq (names[0], "disk0");
  free_names (names);
}

Test (meta, record_exotic_fields)
{
  /* A URL with '=' and '&' in it, a long identity, every enum value. */
  static const enum meta_state states[] = {
    META_ACTIVE, META_INCOMING, META_ACTIVATING, META_HANDED_OFF, META_STANDALONE
  };
  for (size_t i = 0; i < sizeof states / sizeof states[0]; i++) {
    char name[16];
    struct meta_record init = mkrec (12345, 4096), rec;
    struct meta_disk *d;

    snprintf (init.url, sizeof init.url,
              "https://example.com/img?a=1&b==2&token_stripped=%zu", i);
    memset (init.identity, 'x', sizeof init.identity - 1);
    init.identity[sizeof init.identity - 1] = '\0';
    init.state = states[i];
    init.epoch = UINT64_MAX - i;
    init.mirror = i % 2;
    init.parent_owned = !(i % 2);
    init.complete = i % 2;
    init.generation = 1000 + i;
    init.widened_generation = 999;
    snprintf (name, sizeof name, "d%zu", i);
    d = open_clean (name, &init);
    cr_assert_eq (meta_nr_blocks (d), 4);
    close_disk (d, true);
    reopen_env ();
    cr_assert_eq (meta_record_get (m, name, &rec), 0);
    assert_record_eq (&rec, &init);
  }
}

Test (meta, generation_zero_becomes_one)
{
  struct meta_record init = mkrec (1 * MiB, 4096), rec;
  struct meta_disk *d;

  init.generation = 0;
  d = open_clean ("g", &init);
  meta_disk_record (d, &rec);
  cr_assert_eq (rec.generation, 1);
  close_disk (d, true);
  cr_assert_eq (meta_record_get (m, "g", &rec), 0);
  cr_assert_eq (rec.generation, 1);
}

Test (meta, names_empty)
{
  char **names = NULL;

  cr_assert_eq (meta_disk_names (m, &names), 0);
  cr_assert_not_null (names);
  cr_assert_null (names[0]);
  free_names (names);
}

Test (meta, names_several)
{
  static const char *want[] = { "b.img", "a-1", "zz_9", "A" };
  struct meta_record init = mkrec (1 * MiB, 4096);
  char **names = NULL;

  for (size_t i = 0; i < 4; i++)
    close_disk (open_clean (want[i], &init), true);
  cr_assert_eq (meta_disk_names (m, &names), 0);
  cr_assert_eq (nr_names (names), 4);
  for (size_t i = 0; i < 4; i++)
    cr_assert (has_name (names, want[i]), "%s missing", want[i]);
  free_names (names);
}

Test (meta, open_unknown_enoent)
{
  struct meta_disk *d = NULL;
  struct meta_record rec;
  char **names = NULL;

  errno = 0;
  cr_assert_eq (meta_disk_open (m, "nosuch", NULL, &d, NULL), -1);
  cr_assert_eq (errno, ENOENT);
  cr_assert_null (d);
  errno = 0;
  cr_assert_eq (meta_record_get (m, "nosuch", &rec), -1);
  cr_assert_eq (errno, ENOENT);
  /* Nothing was created by the failed open. */
  cr_assert_eq (meta_disk_names (m, &names), 0);
  cr_assert_null (names[0]);
  free_names (names);
}

Test (meta, invalid_block_size_einval)
{
  static const uint32_t bad[] = { 0, 3, 3000, 4097, 65535, 0x80000001u };
  struct meta_record rec;

  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    struct meta_record init = mkrec (GiB, bad[i]);
    struct meta_disk *d = NULL;
    errno = 0;
    cr_assert_eq (meta_disk_open (m, "bad", &init, &d, NULL), -1,
                  "block size %u accepted", bad[i]);
    cr_assert_eq (errno, EINVAL, "block size %u: errno %d", bad[i], errno);
    cr_assert_null (d);
  }
  errno = 0;
  cr_assert_eq (meta_record_get (m, "bad", &rec), -1);
  cr_assert_eq (errno, ENOENT);
}

Test (meta, existing_disk_ignores_init)
{
  struct meta_record init = mkrec (10 * MiB, 4096), other = mkrec (GiB, 65536), rec;
  struct meta_disk *d;

  close_disk (open_clean ("x", &init), true);
  d = open_clean ("x", &other);
  cr_assert_eq (meta_nr_blocks (d), 10 * MiB / 4096);
  meta_disk_record (d, &rec);
  assert_record_eq (&rec, &init);
  close_disk (d, true);
}

Test (meta, open_missing_parent_dir)
{
  struct meta *m2 = NULL;
  char path[PATH_MAX + 32];

  snprintf (path, sizeof path, "%s/no/such/index", tmpdir);
  errno = 0;
  cr_assert_eq (meta_open (path, &m2), -1);
  cr_assert_eq (errno, ENOENT);
}

Test (meta, open_unsupported_version_eproto)
{
  MDB_env *env;
  MDB_txn *txn;
  MDB_dbi dbi;
  MDB_val key = { 7, "version" }, val = { 1, "2" };
  struct meta *m2 = NULL;

  meta_close (m);
  m = NULL;
  cr_assert_eq (mdb_env_create (&env), 0);
  mdb_env_set_maxdbs (env, 4);
  cr_assert_eq (mdb_env_open (env, idxdir, 0, 0600), 0);
  cr_assert_eq (mdb_txn_begin (env, NULL, 0, &txn), 0);
  cr_assert_eq (mdb_dbi_open (txn, "info", 0, &dbi), 0);
  cr_assert_eq (mdb_put (txn, dbi, &key, &val, 0), 0);
  cr_assert_eq (mdb_txn_commit (txn), 0);
  mdb_env_close (env);

  errno = 0;
  cr_assert_eq (meta_open (idxdir, &m2), -1);
  cr_assert_eq (errno, EPROTO);
  /* The fixture wants an environment to close: a fresh one elsewhere. */
  snprintf (idxdir, sizeof idxdir, "%s/index2", tmpdir);
  cr_assert_eq (meta_open (idxdir, &m), 0);
}

/* ---- bitmaps in memory ---- */

Test (meta, set_clear_word_boundaries)
{
  /* 3 chunks and a bit, block count not a multiple of 64. */
  const uint64_t nr = 3 * CHUNK_BITS + 77;
  struct meta_record init = mkrec (nr * 4096 - 100, 4096);
  struct meta_disk *d = open_clean ("w", &init);

  cr_assert_eq (meta_nr_blocks (d), nr);

  /* Within one word, then across one word boundary. */
  meta_set (d, META_PRESENT, 3, 5);
  assert_only_range (d, META_PRESENT, 0, 200, 3, 5);
  meta_set (d, META_PRESENT, 60, 10);     /* 60..69: words 0 and 1 */
  cr_assert (!meta_test (d, META_PRESENT, 59));
  for (uint64_t i = 60; i < 70; i++)
    cr_assert (meta_test (d, META_PRESENT, i));
  cr_assert (!meta_test (d, META_PRESENT, 70));
  cr_assert_eq (meta_count (d, META_PRESENT), 15);

  /* Exactly one full aligned word, and a range spanning three words. */
  meta_set (d, META_DIRTY, 128, 64);
  assert_only_range (d, META_DIRTY, 0, 400, 128, 64);
  cr_assert_eq (meta_count (d, META_DIRTY), 64);
  meta_set (d, META_DIRTY, 127, 130);     /* 127..256 */
  assert_only_range (d, META_DIRTY, 0, 400, 127, 130);
  cr_assert_eq (meta_count (d, META_DIRTY), 130);
  meta_clear (d, META_DIRTY, 129, 126);   /* leaves 127, 128, 255, 256 */
  cr_assert_eq (meta_count (d, META_DIRTY), 4);
  cr_assert (meta_test (d, META_DIRTY, 127));
  cr_assert (meta_test (d, META_DIRTY, 128));
  cr_assert (!meta_test (d, META_DIRTY, 129));
  cr_assert (!meta_test (d, META_DIRTY, 254));
  cr_assert (meta_test (d, META_DIRTY, 255));
  cr_assert (meta_test (d, META_DIRTY, 256));
  cr_assert (!meta_test (d, META_DIRTY, 257));

  /* Across a chunk boundary (8192), and across two of them. */
  meta_set (d, META_SUSPECT, CHUNK_BITS - 3, 6);
  assert_only_range (d, META_SUSPECT, CHUNK_BITS - 200, CHUNK_BITS + 200,
                     CHUNK_BITS - 3, 6);
  cr_assert_eq (meta_count (d, META_SUSPECT), 6);
  meta_set (d, META_CHANGED, CHUNK_BITS - 1, CHUNK_BITS + 2);
  assert_only_range (d, META_CHANGED, 0, nr, CHUNK_BITS - 1, CHUNK_BITS + 2);
  cr_assert_eq (meta_count (d, META_CHANGED), CHUNK_BITS + 2);
  meta_clear (d, META_CHANGED, CHUNK_BITS - 1, 1);
  meta_clear (d, META_CHANGED, 2 * CHUNK_BITS, 1);
  assert_only_range (d, META_CHANGED, 0, nr, CHUNK_BITS, CHUNK_BITS);
  cr_assert_eq (meta_count (d, META_CHANGED), CHUNK_BITS);

  /* The last block, alone and as the end of a range. */
  meta_set (d, META_PRESENT, nr - 1, 1);
  cr_assert (meta_test (d, META_PRESENT, nr - 1));
  cr_assert (!meta_test (d, META_PRESENT, nr - 2));
  cr_assert_eq (meta_count (d, META_PRESENT), 16);
  meta_set (d, META_PRESENT, nr - 100, 100);
  cr_assert_eq (meta_count (d, META_PRESENT), 115);
  meta_clear (d, META_PRESENT, nr - 1, 1);
  cr_assert (!meta_test (d, META_PRESENT, nr - 1));
  cr_assert (meta_test (d, META_PRESENT, nr - 2));
  cr_assert_eq (meta_count (d, META_PRESENT), 114);

  /* nr == 0 is a no-op. */
  meta_set (d, META_PRESENT, 1000, 0);
  meta_clear (d, META_PRESENT, 3, 0);
  cr_assert_eq (meta_count (d, META_PRESENT), 114);
  cr_assert (!meta_test (d, META_PRESENT, 1000));
  cr_assert (meta_test (d, META_PRESENT, 3));

  /* Maps are independent. */
  cr_assert (!meta_test (d, META_SUSPECT, 3));
  cr_assert (!meta_test (d, META_CHANGED, 60));
  close_disk (d, true);
}

Test (meta, whole_disk_set_clear)
{
  const uint64_t nr = 2 * CHUNK_BITS + 13;
  struct meta_record init = mkrec (nr * 512, 512);
  struct meta_disk *d = open_clean ("all", &init);

  cr_assert_eq (meta_nr_blocks (d), nr);
  meta_set (d, META_PRESENT, 0, nr);
  cr_assert_eq (meta_count (d, META_PRESENT), nr);
  /* Bits past the end are not counted or found. */
  cr_assert_eq (meta_next (d, META_PRESENT, false, 0), nr);
  cr_assert_eq (meta_next (d, META_PRESENT, false, nr - 1), nr);
  cr_assert_eq (meta_next (d, META_PRESENT, true, nr - 1), nr - 1);
  meta_clear (d, META_PRESENT, 1, nr - 2);
  cr_assert_eq (meta_count (d, META_PRESENT), 2);
  cr_assert_eq (meta_next (d, META_PRESENT, true, 1), nr - 1);
  cr_assert_eq (meta_next (d, META_PRESENT, false, 0), 1);
  meta_clear (d, META_PRESENT, 0, nr);
  cr_assert_eq (meta_count (d, META_PRESENT), 0);
  cr_assert_eq (meta_next (d, META_PRESENT, true, 0), nr);

  /* And it all commits: full chunks, then all-zero chunks (deleted). */
  meta_set (d, META_DIRTY, 0, nr);
  cr_assert (run_batch (d));
  close_disk (d, false);
  reopen_env ();
  d = open_disk ("all", NULL, NULL);
  cr_assert_eq (meta_count (d, META_DIRTY), nr);
  cr_assert_eq (meta_count (d, META_PRESENT), 0);
  meta_clear (d, META_DIRTY, 0, nr);
  cr_assert (run_batch (d));
  close_disk (d, false);
  reopen_env ();
  d = open_disk ("all", NULL, NULL);
  cr_assert_eq (meta_count (d, META_DIRTY), 0);
  close_disk (d, true);
}

Test (meta, next_both_values)
{
  const uint64_t nr = 2 * CHUNK_BITS + 70;  /* last word partly used */
  struct meta_record init = mkrec (nr * 4096, 4096);
  struct meta_disk *d = open_clean ("n", &init);

  /* Empty map. */
  cr_assert_eq (meta_next (d, META_PRESENT, true, 0), nr);
  cr_assert_eq (meta_next (d, META_PRESENT, true, nr - 1), nr);
  cr_assert_eq (meta_next (d, META_PRESENT, false, 0), 0);
  cr_assert_eq (meta_next (d, META_PRESENT, false, 12345), 12345);
  cr_assert_eq (meta_next (d, META_PRESENT, false, nr - 1), nr - 1);

  meta_set (d, META_PRESENT, 5, 1);
  meta_set (d, META_PRESENT, 63, 2);               /* 63, 64 */
  meta_set (d, META_PRESENT, CHUNK_BITS + 1, 1);
  meta_set (d, META_PRESENT, 100, 200);            /* 100..299 */

  cr_assert_eq (meta_next (d, META_PRESENT, true, 0), 5);
  cr_assert_eq (meta_next (d, META_PRESENT, true, 5), 5);
  cr_assert_eq (meta_next (d, META_PRESENT, true, 6), 63);
  cr_assert_eq (meta_next (d, META_PRESENT, true, 64), 64);
  cr_assert_eq (meta_next (d, META_PRESENT, true, 65), 100);
  cr_assert_eq (meta_next (d, META_PRESENT, true, 299), 299);
  /* Crosses many empty words and a chunk boundary. */
  cr_assert_eq (meta_next (d, META_PRESENT, true, 300), CHUNK_BITS + 1);
  cr_assert_eq (meta_next (d, META_PRESENT, true, CHUNK_BITS + 2), nr);
  cr_assert_eq (meta_next (d, META_PRESENT, true, nr - 1), nr);

  cr_assert_eq (meta_next (d, META_PRESENT, false, 5), 6);
  cr_assert_eq (meta_next (d, META_PRESENT, false, 63), 65);
  cr_assert_eq (meta_next (d, META_PRESENT, false, 100), 300);
  cr_assert_eq (meta_next (d, META_PRESENT, false, CHUNK_BITS + 1), CHUNK_BITS + 2);

  /* The last block. */
  meta_set (d, META_PRESENT, nr - 1, 1);
  cr_assert_eq (meta_next (d, META_PRESENT, true, nr - 1), nr - 1);
  cr_assert_eq (meta_next (d, META_PRESENT, true, CHUNK_BITS + 2), nr - 1);
  cr_assert_eq (meta_next (d, META_PRESENT, false, nr - 1), nr);
  cr_assert_eq (meta_next (d, META_PRESENT, false, nr - 2), nr - 2);

  /* A long run of ones ending at the last block: no zero to find. */
  meta_set (d, META_PRESENT, CHUNK_BITS, nr - CHUNK_BITS);
  cr_assert_eq (meta_next (d, META_PRESENT, false, CHUNK_BITS), nr);
  cr_assert_eq (meta_next (d, META_PRESENT, false, CHUNK_BITS - 1), CHUNK_BITS - 1);

  /* Other maps untouched. */
  cr_assert_eq (meta_next (d, META_DIRTY, true, 0), nr);
  close_disk (d, true);
}

/* Random ranges against a reference model, then through a commit and a
 * crash: the index must reproduce the model exactly. */
Test (meta, random_ranges_model)
{
  const uint64_t nr = 3 * CHUNK_BITS + 77;
  struct meta_record init = mkrec (nr * 4096, 4096);
  struct meta_disk *d = open_clean ("r", &init);
  bool *ref = calloc (nr, sizeof *ref);
  uint64_t s = 0x9e3779b97f4a7c15ULL, cnt;

  cr_assert_not_null (ref);
  for (int op = 0; op < 3000; op++) {
    uint64_t len = rnd (&s) % 300, blk;
    bool set = rnd (&s) % 3 != 0;
    /* Bias starts towards word and chunk boundaries. */
    switch (rnd (&s) % 4) {
    case 0: blk = (rnd (&s) % (nr / 64)) * 64 - (rnd (&s) % 3); break;
    case 1: blk = (rnd (&s) % 4) * CHUNK_BITS - (rnd (&s) % 5); break;
    default: blk = rnd (&s) % nr; break;
    }
    if (blk >= nr)
      blk = rnd (&s) % nr;
    if (blk + len > nr)
      len = nr - blk;
    if (set)
      meta_set (d, META_DIRTY, blk, len);
    else
      meta_clear (d, META_DIRTY, blk, len);
    for (uint64_t i = blk; i < blk + len; i++)
      ref[i] = set;
    if (op % 500 == 0)
      run_batch (NULL);          /* interleave some commits */
  }
  cnt = 0;
  for (uint64_t i = 0; i < nr; i++) {
    cr_assert_eq (meta_test (d, META_DIRTY, i), ref[i], "block %llu",
                  (unsigned long long) i);
    cnt += ref[i];
  }
  cr_assert_eq (meta_count (d, META_DIRTY), cnt);
  for (int k = 0; k < 2000; k++) {
    uint64_t from = rnd (&s) % nr, e1 = from, e0 = from;
    while (e1 < nr && !ref[e1]) e1++;
    while (e0 < nr && ref[e0]) e0++;
    cr_assert_eq (meta_next (d, META_DIRTY, true, from), e1);
    cr_assert_eq (meta_next (d, META_DIRTY, false, from), e0);
  }

  cr_assert (run_batch (d));
  close_disk (d, false);
  reopen_env ();
  d = open_disk ("r", NULL, NULL);
  for (uint64_t i = 0; i < nr; i++)
    cr_assert_eq (meta_test (d, META_DIRTY, i), ref[i], "block %llu after crash",
                  (unsigned long long) i);
  cr_assert_eq (meta_count (d, META_DIRTY), cnt);
  close_disk (d, true);
  free (ref);
}

/* ---- persistence ---- */

Test (meta, batch_commit_survives_crash)
{
  const uint64_t nr = 4 * CHUNK_BITS;
  struct meta_record init = mkrec (nr * 4096, 4096);
  struct meta_disk *d = open_clean ("p", &init);
  struct meta_batch *b;

  meta_set (d, META_PRESENT, 10, 100);
  meta_set (d, META_PRESENT, 2 * CHUNK_BITS - 1, 2);
  meta_set (d, META_DIRTY, 10, 5);
  b = meta_batch_begin (m);
  cr_assert_not_null (b);
  cr_assert (meta_batch_has (b, d));
  cr_assert_eq (meta_batch_commit (b), 0);

  /* Nothing pending now: an empty batch. */
  cr_assert (!run_batch (d));

  /* After the last commit: lost in a crash. */
  meta_set (d, META_PRESENT, 3 * CHUNK_BITS + 5, 1);  /* a fresh chunk */
  meta_set (d, META_PRESENT, 200, 1);                 /* a committed chunk */
  meta_clear (d, META_PRESENT, 10, 1);                /* a clear, too */
  meta_set (d, META_DIRTY, 4000, 1);
  close_disk (d, false);
  reopen_env ();

  bool w;
  d = open_disk ("p", NULL, &w);
  cr_assert (w, "crash not detected");
  assert_only_range (d, META_PRESENT, 0, CHUNK_BITS, 10, 100);
  cr_assert (meta_test (d, META_PRESENT, 2 * CHUNK_BITS - 1));
  cr_assert (meta_test (d, META_PRESENT, 2 * CHUNK_BITS));
  cr_assert (!meta_test (d, META_PRESENT, 3 * CHUNK_BITS + 5));
  cr_assert_eq (meta_count (d, META_PRESENT), 102);
  cr_assert_eq (meta_next (d, META_PRESENT, true, 2 * CHUNK_BITS + 1), nr);
  assert_only_range (d, META_DIRTY, 0, nr, 10, 5);
  close_disk (d, true);
}

Test (meta, nothing_present_without_commit)
{
  struct meta_record init = mkrec (GiB, 64 * KiB);
  struct meta_disk *d = open_clean ("np", &init);
  uint64_t nr = meta_nr_blocks (d);

  meta_set (d, META_PRESENT, 0, nr);
  meta_set (d, META_DIRTY, 0, nr);
  close_disk (d, false);
  reopen_env ();
  d = open_disk ("np", NULL, NULL);
  for (int map = 0; map < META_NR_MAPS; map++)
    cr_assert_eq (meta_count (d, map), 0, "map %d has bits without a commit", map);
  close_disk (d, true);
}

Test (meta, clean_close_commits_pending)
{
  const uint64_t nr = 2 * CHUNK_BITS + 1;
  struct meta_record init = mkrec (nr * 4096, 4096);
  struct meta_disk *d = open_clean ("c", &init);
  struct meta_record rec;

  meta_set (d, META_PRESENT, 0, 3);
  meta_set (d, META_PRESENT, nr - 1, 1);
  meta_set (d, META_DIRTY, CHUNK_BITS, 1);
  meta_set (d, META_CHANGED, 77, 1);
  close_disk (d, true);
  reopen_env ();
  d = open_clean ("c", NULL);
  cr_assert_eq (meta_count (d, META_PRESENT), 4);
  cr_assert (meta_test (d, META_PRESENT, 0));
  cr_assert (meta_test (d, META_PRESENT, 2));
  cr_assert (meta_test (d, META_PRESENT, nr - 1));
  assert_only_range (d, META_DIRTY, 0, nr, CHUNK_BITS, 1);
  assert_only_range (d, META_CHANGED, 0, nr, 77, 1);
  cr_assert_eq (meta_count (d, META_SUSPECT), 0);
  meta_disk_record (d, &rec);
  cr_assert_eq (rec.widened_generation, 0);
  /* A clean close followed by a crash after reopening changes nothing. */
  close_disk (d, false);
  reopen_env ();
  d = open_disk ("c", NULL, NULL);
  cr_assert_eq (meta_count (d, META_PRESENT), 4);
  close_disk (d, true);
}

Test (meta, batch_drop_not_committed)
{
  struct meta_record init = mkrec (4 * CHUNK_BITS * 4096ULL, 4096);
  struct meta_disk *a = open_clean ("a", &init), *bd = open_clean ("b", &init);
  struct meta_batch *b;

  meta_set (a, META_PRESENT, 100, 10);
  meta_set (bd, META_PRESENT, 200, 10);
  b = meta_batch_begin (m);
  cr_assert_not_null (b);
  cr_assert (meta_batch_has (b, a));
  cr_assert (meta_batch_has (b, bd));
  meta_batch_drop (b, a);                /* a's overlay failed to sync */
  cr_assert (!meta_batch_has (b, a));
  cr_assert (meta_batch_has (b, bd));
  cr_assert_eq (meta_batch_commit (b), 0);
  /* In memory, a's bits are of course still set. */
  cr_assert_eq (meta_count (a, META_PRESENT), 10);

  close_disk (a, false);
  close_disk (bd, false);
  reopen_env ();
  a = open_disk ("a", NULL, NULL);
  bd = open_disk ("b", NULL, NULL);
  cr_assert_eq (meta_count (a, META_PRESENT), 0, "dropped bits were committed");
  assert_only_range (bd, META_PRESENT, 0, CHUNK_BITS, 200, 10);
  close_disk (a, true);
  close_disk (bd, true);
}

Test (meta, batch_drop_stays_pending)
{
  struct meta_record init = mkrec (4 * CHUNK_BITS * 4096ULL, 4096);
  struct meta_disk *a = open_clean ("a", &init), *bd = open_clean ("b", &init);
  struct meta_batch *b;

  meta_set (a, META_PRESENT, 100, 10);
  meta_set (a, META_DIRTY, 3 * CHUNK_BITS, 1);
  meta_set (bd, META_PRESENT, 200, 10);
  b = meta_batch_begin (m);
  cr_assert_not_null (b);
  meta_batch_drop (b, a);
  cr_assert_eq (meta_batch_commit (b), 0);

  /* The next batch takes a's chunks again, and only those. */
  b = meta_batch_begin (m);
  cr_assert_not_null (b);
  cr_assert (meta_batch_has (b, a));
  cr_assert (!meta_batch_has (b, bd));
  cr_assert_eq (meta_batch_commit (b), 0);

  close_disk (a, false);
  close_disk (bd, false);
  reopen_env ();
  a = open_disk ("a", NULL, NULL);
  bd = open_disk ("b", NULL, NULL);
  assert_only_range (a, META_PRESENT, 0, CHUNK_BITS, 100, 10);
  cr_assert_eq (meta_count (a, META_PRESENT), 10);
  cr_assert (meta_test (a, META_DIRTY, 3 * CHUNK_BITS));
  cr_assert_eq (meta_count (a, META_DIRTY), 1);
  assert_only_range (bd, META_PRESENT, 0, CHUNK_BITS, 200, 10);
  close_disk (a, true);
  close_disk (bd, true);
}

Test (meta, batch_drop_all_then_clean_close)
{
  /* Dropping every disk leaves an empty batch; its chunks still get
   * committed by a clean close. */
  struct meta_record init = mkrec (GiB, 64 * KiB);
  struct meta_disk *a = open_clean ("a", &init);
  struct meta_batch *b;

  meta_set (a, META_PRESENT, 5, 1);
  b = meta_batch_begin (m);
  cr_assert_not_null (b);
  meta_batch_drop (b, a);
  cr_assert (!meta_batch_has (b, a));
  cr_assert_eq (meta_batch_commit (b), 0);
  close_disk (a, true);
  reopen_env ();
  a = open_clean ("a", NULL);
  assert_only_range (a, META_PRESENT, 0, meta_nr_blocks (a), 5, 1);
  close_disk (a, true);
}

Test (meta, cleared_chunk_committed)
{
  struct meta_record init = mkrec (GiB, 64 * KiB);
  struct meta_disk *d = open_clean ("z", &init);

  meta_set (d, META_PRESENT, 8000, 300);
  cr_assert (run_batch (d));
  meta_clear (d, META_PRESENT, 8000, 300);   /* both chunks all-zero again */
  cr_assert (run_batch (d));
  close_disk (d, false);
  reopen_env ();
  d = open_disk ("z", NULL, NULL);
  cr_assert_eq (meta_count (d, META_PRESENT), 0);
  close_disk (d, true);
}

Test (meta, unclean_shutdown_widens)
{
  const uint64_t nr = 3 * CHUNK_BITS + 5;
  struct meta_record init = mkrec (nr * 4096, 4096), rec;
  struct meta_disk *d;
  bool w;

  init.generation = 3;
  d = open_clean ("u", &init);
  meta_set (d, META_PRESENT, 0, 70);
  meta_set (d, META_PRESENT, CHUNK_BITS - 2, 4);
  meta_set (d, META_PRESENT, nr - 1, 1);
  meta_set (d, META_CHANGED, 5000, 1);       /* changed, not present */
  meta_set (d, META_DIRTY, 1, 1);
  cr_assert (run_batch (d));
  close_disk (d, false);
  reopen_env ();

  d = open_disk ("u", NULL, &w);
  cr_assert (w, "unclean shutdown not reported");
  cr_assert_eq (meta_count (d, META_PRESENT), 75);
  for (uint64_t i = meta_next (d, META_PRESENT, true, 0); i < nr;
       i = meta_next (d, META_PRESENT, true, i + 1)) {
    cr_assert (meta_test (d, META_CHANGED, i), "block %llu not changed",
               (unsigned long long) i);
    cr_assert (meta_test (d, META_SUSPECT, i), "block %llu not suspect",
               (unsigned long long) i);
  }
  cr_assert_eq (meta_count (d, META_SUSPECT), 75);
  cr_assert_eq (meta_count (d, META_CHANGED), 76);
  cr_assert (meta_test (d, META_CHANGED, 5000));
  cr_assert (!meta_test (d, META_SUSPECT, 5000));
  cr_assert_eq (meta_count (d, META_DIRTY), 1);  /* dirty is not widened */
  meta_disk_record (d, &rec);
  cr_assert_eq (rec.generation, 3);
  cr_assert_eq (rec.widened_generation, rec.generation);
  cr_assert_eq (meta_record_get (m, "u", &rec), 0);
  cr_assert_eq (rec.widened_generation, 3);

  /* The widening is durable on return: crash again straight away. */
  close_disk (d, false);
  reopen_env ();
  d = open_disk ("u", NULL, &w);
  cr_assert (w);
  cr_assert_eq (meta_count (d, META_SUSPECT), 75);
  cr_assert_eq (meta_count (d, META_CHANGED), 76);

  /* A clean close ends it; the widened maps and generation stay. */
  close_disk (d, true);
  reopen_env ();
  d = open_disk ("u", NULL, &w);
  cr_assert (!w, "widened after a clean close");
  cr_assert_eq (meta_count (d, META_SUSPECT), 75);
  cr_assert_eq (meta_count (d, META_CHANGED), 76);
  meta_disk_record (d, &rec);
  cr_assert_eq (rec.widened_generation, 3);
  close_disk (d, true);
}

Test (meta, widened_null_pointer_ok)
{
  struct meta_record init = mkrec (GiB, 64 * KiB);
  struct meta_disk *d = NULL;

  cr_assert_eq (meta_disk_open (m, "wn", &init, &d, NULL), 0);
  track (d);
  meta_set (d, META_PRESENT, 1, 1);
  cr_assert (run_batch (d));
  close_disk (d, false);
  d = NULL;
  cr_assert_eq (meta_disk_open (m, "wn", NULL, &d, NULL), 0);
  track (d);
  cr_assert (meta_test (d, META_SUSPECT, 1));
  close_disk (d, true);
}

Test (meta, disk_update_persists)
{
  struct meta_record init = mkrec (GiB + 12345, 64 * KiB), rec, upd;
  struct meta_disk *d = open_clean ("up", &init);

  upd = init;
  upd.state = META_ACTIVE;
  upd.epoch = 42;
  upd.complete = true;
  snprintf (upd.identity, sizeof upd.identity, "nbd:new-identity");
  cr_assert_eq (meta_disk_update (d, &upd), 0);
  meta_disk_record (d, &rec);
  assert_record_eq (&rec, &upd);
  cr_assert_eq (meta_record_get (m, "up", &rec), 0);
  assert_record_eq (&rec, &upd);

  /* Durable at once: survives a crash. */
  close_disk (d, false);
  reopen_env ();
  cr_assert_eq (meta_record_get (m, "up", &rec), 0);
  cr_assert_eq (rec.state, META_ACTIVE);
  cr_assert_eq (rec.epoch, 42);
  cr_assert (rec.complete);
  cr_assert_str_eq (rec.identity, "nbd:new-identity");

  /* The update did not clear the open mark: that crash is still seen. */
  bool w;
  d = open_disk ("up", NULL, &w);
  cr_assert (w, "meta_disk_update cleared the open mark");
  meta_disk_record (d, &rec);
  cr_assert_eq (rec.epoch, 42);

  /* A second update, then a clean close keeps it too. */
  upd = rec;
  upd.state = META_HANDED_OFF;
  upd.epoch = 43;
  upd.complete = false;
  cr_assert_eq (meta_disk_update (d, &upd), 0);
  close_disk (d, true);
  reopen_env ();
  d = open_clean ("up", NULL);
  meta_disk_record (d, &rec);
  assert_record_eq (&rec, &upd);
  close_disk (d, true);
}

/* A record as 63d3432 wrote it (no mode, uid, gid lines), put straight
 * into LMDB: it opens, with the defaults, and chmod/chown are then
 * recorded and survive a reopen; mode 0 is a mode, not "unset". */
Test (meta, mode_owner_added_to_an_old_record)
{
  static const char old_rec[] =
    "id=1\nurl=file:///img\nidentity=file:1\nsize=1048576\nblock_size=65536\n"
    "state=incoming\nepoch=0\nwrite_mode=writeback\nparent_owned=0\ncomplete=0\n"
    "generation=1\nwidened_generation=0\nmerging=0\nopen=0\n";
  MDB_env *env;
  MDB_txn *txn;
  MDB_dbi dbi;
  MDB_val key = { 3, "old" }, val = { sizeof old_rec - 1, (void *) old_rec };
  struct meta_record rec, upd;
  struct meta_disk *d;

  meta_close (m);
  m = NULL;
  cr_assert_eq (mdb_env_create (&env), 0);
  mdb_env_set_maxdbs (env, 4);
  cr_assert_eq (mdb_env_open (env, idxdir, 0, 0600), 0);
  cr_assert_eq (mdb_txn_begin (env, NULL, 0, &txn), 0);
  cr_assert_eq (mdb_dbi_open (txn, "disks", 0, &dbi), 0);
  cr_assert_eq (mdb_put (txn, dbi, &key, &val, 0), 0);
  cr_assert_eq (mdb_txn_commit (txn), 0);
  mdb_env_close (env);
  cr_assert_eq (meta_open (idxdir, &m), 0);

  d = open_clean ("old", NULL);
  meta_disk_record (d, &rec);
  cr_assert_eq (rec.state, META_INCOMING);
  cr_assert_eq (rec.size, 1048576);
  cr_assert (!rec.has_mode && !rec.has_uid && !rec.has_gid);
  cr_assert_str_empty (rec.format);       /* raw */

  cr_assert_eq (meta_disk_set_attr (d, 0640, 65534, 4242, &upd), 0);
  cr_assert (upd.has_mode && upd.has_uid && upd.has_gid);
  cr_assert_eq (upd.state, META_INCOMING);
  close_disk (d, true);
  reopen_env ();
  cr_assert_eq (meta_record_get (m, "old", &rec), 0);
  assert_record_eq (&rec, &upd);
  cr_assert (rec.has_mode && rec.has_uid && rec.has_gid);
  cr_assert_eq (rec.mode, 0640);
  cr_assert_eq (rec.uid, 65534);
  cr_assert_eq (rec.gid, 4242);

  d = open_clean ("old", NULL);
  cr_assert_eq (meta_disk_set_attr (d, 0, -1, -1, NULL), 0);
  close_disk (d, true);
  reopen_env ();
  cr_assert_eq (meta_record_get (m, "old", &rec), 0);
  cr_assert (rec.has_mode);
  cr_assert_eq (rec.mode, 0);
  cr_assert_eq (rec.uid, 65534);
}

/* A disk's image format is recorded (only when not raw), survives
 * updates and reopens, and cannot smuggle a line into the record. */
Test (meta, format_recorded)
{
  struct meta_record init = mkrec (1 << 20, 65536), rec, upd;
  struct meta_disk *d;
  bool w;

  snprintf (init.format, sizeof init.format, "qcow2");
  snprintf (init.backing_identity, sizeof init.backing_identity, "http:size=1,etag=\"x\" | file:1");
  d = open_clean ("q", &init);
  meta_disk_record (d, &rec);
  cr_assert_str_eq (rec.format, "qcow2");
  cr_assert_str_eq (rec.backing_identity, "http:size=1,etag=\"x\" | file:1");
  upd = rec;
  upd.state = META_ACTIVE;
  cr_assert_eq (meta_disk_update (d, &upd), 0);
  close_disk (d, true);
  reopen_env ();
  cr_assert_eq (meta_record_get (m, "q", &rec), 0);
  assert_record_eq (&rec, &upd);
  cr_assert_str_eq (rec.format, "qcow2");

  init = mkrec (1 << 20, 65536);
  d = open_clean ("r", &init);
  meta_disk_record (d, &rec);
  cr_assert_str_empty (rec.format);
  close_disk (d, true);

  snprintf (init.format, sizeof init.format, "qcow2\nx=1");
  cr_assert_eq (meta_disk_open (m, "bad", &init, &d, &w), -1);
  cr_assert_eq (errno, EINVAL);
}

Test (meta, two_disks_separate)
{
  const uint64_t nr = 2 * CHUNK_BITS + 9;
  struct meta_record init = mkrec (nr * 4096, 4096);
  struct meta_disk *a = open_clean ("A", &init), *bd = open_clean ("B", &init);

  meta_set (a, META_PRESENT, 0, 100);
  meta_set (a, META_DIRTY, CHUNK_BITS, 3);
  meta_set (a, META_CHANGED, nr - 1, 1);
  meta_set (bd, META_PRESENT, 500, 1);
  cr_assert_eq (meta_count (bd, META_PRESENT), 1);
  cr_assert_eq (meta_count (bd, META_DIRTY), 0);
  cr_assert_eq (meta_count (bd, META_CHANGED), 0);
  cr_assert (!meta_test (bd, META_PRESENT, 0));
  cr_assert (!meta_test (a, META_PRESENT, 500));
  cr_assert (run_batch (a));
  close_disk (a, true);
  close_disk (bd, true);
  reopen_env ();

  a = open_clean ("A", NULL);
  bd = open_clean ("B", NULL);
  assert_only_range (a, META_PRESENT, 0, nr, 0, 100);
  assert_only_range (a, META_DIRTY, 0, nr, CHUNK_BITS, 3);
  assert_only_range (a, META_CHANGED, 0, nr, nr - 1, 1);
  assert_only_range (bd, META_PRESENT, 0, nr, 500, 1);
  cr_assert_eq (meta_count (bd, META_DIRTY), 0);
  cr_assert_eq (meta_count (bd, META_CHANGED), 0);
  cr_assert_eq (meta_count (bd, META_SUSPECT), 0);

  /* A disk created after a reopen gets a fresh id, not A's or B's. */
  struct meta_disk *c = open_clean ("C", &init);
  for (int map = 0; map < META_NR_MAPS; map++)
    cr_assert_eq (meta_count (c, map), 0, "new disk C sees map %d bits", map);
  meta_set (c, META_DIRTY, 7, 1);
  close_disk (c, true);
  close_disk (a, true);
  close_disk (bd, true);
  reopen_env ();
  a = open_clean ("A", NULL);
  bd = open_clean ("B", NULL);
  assert_only_range (a, META_DIRTY, 0, nr, CHUNK_BITS, 3);
  cr_assert_eq (meta_count (bd, META_DIRTY), 0);
  close_disk (a, true);
  close_disk (bd, true);
}

/* Crash on one disk, clean close on the other: only the first widens. */
Test (meta, widening_is_per_disk)
{
  struct meta_record init = mkrec (GiB, 64 * KiB);
  struct meta_disk *a = open_clean ("A", &init), *bd = open_clean ("B", &init);
  bool w;

  meta_set (a, META_PRESENT, 1, 1);
  meta_set (bd, META_PRESENT, 2, 1);
  cr_assert (run_batch (a));
  close_disk (a, false);
  close_disk (bd, true);
  reopen_env ();
  a = open_disk ("A", NULL, &w);
  cr_assert (w);
  cr_assert (meta_test (a, META_SUSPECT, 1));
  bd = open_disk ("B", NULL, &w);
  cr_assert (!w);
  cr_assert_eq (meta_count (bd, META_SUSPECT), 0);
  cr_assert_eq (meta_count (bd, META_CHANGED), 0);
  close_disk (a, true);
  close_disk (bd, true);
}

/* ---- map growth ---- */

Test (meta, map_grows)
{
  /* One bit in every chunk of every map: 4 * 20480 = 81920 one-KiB pages,
   * about 110 MB of LMDB pages, well over the initial 64 MiB map. */
  const uint64_t chunks = 20480, nr = chunks * CHUNK_BITS;
  struct meta_record init = mkrec (nr * 4096, 4096);
  struct meta_disk *d = open_clean ("big", &init);
  size_t before = meta_map_size (m), after;

  cr_assert_eq (before, 64 * MiB);
  cr_assert_eq (meta_nr_blocks (d), nr);
  for (uint64_t c = 0; c < chunks; c++)
    for (int map = 0; map < META_NR_MAPS; map++)
      meta_set (d, map, c * CHUNK_BITS + (c * 7 + map) % CHUNK_BITS, 1);
  cr_assert (run_batch (d));
  after = meta_map_size (m);
  cr_assert_gt (after, before, "map did not grow (%zu)", after);

  close_disk (d, false);
  reopen_env ();
  cr_assert_geq (meta_map_size (m), after, "reopened map smaller than the data");
  d = open_disk ("big", NULL, NULL);
  cr_assert_eq (meta_count (d, META_PRESENT), chunks);
  cr_assert_eq (meta_count (d, META_DIRTY), chunks);
  for (uint64_t c = 0; c < chunks; c++)
    for (int map = 0; map < META_NR_MAPS; map++)
      if (!meta_test (d, map, c * CHUNK_BITS + (c * 7 + map) % CHUNK_BITS))
        cr_assert_fail ("chunk %llu map %d lost", (unsigned long long) c, map);
  close_disk (d, true);
}

/* The same amount of data, but written by a clean close: the map must
 * grow in the middle of the close's transaction without losing the
 * chunks that the failed attempt had already taken. */
Test (meta, map_grows_on_clean_close)
{
  const uint64_t chunks = 20480, nr = chunks * CHUNK_BITS;
  struct meta_record init = mkrec (nr * 4096, 4096);
  struct meta_disk *d = open_clean ("big", &init);
  size_t before = meta_map_size (m);

  for (uint64_t c = 0; c < chunks; c++)
    for (int map = 0; map < META_NR_MAPS; map++)
      meta_set (d, map, c * CHUNK_BITS + (c * 7 + map) % CHUNK_BITS, 1);
  close_disk (d, true);
  cr_assert_gt (meta_map_size (m), before, "map did not grow");
  reopen_env ();
  d = open_clean ("big", NULL);
  for (int map = 0; map < META_NR_MAPS; map++)
    cr_assert_eq (meta_count (d, map), chunks, "map %d: %llu of %llu chunks kept",
                  map, (unsigned long long) meta_count (d, map),
                  (unsigned long long) chunks);
  for (uint64_t c = 0; c < chunks; c++)
    for (int map = 0; map < META_NR_MAPS; map++)
      if (!meta_test (d, map, c * CHUNK_BITS + (c * 7 + map) % CHUNK_BITS))
        cr_assert_fail ("chunk %llu map %d lost", (unsigned long long) c, map);
  close_disk (d, true);
}

/* The map fills up while open widens a crashed disk (every present chunk
 * is written twice more, as changed and suspect): open_txn is rerun and
 * the widening must still be complete and durable. */
Test (meta, map_grows_while_widening)
{
  const uint64_t chunks = 20480, nr = chunks * CHUNK_BITS;
  struct meta_record init = mkrec (nr * 4096, 4096);
  struct meta_disk *d = open_clean ("big", &init);
  size_t before;
  bool w;

  for (uint64_t c = 0; c < chunks; c++)
    meta_set (d, META_PRESENT, c * CHUNK_BITS + c % CHUNK_BITS, 1);
  cr_assert (run_batch (d));
  close_disk (d, false);
  reopen_env ();
  before = meta_map_size (m);
  d = open_disk ("big", NULL, &w);
  cr_assert (w);
  cr_assert_gt (meta_map_size (m), before, "map did not grow while widening");
  cr_assert_eq (meta_count (d, META_CHANGED), chunks);
  cr_assert_eq (meta_count (d, META_SUSPECT), chunks);
  close_disk (d, false);
  reopen_env ();
  d = open_disk ("big", NULL, &w);
  cr_assert (w);
  cr_assert_eq (meta_count (d, META_PRESENT), chunks);
  cr_assert_eq (meta_count (d, META_CHANGED), chunks);
  cr_assert_eq (meta_count (d, META_SUSPECT), chunks);
  for (uint64_t c = 0; c < chunks; c++) {
    uint64_t blk = c * CHUNK_BITS + c % CHUNK_BITS;
    if (!meta_test (d, META_CHANGED, blk) || !meta_test (d, META_SUSPECT, blk))
      cr_assert_fail ("block %llu not widened", (unsigned long long) blk);
  }
  close_disk (d, true);
}

/* ---- concurrency ---- */

#define WRITERS 4
#define PER_WRITER (1u << 16)   /* bits per writer */

struct conc {
  struct meta_disk *d;
  int idx;
  volatile int *stop;
};

/* Batches committed so far by the committer thread; writers pace
 * themselves on it so that their sets interleave with many batches. */
static long batches_done;

static void
wait_for_batch (long *seen)
{
  for (int spins = 0; spins < 2000000; spins++) {
    long now = __atomic_load_n (&batches_done, __ATOMIC_ACQUIRE);
    if (now != *seen) {
      *seen = now;
      return;
    }
    sched_yield ();
  }
}

static void *
writer (void *arg)
{
  struct conc *c = arg;

  /* Writer idx owns blocks j * WRITERS + idx: neighbours in every word
   * belong to the other writers.  Visit j in a scrambled order so every
   * chunk is hit throughout the run. */
  long seen = 0;
  for (uint32_t k = 0; k < PER_WRITER; k++) {
    uint64_t j = (k * 40503u + c->idx * 977u) % PER_WRITER;
    meta_set (c->d, META_PRESENT, j * WRITERS + c->idx, 1);
    if (k % 1024 == 1023)
      wait_for_batch (&seen);
  }
  return NULL;
}

static void *
committer (void *arg)
{
  struct conc *c = arg;
  long n = 0;

  while (!__atomic_load_n (c->stop, __ATOMIC_ACQUIRE)) {
    struct meta_batch *b = meta_batch_begin (m);
    if (!b || meta_batch_commit (b) != 0)
      return (void *) -1L;
    n++;
    __atomic_fetch_add (&batches_done, 1, __ATOMIC_RELEASE);
  }
  return (void *) n;
}

Test (meta, concurrent_set_and_commit)
{
  const uint64_t nr = (uint64_t) PER_WRITER * WRITERS;
  struct meta_record init = mkrec (nr * 4096, 4096);
  struct meta_disk *d = open_clean ("cc", &init);
  pthread_t wt[WRITERS], ct;
  struct conc wc[WRITERS], cc;
  volatile int stop = 0;
  void *ret;

  cc = (struct conc) { d, -1, &stop };
  cr_assert_eq (pthread_create (&ct, NULL, committer, &cc), 0);
  for (int i = 0; i < WRITERS; i++) {
    wc[i] = (struct conc) { d, i, &stop };
    cr_assert_eq (pthread_create (&wt[i], NULL, writer, &wc[i]), 0);
  }
  for (int i = 0; i < WRITERS; i++)
    pthread_join (wt[i], NULL);
  __atomic_store_n (&stop, 1, __ATOMIC_RELEASE);
  pthread_join (ct, &ret);
  cr_assert_neq ((long) ret, -1L, "a batch failed in the committer");
  cr_log_info ("committer ran %ld batches", (long) ret);
  cr_assert_eq (meta_count (d, META_PRESENT), nr);

  run_batch (NULL);
  close_disk (d, false);
  reopen_env ();
  d = open_disk ("cc", NULL, NULL);
  cr_assert_eq (meta_count (d, META_PRESENT), nr, "bits lost: %llu of %llu",
                (unsigned long long) meta_count (d, META_PRESENT),
                (unsigned long long) nr);
  cr_assert_eq (meta_next (d, META_PRESENT, false, 0), nr);
  close_disk (d, true);
}

/* Writers set and clear overlapping ranges of the same words while a
 * committer runs; after the final batch the index equals memory. */
struct churn { struct meta_disk *d; int idx; };

static void *
churner (void *arg)
{
  struct churn *c = arg;
  uint64_t s = 12345 + c->idx, nr = meta_nr_blocks (c->d);
  long seen = 0;

  for (int k = 0; k < 20000; k++) {
    if (k % 256 == 255)
      wait_for_batch (&seen);
    /* Each writer owns the bits with blk % WRITERS == idx; it sets and
     * clears them one at a time so that the end state is its own. */
    uint64_t blk = (rnd (&s) % (nr / WRITERS)) * WRITERS + c->idx;
    if (rnd (&s) & 1)
      meta_set (c->d, META_DIRTY, blk, 1);
    else
      meta_clear (c->d, META_DIRTY, blk, 1);
  }
  return NULL;
}

Test (meta, concurrent_churn_matches_memory)
{
  const uint64_t nr = 4 * CHUNK_BITS;
  struct meta_record init = mkrec (nr * 4096, 4096);
  struct meta_disk *d = open_clean ("ch", &init);
  pthread_t wt[WRITERS], ct;
  struct churn wc[WRITERS];
  struct conc cc;
  volatile int stop = 0;
  uint8_t *mem = malloc (nr);
  void *ret;

  cr_assert_not_null (mem);
  cc = (struct conc) { d, -1, &stop };
  cr_assert_eq (pthread_create (&ct, NULL, committer, &cc), 0);
  for (int i = 0; i < WRITERS; i++) {
    wc[i] = (struct churn) { d, i };
    cr_assert_eq (pthread_create (&wt[i], NULL, churner, &wc[i]), 0);
  }
  for (int i = 0; i < WRITERS; i++)
    pthread_join (wt[i], NULL);
  __atomic_store_n (&stop, 1, __ATOMIC_RELEASE);
  pthread_join (ct, &ret);
  cr_assert_neq ((long) ret, -1L);

  for (uint64_t i = 0; i < nr; i++)
    mem[i] = meta_test (d, META_DIRTY, i);
  run_batch (NULL);
  close_disk (d, false);
  reopen_env ();
  d = open_disk ("ch", NULL, NULL);
  for (uint64_t i = 0; i < nr; i++)
    if (meta_test (d, META_DIRTY, i) != mem[i])
      cr_assert_fail ("block %llu: index %d, memory %d", (unsigned long long) i,
                      !mem[i], mem[i]);
  close_disk (d, true);
  free (mem);
}

/* ---- change generations ---- */

struct ext_list { uint64_t first[64], nr[64]; size_t n; };

static int
collect_ext (void *opaque, uint64_t first, uint64_t nr)
{
  struct ext_list *l = opaque;
  cr_assert_lt (l->n, 64);
  l->first[l->n] = first;
  l->nr[l->n++] = nr;
  return 0;
}

static struct ext_list
changed_since (struct meta_disk *d, uint32_t since, bool *widened)
{
  struct ext_list l = { .n = 0 };
  bool w;
  cr_assert_eq (meta_changed_extents (d, since, &w, collect_ext, &l), 0,
                "meta_changed_extents since %u: %s", since, strerror (errno));
  if (widened)
    *widened = w;
  return l;
}

Test (meta, checkpoint_splits_generations)
{
  struct meta_record r = mkrec (1 << 30, 65536);
  struct meta_disk *d = open_clean ("g", &r);
  struct ext_list l;

  meta_set (d, META_CHANGED, 10, 5);          /* generation 1, pending */
  cr_assert_eq (meta_checkpoint (d), 2);
  cr_assert_eq (meta_count (d, META_CHANGED), 0, "the new generation starts empty");
  meta_set (d, META_CHANGED, 100, 2);         /* generation 2 */

  l = changed_since (d, 2, NULL);
  cr_assert_eq (l.n, 1);
  cr_assert_eq (l.first[0], 100);
  cr_assert_eq (l.nr[0], 2);
  l = changed_since (d, 1, NULL);
  cr_assert_eq (l.n, 2, "since 1 is the union of both generations");
  cr_assert_eq (l.first[0], 10);
  cr_assert_eq (l.nr[0], 5);
  cr_assert_eq (l.first[1], 100);

  /* Bad generations. */
  bool w;
  cr_assert_eq (meta_changed_extents (d, 0, &w, collect_ext, &l), -1);
  cr_assert_eq (errno, EINVAL);
  cr_assert_eq (meta_changed_extents (d, 3, &w, collect_ext, &l), -1);
  cr_assert_eq (errno, EINVAL);
}

Test (meta, generations_survive_reopen)
{
  struct meta_record r = mkrec (1 << 30, 65536);
  struct meta_disk *d = open_clean ("g", &r);
  struct ext_list l;
  struct meta_record now;

  meta_set (d, META_CHANGED, 7, 1);
  cr_assert_eq (meta_checkpoint (d), 2);
  meta_set (d, META_CHANGED, 9000, 3);        /* crosses no chunk: same chunk 1 */
  close_disk (d, true);
  reopen_env ();
  d = open_clean ("g", NULL);
  meta_disk_record (d, &now);
  cr_assert_eq (now.generation, 2);
  l = changed_since (d, 1, NULL);
  cr_assert_eq (l.n, 2);
  cr_assert_eq (l.first[0], 7);
  cr_assert_eq (l.first[1], 9000);
  cr_assert_eq (l.nr[1], 3);
  l = changed_since (d, 2, NULL);
  cr_assert_eq (l.n, 1);
  cr_assert_eq (l.first[0], 9000);
}

Test (meta, batch_taken_before_checkpoint_keeps_its_generation)
{
  struct meta_record r = mkrec (1 << 30, 65536);
  struct meta_disk *d = open_clean ("g", &r);
  struct meta_batch *b;
  struct ext_list l;

  meta_set (d, META_CHANGED, 42, 1);
  b = meta_batch_begin (m);                   /* takes generation 1's chunk */
  cr_assert_not_null (b);
  cr_assert_eq (meta_checkpoint (d), 2);
  cr_assert_eq (meta_batch_commit (b), 0);    /* committed after the switch */
  close_disk (d, false);                      /* crash */
  reopen_env ();
  bool widened;
  d = open_disk ("g", NULL, &widened);
  l = changed_since (d, 2, NULL);
  /* Widening after the crash puts present blocks in generation 2 (none
   * here); block 42 must stay in generation 1, not leak into 2. */
  for (size_t i = 0; i < l.n; i++)
    cr_assert (!(l.first[i] <= 42 && 42 < l.first[i] + l.nr[i]),
               "generation 1's block landed in generation 2");
  l = changed_since (d, 1, NULL);
  cr_assert_eq (l.n, 1);
  cr_assert_eq (l.first[0], 42);
}

/* The checkpoint race: a batch takes a changed chunk, a write sets
 * another bit in the same chunk (pending again), a checkpoint writes
 * the chunk under the old generation with both bits, and only then does
 * the batch commit its older copy.  Both bits must stay in generation 1
 * (the batch used to overwrite the checkpoint's copy). */
Test (meta, batch_after_checkpoint_merges_into_old_generation)
{
  struct meta_record r = mkrec (1 << 30, 65536);
  struct meta_disk *d = open_clean ("g", &r);
  struct meta_batch *b;
  struct ext_list l;

  meta_set (d, META_CHANGED, 10, 1);
  b = meta_batch_begin (m);                   /* takes chunk 0: {10} */
  cr_assert_not_null (b);
  meta_set (d, META_CHANGED, 20, 1);          /* chunk 0 pending again: {10, 20} */
  cr_assert_eq (meta_checkpoint (d), 2);      /* writes {10, 20} under generation 1 */
  cr_assert_eq (meta_batch_commit (b), 0);    /* its copy {10}, also generation 1 */
  l = changed_since (d, 1, NULL);
  cr_assert_eq (l.n, 2, "generation 1 lost a block: %zu extents", l.n);
  cr_assert_eq (l.first[0], 10);
  cr_assert_eq (l.first[1], 20);
  close_disk (d, true);
  reopen_env ();
  d = open_disk ("g", NULL, NULL);
  l = changed_since (d, 1, NULL);
  cr_assert_eq (l.n, 2, "after a reopen, generation 1 has %zu extents", l.n);
}

/* A batch taken before a checkpoint whose commit fails after it: its
 * changed chunk belongs to the old generation and must be committed
 * there by a later batch (it used to go back to the pending set of the
 * new generation, whose map no longer had the bit). */
Test (meta, dropped_batch_after_checkpoint_keeps_old_generation)
{
  struct meta_record r = mkrec (1 << 30, 65536);
  struct meta_disk *d = open_clean ("g", &r);
  struct meta_batch *b;
  struct ext_list l;

  meta_set (d, META_CHANGED, 42, 1);
  b = meta_batch_begin (m);
  cr_assert_not_null (b);
  cr_assert_eq (meta_checkpoint (d), 2);
  meta_batch_drop (b, NULL);                  /* as after a failed commit */
  cr_assert_eq (meta_batch_commit (b), 0);    /* empty now: frees it */
  l = changed_since (d, 2, NULL);
  cr_assert_eq (l.n, 0, "generation 1's block leaked into generation 2");
  l = changed_since (d, 1, NULL);
  cr_assert_eq (l.n, 0, "not committed yet, so not in generation 1 either");
  run_batch (d);                              /* the next commit */
  l = changed_since (d, 1, NULL);
  cr_assert_eq (l.n, 1, "the dropped chunk never reached generation 1");
  cr_assert_eq (l.first[0], 42);
  l = changed_since (d, 2, NULL);
  cr_assert_eq (l.n, 0);
}

Test (meta, widened_flag_per_generation)
{
  struct meta_record r = mkrec (1 << 30, 65536);
  struct meta_disk *d = open_clean ("g", &r);
  bool widened;

  meta_set (d, META_PRESENT, 0, 4);
  run_batch (d);
  cr_assert_eq (meta_checkpoint (d), 2);
  cr_assert_eq (meta_checkpoint (d), 3);
  close_disk (d, false);                      /* crash in generation 3 */
  reopen_env ();
  d = open_disk ("g", NULL, &widened);
  cr_assert (widened);
  changed_since (d, 3, &widened);
  cr_assert (widened, "generation 3 was widened");
  struct ext_list l = changed_since (d, 3, NULL);
  cr_assert_eq (l.n, 1);
  cr_assert_eq (l.first[0], 0);
  cr_assert_eq (l.nr[0], 4, "the present blocks are in the widened generation");
}

/* Assert that l is exactly the n extents given as first, count pairs. */
static void
assert_extents (const struct ext_list *l, const char *what, size_t n, ...)
{
  va_list ap;

  cr_assert_eq (l->n, n, "%s: %zu extents, expected %zu", what, l->n, n);
  va_start (ap, n);
  for (size_t i = 0; i < n; i++) {
    uint64_t first = va_arg (ap, uint64_t), nr = va_arg (ap, uint64_t);
    cr_assert_eq (l->first[i], first, "%s: extent %zu starts at %llu, expected %llu",
                  what, i, (unsigned long long) l->first[i], (unsigned long long) first);
    cr_assert_eq (l->nr[i], nr, "%s: extent %zu has %llu blocks, expected %llu",
                  what, i, (unsigned long long) l->nr[i], (unsigned long long) nr);
  }
  va_end (ap);
}

/* Three generations of one disk, each partly committed and partly in
 * memory, beside another disk's changes: every "since" gets the union of
 * its generations and nothing of the other disk's, before and after a
 * reopen.  An extent crosses a chunk boundary (two bitmap pages) and one
 * ends at the disk's last block. */
Test (meta, changed_extents_across_generations_and_disks)
{
  struct meta_record r = mkrec (1 << 30, 65536);      /* 16384 blocks: 2 chunks */
  struct meta_disk *a = open_clean ("a", &r), *b = open_clean ("b", &r);
  const uint64_t last = 16383;
  struct ext_list l;

  meta_set (b, META_CHANGED, 101, 99);                /* next to a's keys in LMDB */
  meta_set (a, META_CHANGED, CHUNK_BITS - 2, 5);      /* generation 1, chunks 0 and 1 */
  run_batch (a);
  meta_set (a, META_CHANGED, last, 1);                /* generation 1, pending */
  cr_assert_eq (meta_checkpoint (a), 2);
  meta_set (a, META_CHANGED, 100, 1);                 /* generation 2, committed */
  run_batch (a);
  cr_assert_eq (meta_checkpoint (a), 3);
  cr_assert_eq (meta_checkpoint (b), 2);
  meta_set (a, META_CHANGED, CHUNK_BITS + 3, 1);      /* generation 3, memory only */

  for (int pass = 0; pass < 2; pass++) {
    const char *when = pass ? "after a reopen" : "before a reopen";
    char what[64];
#define WHAT(s) (snprintf (what, sizeof what, "%s, %s", s, when), what)
    l = changed_since (a, 1, NULL);
    assert_extents (&l, WHAT ("since 1"), 3, (uint64_t) 100, (uint64_t) 1,
                    (uint64_t) CHUNK_BITS - 2, (uint64_t) 6, last, (uint64_t) 1);
    l = changed_since (a, 2, NULL);
    assert_extents (&l, WHAT ("since 2"), 2, (uint64_t) 100, (uint64_t) 1,
                    (uint64_t) CHUNK_BITS + 3, (uint64_t) 1);
    l = changed_since (a, 3, NULL);
    assert_extents (&l, WHAT ("since 3"), 1, (uint64_t) CHUNK_BITS + 3, (uint64_t) 1);
    l = changed_since (b, 1, NULL);
    assert_extents (&l, WHAT ("disk b since 1"), 1, (uint64_t) 101, (uint64_t) 99);
    l = changed_since (b, 2, NULL);
    assert_extents (&l, WHAT ("disk b since 2"), 0);
#undef WHAT
    if (pass == 0) {
      close_disk (a, true);
      close_disk (b, true);
      reopen_env ();
      a = open_clean ("a", NULL);
      b = open_clean ("b", NULL);
    }
  }
  close_disk (a, true);
  close_disk (b, true);
}

/* The callback stops the walk by returning -1; the call still succeeds. */
static int
take_first (void *opaque, uint64_t first, uint64_t nr)
{
  struct ext_list *l = opaque;
  collect_ext (opaque, first, nr);
  return l->n == 1 ? -1 : 0;
}

Test (meta, changed_extents_callback_stops)
{
  struct meta_record r = mkrec (1 << 30, 65536);
  struct meta_disk *d = open_clean ("g", &r);
  struct ext_list l = { .n = 0 };
  bool w;

  meta_set (d, META_CHANGED, 1, 1);
  meta_set (d, META_CHANGED, 3, 1);
  cr_assert_eq (meta_changed_extents (d, 1, &w, take_first, &l), 0);
  assert_extents (&l, "stopped walk", 1, (uint64_t) 1, (uint64_t) 1);
}

/* A state change that read the record before a chmod (it waited on a
 * stalled parent meanwhile) writes its copy back: the chmod and chown
 * stay, in memory and in the index; the state change lands too. */
Test (meta, update_from_an_older_copy_keeps_mode_and_owner)
{
  struct meta_record init = mkrec (1 * MiB, 4096), old, rec;
  struct meta_disk *d = open_clean ("attr", &init);

  meta_disk_record (d, &old);
  cr_assert (!old.has_mode);
  cr_assert_eq (meta_disk_set_attr (d, 0640, -1, 4242, NULL), 0);
  old.state = META_HANDED_OFF;
  old.epoch = 7;
  cr_assert_eq (meta_disk_update (d, &old), 0);
  meta_disk_record (d, &rec);
  cr_assert (rec.has_mode && !rec.has_uid && rec.has_gid);
  cr_assert_eq (rec.mode, 0640);
  cr_assert_eq (rec.gid, 4242);
  cr_assert_eq (rec.state, META_HANDED_OFF);
  close_disk (d, true);
  reopen_env ();
  cr_assert_eq (meta_record_get (m, "attr", &rec), 0);
  cr_assert (rec.has_mode && rec.has_gid);
  cr_assert_eq (rec.mode, 0640);
  cr_assert_eq (rec.gid, 4242);
  cr_assert_eq (rec.state, META_HANDED_OFF);
  cr_assert_eq (rec.epoch, 7);
}

/* ---- growing a disk (meta_disk_grow) ---- */

/* A record written before disks could grow reads with disk_size = size,
 * and a grown record keeps the parent's size apart. */
Test (meta, disk_size_defaults_to_parent_size)
{
  struct meta_record r = mkrec (100 * 65536 + 1000, 65536), rec;
  struct meta_disk *d = open_clean ("g", &r);

  meta_disk_record (d, &rec);
  cr_assert_eq (rec.disk_size, r.size);
  cr_assert_eq (meta_nr_blocks (d), 101);
  close_disk (d, true);
  cr_assert_eq (meta_record_get (m, "g", &rec), 0);
  cr_assert_eq (rec.disk_size, r.size);
}

/* Growing across two chunk boundaries: the new blocks are present, dirty
 * and changed at once, in memory and (after a crash) in the index, with
 * the new size; an old block whose bit no batch committed stays missing
 * (data before pointer: the grow's commit must not carry it). */
Test (meta, grow_marks_new_blocks_durably)
{
  const uint64_t bs = 65536, old_nr = 101, new_nr = 2 * CHUNK_BITS + 500;
  struct meta_record r = mkrec (100 * bs + 1000, bs), rec;
  struct meta_disk *d;
  bool w;

  r.mirror = false;
  d = open_clean ("g", &r);
  meta_set (d, META_PRESENT, 5, 1);
  run_batch (d);
  meta_set (d, META_PRESENT, 100, 1);                 /* pending, never committed */
  cr_assert_eq (meta_disk_grow (d, new_nr * bs, &rec), 0, "grow: %s", strerror (errno));
  cr_assert_eq (rec.disk_size, new_nr * bs);
  cr_assert_eq (rec.size, r.size, "the parent's size is kept");
  cr_assert_eq (meta_nr_blocks (d), new_nr);
  cr_assert_eq (meta_count (d, META_PRESENT), 2 + new_nr - old_nr);
  cr_assert_eq (meta_count (d, META_DIRTY), new_nr - old_nr);
  cr_assert_eq (meta_count (d, META_CHANGED), new_nr - old_nr);
  cr_assert_eq (meta_count (d, META_SUSPECT), 0);
  cr_assert_eq (meta_next (d, META_PRESENT, false, old_nr), new_nr);
  cr_assert_eq (meta_next (d, META_DIRTY, true, 0), old_nr);
  /* The new blocks take writes like any other. */
  meta_set (d, META_SUSPECT, new_nr - 1, 1);
  meta_clear (d, META_SUSPECT, new_nr - 1, 1);

  close_disk (d, false);                              /* a crash */
  reopen_env ();
  d = open_disk ("g", NULL, &w);
  cr_assert (w, "an unclean close widens");
  meta_disk_record (d, &rec);
  cr_assert_eq (rec.disk_size, new_nr * bs);
  cr_assert_eq (rec.size, r.size);
  cr_assert_eq (meta_nr_blocks (d), new_nr);
  cr_assert (meta_test (d, META_PRESENT, 5));
  cr_assert (!meta_test (d, META_PRESENT, 100), "an uncommitted bit became durable");
  cr_assert_eq (meta_next (d, META_PRESENT, false, 6), 6);
  cr_assert_eq (meta_next (d, META_PRESENT, false, old_nr), new_nr);
  cr_assert_eq (meta_count (d, META_PRESENT), 1 + new_nr - old_nr);
  cr_assert_eq (meta_count (d, META_DIRTY), new_nr - old_nr);
  close_disk (d, true);
}

/* Shrinking is refused, the same size is a no-op, and growing past the
 * most blocks the index keeps is refused; none changes anything. */
Test (meta, grow_refusals)
{
  const uint64_t bs = 4096;
  struct meta_record r = mkrec (10 * MiB, bs), rec;
  struct meta_disk *d = open_clean ("g", &r);

  errno = 0;
  cr_assert_eq (meta_disk_grow (d, 10 * MiB - 1, NULL), -1);
  cr_assert_eq (errno, EINVAL);
  cr_assert_eq (meta_disk_grow (d, 10 * MiB, &rec), 0);
  cr_assert_eq (rec.disk_size, 10 * MiB);
  errno = 0;
  cr_assert_eq (meta_disk_grow (d, (META_MAX_BLOCKS + 1) * bs, NULL), -1);
  cr_assert_eq (errno, EFBIG);
  cr_assert_eq (meta_nr_blocks (d), 10 * MiB / bs);
  cr_assert_eq (meta_count (d, META_PRESENT), 0);
  close_disk (d, true);
  cr_assert_eq (meta_record_get (m, "g", &rec), 0);
  cr_assert_eq (rec.disk_size, 10 * MiB);
}

/* Twice, within the last block and then past it; an update from a copy
 * read before the grow keeps the new size; a checkpoint after the grow
 * leaves the grown range in the closed generation; writes past the old
 * end commit and survive a clean reopen. */
Test (meta, grow_twice_update_checkpoint_reopen)
{
  const uint64_t bs = 65536;
  struct meta_record r = mkrec (3 * bs + 10, bs), old, rec;
  struct meta_disk *d = open_clean ("g", &r);
  struct ext_list l;

  meta_disk_record (d, &old);
  cr_assert_eq (meta_disk_grow (d, 3 * bs + 20, NULL), 0);     /* same 4 blocks */
  cr_assert_eq (meta_nr_blocks (d), 4);
  cr_assert_eq (meta_count (d, META_PRESENT), 0);
  cr_assert_eq (meta_disk_grow (d, CHUNK_BITS * bs + bs, NULL), 0);
  cr_assert_eq (meta_nr_blocks (d), CHUNK_BITS + 1);
  old.state = META_ACTIVE;
  cr_assert_eq (meta_disk_update (d, &old), 0);
  meta_disk_record (d, &rec);
  cr_assert_eq (rec.disk_size, CHUNK_BITS * bs + bs, "an older copy rolled the size back");
  cr_assert_eq (rec.state, META_ACTIVE);
  cr_assert_eq (meta_checkpoint (d), 2);
  meta_set (d, META_CHANGED, CHUNK_BITS, 1);
  meta_clear (d, META_DIRTY, CHUNK_BITS, 1);
  run_batch (d);
  l = changed_since (d, 1, NULL);
  assert_extents (&l, "since 1", 1, (uint64_t) 4, (uint64_t) CHUNK_BITS - 3);
  l = changed_since (d, 2, NULL);
  assert_extents (&l, "since 2", 1, (uint64_t) CHUNK_BITS, (uint64_t) 1);
  close_disk (d, true);
  reopen_env ();
  d = open_clean ("g", NULL);
  cr_assert_eq (meta_nr_blocks (d), CHUNK_BITS + 1);
  cr_assert_eq (meta_count (d, META_DIRTY), CHUNK_BITS - 4);
  cr_assert (!meta_test (d, META_DIRTY, CHUNK_BITS));
  cr_assert (meta_test (d, META_PRESENT, CHUNK_BITS));
  l = changed_since (d, 1, NULL);
  assert_extents (&l, "since 1, reopened", 1, (uint64_t) 4, (uint64_t) CHUNK_BITS - 3);
  close_disk (d, true);
}
