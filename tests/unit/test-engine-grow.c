/* Unit tests: growing a disk (src/cor/grow.c cor_disk_grow) on a real
 * engine over a file:// parent whose last 64 KiB block is short:
 *  - the grown range and the short block's bytes past the parent's end
 *    read zeros; the only fetch a grow makes is the short block's; the
 *    record keeps the parent's size apart; the overlay has the new size;
 *  - guest writes running while the disk grows three times all land, and
 *    writes past the old end read back;
 *  - shrinking (EINVAL), a merge in progress (EBUSY) and a handed-off
 *    disk (EPERM) are refused, and the size stays. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
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
#define BS (64 * KiB)
#define PSIZE (MiB + 1000)              /* the parent: 17 blocks, the last short */

static char dir[] = "/tmp/corfs-unit-grow.XXXXXX";
static char parent[128], url[160], index_dir[128], overlay[128];
static unsigned char *orig;
static struct meta *m;
static struct cor_engine *e;
static struct cor_disk *d;

static void
setup (void)
{
  struct meta_record init;
  struct meta_disk *md;
  struct remote *r;
  int fd, err;

  cr_assert_not_null (mkdtemp (dir));
  snprintf (parent, sizeof parent, "%s/parent.img", dir);
  snprintf (url, sizeof url, "file://%s", parent);
  snprintf (index_dir, sizeof index_dir, "%s/index", dir);
  snprintf (overlay, sizeof overlay, "%s/d.overlay", dir);
  cr_assert_not_null (orig = malloc (PSIZE));
  for (size_t i = 0; i < PSIZE; i++)
    orig[i] = (unsigned char) (i * 7 + 3);
  fd = open (parent, O_RDWR | O_CREAT | O_TRUNC, 0600);
  cr_assert_geq (fd, 0);
  cr_assert_eq (write (fd, orig, PSIZE), (ssize_t) PSIZE);
  close (fd);
  cr_assert_eq (mkdir (index_dir, 0700), 0);
  cr_assert_eq (meta_open (index_dir, &m), 0);

  struct remote_config rcfg = { .url = url, .disk = "d",
                                .connect_timeout_ns = NS_PER_SEC,
                                .request_timeout_ns = NS_PER_SEC };
  cr_assert_eq (remote_open (&rcfg, &r), 0);
  cr_assert_eq (remote_get_size (r, now_ns () + 5 * NS_PER_SEC, &err), (int64_t) PSIZE);
  memset (&init, 0, sizeof init);
  snprintf (init.url, sizeof init.url, "%s", url);
  remote_identity (r, init.identity, sizeof init.identity);
  init.size = PSIZE;
  init.block_size = BS;
  init.state = META_ACTIVE;
  init.generation = 1;
  cr_assert_eq (meta_disk_open (m, "d", &init, &md, NULL), 0);

  struct cor_disk_config cfg = { .name = "d", .overlay_path = overlay, .md = md,
                                 .remote = r, .hold_ns = 5 * NS_PER_SEC,
                                 .stream = COR_STREAM_OFF };
  cr_assert_eq (cor_engine_new (m, &e), 0);
  cr_assert_eq (cor_disk_add (e, &cfg, &d), 0);
  cr_assert_eq (cor_engine_start (e), 0);
}

static int
remove_one (const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
  return remove (path) == -1 ? -1 : 0;
}

static void
teardown (void)
{
  cor_engine_quiesce (e);
  cor_engine_free (e);
  meta_close (m);
  nftw (dir, remove_one, 16, FTW_DEPTH | FTW_PHYS);
  free (orig);
}

TestSuite (engine_grow, .init = setup, .fini = teardown, .timeout = 60);

/* Read count bytes at off and compare them with want (NULL: zeros). */
static void
expect_read (uint64_t off, size_t count, const unsigned char *want, const char *what)
{
  unsigned char *buf = malloc (count), *zero = calloc (1, count);
  int err = 0;

  cr_assert (buf && zero);
  cr_assert_eq (cor_read (d, buf, count, off, &err), (ssize_t) count,
                "%s: read: %s", what, strerror (err));
  cr_expect (!memcmp (buf, want ? want : zero, count), "%s: wrong data", what);
  free (buf);
  free (zero);
}

static uint64_t
fetched (void)
{
  struct cor_status st;
  cor_disk_status (d, &st);
  return st.fetched_bytes;
}

