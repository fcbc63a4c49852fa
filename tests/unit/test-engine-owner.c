/* Unit tests: the engine's owner state against merge's write-back, on a
 * real engine over a file:// parent in a scratch directory
 * (src/cor/engine.c cor_handoff, cor_writeback):
 *  - a hand-off is refused while record.merging says a merge may be
 *    writing the parent, naming the merge; the disk stays active;
 *  - once handed off, cor_writeback refuses (EROFS) and leaves the
 *    parent and the dirty bits alone. */
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
#define SIZE (1024 * KiB)
#define BS (64 * KiB)

static char dir[] = "/tmp/corfs-unit-owner.XXXXXX";
static char parent[128], url[160], index_dir[128], overlay[128];
static unsigned char orig[SIZE];
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
  for (size_t i = 0; i < SIZE; i++)
    orig[i] = (unsigned char) (i * 7 + 3);
  fd = open (parent, O_RDWR | O_CREAT | O_TRUNC, 0600);
  cr_assert_geq (fd, 0);
  cr_assert_eq (write (fd, orig, SIZE), (ssize_t) SIZE);
  close (fd);
  cr_assert_eq (mkdir (index_dir, 0700), 0);
  cr_assert_eq (meta_open (index_dir, &m), 0);

  struct remote_config rcfg = { .url = url, .disk = "d", .writable = true,
                                .connect_timeout_ns = NS_PER_SEC,
                                .request_timeout_ns = NS_PER_SEC };
  cr_assert_eq (remote_open (&rcfg, &r), 0);
  cr_assert_eq (remote_get_size (r, now_ns () + 5 * NS_PER_SEC, &err), (int64_t) SIZE);
  cr_assert_eq (remote_make_writable (r, now_ns () + 5 * NS_PER_SEC, &err), 0);
  memset (&init, 0, sizeof init);
  snprintf (init.url, sizeof init.url, "%s", url);
  remote_identity (r, init.identity, sizeof init.identity);
  init.size = SIZE;
  init.block_size = BS;
  init.state = META_ACTIVE;
  init.parent_owned = true;
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
}

TestSuite (engine_owner, .init = setup, .fini = teardown);

static void
write_block (uint64_t off)
{
  unsigned char buf[BS];
  int err = 0;

  memset (buf, 0xee, sizeof buf);
  cr_assert_eq (cor_write (d, buf, sizeof buf, off, &err), 0,
                "write: %s", strerror (err));
}

static bool
parent_unchanged (void)
{
  unsigned char buf[SIZE];
  int fd = open (parent, O_RDONLY);
  bool same = fd >= 0 && read (fd, buf, SIZE) == (ssize_t) SIZE && !memcmp (buf, orig, SIZE);

  if (fd >= 0)
    close (fd);
  return same;
}

static int
mark_merging (struct meta_record *rec, void *arg, char *errbuf, size_t len)
{
  rec->merging = true;
  return 0;
}

Test (engine_owner, handoff_refused_while_merging)
{
  char msg[1024];
  struct meta_record rec;

  write_block (BS);
  cr_assert_eq (cor_update_record (d, mark_merging, NULL, msg, sizeof msg), 0);
  cr_expect_eq (cor_handoff (d, 2, msg, sizeof msg), -1,
                "a hand-off was accepted while a merge may be writing the parent");
  cr_expect_not_null (strstr (msg, "merge"), "the refusal does not name the merge: %s", msg);
  meta_disk_record (cor_disk_meta (d), &rec);
  cr_expect_eq (rec.state, META_ACTIVE, "the disk is no longer active after the refusal");
}

Test (engine_owner, writeback_refused_once_handed_off)
{
  char msg[1024];
  int err = 0;

  write_block (2 * BS);
  cr_assert_eq (cor_handoff (d, 2, msg, sizeof msg), 0, "handoff: %s", msg);
  cr_expect_eq (cor_writeback (d, 0, cor_disk_nr_blocks (d), now_ns () + 5 * NS_PER_SEC, &err),
                -1, "write-back ran on a handed-off disk");
  cr_expect_eq (err, EROFS, "write-back on a handed-off disk: %s, expected EROFS", strerror (err));
  cr_expect (parent_unchanged (), "the parent of a handed-off disk was written");
  cr_expect (meta_test (cor_disk_meta (d), META_DIRTY, 2), "the dirty bit was cleared");
}
