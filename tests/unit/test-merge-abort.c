/* Unit tests: a mirror's abort run as a merge job (src/merge/abort.c over
 * src/cor/abort.c), on a real engine over a file:// parent in a scratch
 * directory:
 *  - cor_next_unsettled_run finds runs of dirty or suspect blocks, at
 *    most max long, and says when none is left;
 *  - merge_abort copies the dirty blocks, records the disk handed off,
 *    refuses writes after, and status shows the abort job done with its
 *    bytes;
 *  - a second abort is refused (nothing to abort), the failed job's
 *    error in status, the disk unchanged;
 *  - an abort at shutdown (after cor_engine_quiesce) changes nothing:
 *    still an active mirror, the blocks still dirty. */
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
#include "merge/merge.h"
#include "meta/meta.h"
#include "remote/remote.h"

#define KiB 1024ULL
#define SIZE (1024 * KiB)
#define BS (64 * KiB)
#define NR (SIZE / BS)

static char dir[] = "/tmp/corfs-unit-abort.XXXXXX";
static char parent[128], url[160], index_dir[128], overlay[128];
static struct meta *m;
static struct cor_engine *e;
static struct cor_disk *d;
static struct merge *mg;

static void
setup (void)
{
  static unsigned char orig[SIZE];
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
  remote_set_modifying (r, true);       /* a mirror writes its parent */
  memset (&init, 0, sizeof init);
  snprintf (init.url, sizeof init.url, "%s", url);
  remote_identity (r, init.identity, sizeof init.identity);
  init.size = SIZE;
  init.block_size = BS;
  init.state = META_ACTIVE;
  init.mirror = true;
  init.parent_owned = true;
  init.generation = 1;
  cr_assert_eq (meta_disk_open (m, "d", &init, &md, NULL), 0);

  struct cor_disk_config cfg = { .name = "d", .overlay_path = overlay, .md = md,
                                 .remote = r, .hold_ns = 5 * NS_PER_SEC,
                                 .stream = COR_STREAM_OFF };
  cr_assert_eq (cor_engine_new (m, &e), 0);
  cr_assert_eq (cor_disk_add (e, &cfg, &d), 0);
  cr_assert_eq (cor_engine_start (e), 0);
  cr_assert (cor_disk_mirror (d));
  cr_assert_not_null (mg = merge_new (dir));
}

static int
remove_one (const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
  return remove (path) == -1 ? -1 : 0;
}

static void
teardown (void)
{
  merge_free (mg);
  cor_engine_quiesce (e);
  cor_engine_free (e);
  meta_close (m);
  nftw (dir, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

TestSuite (merge_abort, .init = setup, .fini = teardown);

/* Write block blk (through the mirror: the parent gets it too), then
 * mark it dirty, as a failed parent write would leave it. */
static void
dirty_block (uint64_t blk)
{
  static unsigned char buf[BS];
  int err = 0;

  memset (buf, 0xe0 + (int) blk, sizeof buf);
  cr_assert_eq (cor_write (d, buf, sizeof buf, blk * BS, &err), 0, "write: %s", strerror (err));
  meta_set (cor_disk_meta (d), META_DIRTY, blk, 1);
}

Test (merge_abort, next_unsettled_run)
{
  struct meta_disk *md = cor_disk_meta (d);
  uint64_t end;

  cr_expect_geq (cor_next_unsettled_run (d, 0, 256, &end), NR, "a run on a clean disk");
  meta_set (md, META_DIRTY, 2, 2);      /* 2, 3 */
  meta_set (md, META_SUSPECT, 4, 1);    /* 4: one run with 2 and 3 */
  meta_set (md, META_SUSPECT, 9, 1);
  cr_expect_eq (cor_next_unsettled_run (d, 0, 256, &end), 2);
  cr_expect_eq (end, 5, "run from 2 ends at %llu, expected 5", (unsigned long long) end);
  cr_expect_eq (cor_next_unsettled_run (d, 0, 2, &end), 2);
  cr_expect_eq (end, 4, "max 2: run ends at %llu, expected 4", (unsigned long long) end);
  cr_expect_eq (cor_next_unsettled_run (d, 5, 256, &end), 9);
  cr_expect_eq (end, 10);
  cr_expect_geq (cor_next_unsettled_run (d, 10, 256, &end), NR, "a run past the last one");
}

Test (merge_abort, copies_then_hands_off)
{
  struct cor_status before, after;
  struct merge_status ms;
  struct meta_record rec;
  char msg[1024], buf[BS];
  int err = 0;

  dirty_block (1);
  dirty_block (5);
  dirty_block (6);
  cor_disk_status (d, &before);
  cr_assert_eq (before.dirty_blocks, 3);
  cr_assert_eq (merge_abort (mg, d, msg, sizeof msg), 0, "abort: %s", msg);
  meta_disk_record (cor_disk_meta (d), &rec);
  cr_expect_eq (rec.state, META_HANDED_OFF, "the state after abort is %s",
                meta_state_name (rec.state));
  cor_disk_status (d, &after);
  cr_expect_eq (after.dirty_blocks, 0, "%llu blocks still dirty after abort",
                (unsigned long long) after.dirty_blocks);
  cr_expect_eq (after.writeback_bytes - before.writeback_bytes, 3 * BS,
                "abort wrote %llu bytes to the parent, expected the 3 dirty blocks",
                (unsigned long long) (after.writeback_bytes - before.writeback_bytes));
  merge_status (mg, d, &ms);
  cr_expect_str_eq (ms.kind, "abort");
  cr_expect_str_eq (ms.state, "done");
  cr_expect_eq (ms.done_bytes, 3 * BS);
  cr_expect_eq (ms.total_bytes, 3 * BS);
  memset (buf, 0x11, sizeof buf);
  cr_expect_eq (cor_write (d, buf, sizeof buf, 0, &err), -1, "a write after abort succeeded");
  cr_expect_eq (err, EROFS, "a write after abort: %s, expected EROFS", strerror (err));
}

Test (merge_abort, second_abort_refused)
{
  struct merge_status ms;
  struct meta_record rec;
  char msg[1024];

  cr_assert_eq (merge_abort (mg, d, msg, sizeof msg), 0, "abort: %s", msg);
  cr_expect_eq (merge_abort (mg, d, msg, sizeof msg), -1, "a second abort succeeded");
  cr_expect_not_null (strstr (msg, "nothing to abort"), "the refusal: %s", msg);
  merge_status (mg, d, &ms);
  cr_expect_str_eq (ms.kind, "abort");
  cr_expect_str_eq (ms.state, "failed");
  cr_expect_not_null (strstr (ms.last_error, "nothing to abort"), "last_error: %s",
                      ms.last_error);
  meta_disk_record (cor_disk_meta (d), &rec);
  cr_expect_eq (rec.state, META_HANDED_OFF);
}

Test (merge_abort, at_shutdown_changes_nothing)
{
  struct meta_record rec;
  char msg[1024];

  dirty_block (3);
  cor_engine_quiesce (e);
  cr_expect_eq (merge_abort (mg, d, msg, sizeof msg), -1, "an abort at shutdown succeeded");
  cr_expect_not_null (strstr (msg, "shut"), "the abort at shutdown did not say so: %s", msg);
  meta_disk_record (cor_disk_meta (d), &rec);
  cr_expect_eq (rec.state, META_ACTIVE, "the state after an abort at shutdown is %s",
                meta_state_name (rec.state));
  cr_expect (meta_test (cor_disk_meta (d), META_DIRTY, 3), "the dirty block was cleared");
  cr_expect (cor_disk_writable (d), "the mirror is not writable after the failed abort");
}