Test (engine_grow, grown_range_reads_zeros_unfetched)
{
  const uint64_t new_size = 5 * MiB + 123;
  struct meta_record rec;
  struct stat st;
  int err = 0;

  cr_assert_eq (cor_disk_grow (d, new_size, &err), 0, "grow: %s", strerror (err));
  cr_expect_eq (fetched (), BS - (17 * BS - PSIZE), "only the short last block is fetched");
  cr_expect_eq (cor_disk_size (d), new_size);
  cr_expect_eq (cor_disk_parent_size (d), PSIZE);
  cr_expect_eq (cor_disk_nr_blocks (d), (new_size + BS - 1) / BS);
  meta_disk_record (cor_disk_meta (d), &rec);
  cr_expect_eq (rec.size, PSIZE);
  cr_expect_eq (rec.disk_size, new_size);
  cr_assert_eq (stat (overlay, &st), 0);
  cr_expect_eq ((uint64_t) st.st_size, new_size, "the overlay was not extended");

  uint64_t before = fetched ();
  expect_read (PSIZE, new_size - PSIZE, NULL, "the grown range");
  expect_read (16 * BS, PSIZE - 16 * BS, orig + 16 * BS, "the short block");
  cr_expect_eq (fetched (), before, "reading the grown range fetched");
  expect_read (0, PSIZE, orig, "the parent's range");
}

struct writer { int id; uint64_t nr_slots; unsigned char last[256]; };

/* Write 4 KiB slots id, id + 4, ... of the parent's range, 200 times
 * over, each time with a new value; remember the last. */
static void *
writer_run (void *arg)
{
  struct writer *w = arg;
  unsigned char buf[4096];
  int err = 0;

  for (int round = 0; round < 200; round++)
    for (uint64_t s = w->id; s < w->nr_slots && s < 256; s += 16) {
      memset (buf, (round * 4 + w->id) & 0xff, sizeof buf);
      cr_assert_eq (cor_write (d, buf, sizeof buf, s * 4096, &err), 0,
                    "write: %s", strerror (err));
      w->last[s] = buf[0];
    }
  return NULL;
}

Test (engine_grow, writes_during_grow_all_land)
{
  struct writer w[4];
  pthread_t t[4];
  uint64_t size = PSIZE;
  int err = 0;

  for (int i = 0; i < 4; i++) {
    w[i] = (struct writer) { .id = i, .nr_slots = PSIZE / 4096 };
    cr_assert_eq (pthread_create (&t[i], NULL, writer_run, &w[i]), 0);
  }
  for (int g = 0; g < 3; g++) {
    size += MiB + 17;
    cr_assert_eq (cor_disk_grow (d, size, &err), 0, "grow %d: %s", g, strerror (err));
  }
  for (int i = 0; i < 4; i++)
    pthread_join (t[i], NULL);
  for (int i = 0; i < 4; i++)
    for (uint64_t s = i; s < w[i].nr_slots && s < 256; s += 16) {
      unsigned char want[4096];
      memset (want, w[i].last[s], sizeof want);
      expect_read (s * 4096, sizeof want, want, "a slot written during the grows");
    }
  /* Past the old end, across the last grown block's end. */
  unsigned char buf[8192];
  memset (buf, 0x5a, sizeof buf);
  cr_assert_eq (cor_write (d, buf, sizeof buf, size - sizeof buf, &err), 0,
                "write at the new end: %s", strerror (err));
  expect_read (size - sizeof buf, sizeof buf, buf, "the new end");
  cr_assert_eq (cor_flush (d, &err), 0);
}

static int
mark_merging (struct meta_record *rec, void *arg, char *errbuf, size_t len)
{
  rec->merging = true;
  return 0;
}

Test (engine_grow, refusals_keep_the_size)
{
  char msg[1024];
  int err = 0;

  cr_expect_eq (cor_disk_grow (d, PSIZE - 1, &err), -1, "a shrink was accepted");
  cr_expect_eq (err, EINVAL);
  cr_expect_eq (cor_disk_grow (d, PSIZE, &err), 0, "growing to the same size is a no-op");
  cr_assert_eq (cor_update_record (d, mark_merging, NULL, msg, sizeof msg), 0);
  err = 0;
  cr_expect_eq (cor_disk_grow (d, 2 * MiB, &err), -1, "a grow was accepted while merging");
  cr_expect_eq (err, EBUSY);
  cr_expect_eq (cor_disk_size (d), PSIZE);
}

Test (engine_grow, handed_off_refused)
{
  char msg[1024];
  int err = 0;

  cr_assert_eq (cor_handoff (d, 2, msg, sizeof msg), 0, "handoff: %s", msg);
  cr_expect_eq (cor_disk_grow (d, 2 * MiB, &err), -1, "a handed-off disk grew");
  cr_expect_eq (err, EPERM);
  cr_expect_eq (cor_disk_size (d), PSIZE);
  cr_expect_eq (meta_nr_blocks (cor_disk_meta (d)), 17);
}
