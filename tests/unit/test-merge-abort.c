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
 *    still an active mirror, the blocks still dirty;
 *  - a block behind the copy's cursor that turns suspect meanwhile (its
 *    parent copy lost, as a failed parent flush marks it) is copied
 *    again before the hand-off: the scan starts over from block 0.
 *    This program defines pwrite itself, so the file://
 *    backend's writes come here first (see on_parent_write);
 *  - the job framework (job.c): merge_stop while a starter is still in
 *    its kind's prepare hook leaves the job to that starter, which frees
 *    it (once) and starts no thread. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common/util.h"
#include "cor/cor.h"
#include "merge/merge.h"
#include "merge/merge-internal.h"
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

/* Armed: the next write of the parent at offset lose_at first loses the
 * parent's copy of block lose_blk (overwritten with zeros) and marks it
 * suspect, as a guest fsync whose parent flush failed would. */
static uint64_t lose_at, lose_blk;
static int lose_armed;          /* atomic */
static ino_t parent_ino;

static void
on_parent_write (int fd, off_t offset)
{
  static char zeros[BS];
  struct stat st;

  if (!__atomic_load_n (&lose_armed, __ATOMIC_SEQ_CST) || (uint64_t) offset != lose_at ||
      fstat (fd, &st) == -1 || st.st_ino != parent_ino)
    return;
  __atomic_store_n (&lose_armed, 0, __ATOMIC_SEQ_CST);
  if (syscall (SYS_pwrite64, fd, zeros, sizeof zeros, (off_t) (lose_blk * BS)) != BS)
    abort ();
  meta_set (cor_disk_meta (d), META_SUSPECT, lose_blk, 1);
}

/* (With _FILE_OFFSET_BITS=64 glibc names this pwrite64, the symbol the
 * backend's calls bind to.) */
ssize_t
pwrite (int fd, const void *buf, size_t count, off_t offset)
{
  on_parent_write (fd, offset);
  return syscall (SYS_pwrite64, fd, buf, count, offset);
}

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

Test (merge_abort, rescans_blocks_behind_the_cursor)
{
  struct cor_status after;
  struct meta_record rec;
  unsigned char want[BS], got[BS];
  char msg[1024];
  struct stat st;
  int fd;

  dirty_block (1);
  dirty_block (5);
  cr_assert_eq (stat (parent, &st), 0);
  parent_ino = st.st_ino;
  lose_at = 5 * BS;             /* while copying block 5, block 1 (copied) is lost */
  lose_blk = 1;
  __atomic_store_n (&lose_armed, 1, __ATOMIC_SEQ_CST);
  cr_assert_eq (merge_abort (mg, d, msg, sizeof msg), 0, "abort: %s", msg);
  cr_assert_eq (__atomic_load_n (&lose_armed, __ATOMIC_SEQ_CST), 0,
                "the abort never wrote block 5 to the parent");
  meta_disk_record (cor_disk_meta (d), &rec);
  cr_expect_eq (rec.state, META_HANDED_OFF, "the state after abort is %s",
                meta_state_name (rec.state));
  cor_disk_status (d, &after);
  cr_expect_eq (after.suspect_blocks, 0, "%llu blocks still suspect after abort",
                (unsigned long long) after.suspect_blocks);
  cr_expect_eq (after.dirty_blocks, 0);
  memset (want, 0xe0 + 1, sizeof want);
  fd = open (parent, O_RDONLY);
  cr_assert_geq (fd, 0);
  cr_assert_eq (pread (fd, got, sizeof got, 1 * BS), (ssize_t) BS);
  close (fd);
  cr_expect_arr_eq (got, want, BS, "the parent lacks block 1 after the abort: its lost "
                    "copy (behind the cursor) was not copied again");
}

/* A job kind whose prepare waits until told (as flatten's may on a hung
 * target), counting its frees. */
static int prep_entered, prep_go, slow_frees, slow_steps;       /* atomic */

static int
slow_prepare (struct job *j, const void *arg, char *errbuf, size_t len)
{
  __atomic_store_n (&prep_entered, 1, __ATOMIC_SEQ_CST);
  for (int i = 0; i < 1000 && !__atomic_load_n (&prep_go, __ATOMIC_SEQ_CST); i++)
    usleep (10 * 1000);
  return 0;
}

static enum job_step
slow_step (struct job *j)
{
  __atomic_add_fetch (&slow_steps, 1, __ATOMIC_SEQ_CST);
  return JOB_END;
}

static void
slow_free (struct job *j)
{
  __atomic_add_fetch (&slow_frees, 1, __ATOMIC_SEQ_CST);
}

static const struct job_kind slow_kind = {
  .name = "slow", .prepare = slow_prepare, .step = slow_step, .free = slow_free,
};

struct starter {
  int r;
  char msg[512];
};

static void *
start_slow (void *arg)
{
  struct starter *s = arg;
  s->r = job_start (mg, d, &slow_kind, 0, NULL, s->msg, sizeof s->msg);
  return NULL;
}

Test (merge_abort, stop_during_prepare)
{
  struct starter s = { 0, "" };
  pthread_t t;

  cr_assert_eq (pthread_create (&t, NULL, start_slow, &s), 0);
  for (int i = 0; i < 500 && !__atomic_load_n (&prep_entered, __ATOMIC_SEQ_CST); i++)
    usleep (10 * 1000);
  cr_assert (__atomic_load_n (&prep_entered, __ATOMIC_SEQ_CST), "prepare never ran");
  cr_expect_eq (merge_stop (mg, now_ns () + NS_PER_SEC), 0);
  cr_expect_eq (__atomic_load_n (&slow_frees, __ATOMIC_SEQ_CST), 0,
                "merge_stop freed a job its starter was still preparing");
  __atomic_store_n (&prep_go, 1, __ATOMIC_SEQ_CST);
  pthread_join (t, NULL);
  cr_expect_eq (s.r, -1, "a job prepared across merge_stop was started");
  cr_expect_not_null (strstr (s.msg, "shutting down"), "the refusal: %s", s.msg);
  usleep (100 * 1000);
  cr_expect_eq (__atomic_load_n (&slow_frees, __ATOMIC_SEQ_CST), 1,
                "the job was freed %d times", slow_frees);
  cr_expect_eq (__atomic_load_n (&slow_steps, __ATOMIC_SEQ_CST), 0, "its thread ran");
}
