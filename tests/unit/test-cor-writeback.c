/* Unit tests: merge's write-back primitive (src/cor: cor_writeback) and
 * the overlay's sticky sync failure (cor_flush), on an active disk over a
 * parent-owned, writable file:// parent, through the public API only
 * (cor-fixture.h).  This program defines fdatasync itself, so the
 * file backend and the committer (linked in statically) call it: it
 * notes the dirty count when the parent is synced and fails on demand
 * for one file (the parent or the overlay), by inode.
 *  - write-back copies exactly the dirty blocks to the parent, clears
 *    their dirty bits and keeps them present; fetched clean blocks are
 *    not written (the parent's newer bytes stay);
 *  - the dirty bits are still set when the parent is synced (cleared only
 *    after the flush), and a failed parent flush leaves them set; a
 *    later write-back then succeeds;
 *  - a write-back of a range leaves the dirty blocks outside it alone;
 *  - a failed overlay sync fails the flush and then every flush (EIO)
 *    and write (EROFS), for good. */
#include <sys/syscall.h>

#include "cor-fixture.h"

#define BS (64 * KiB)

static ino_t fail_ino;          /* atomic: fdatasync of this inode fails ... */
static int fail_count;          /* atomic: ... this many more times */
static ino_t parent_ino;
static int64_t dirty_at_parent_sync = -1;   /* atomic: meta_count (DIRTY) then */
static int parent_syncs;        /* atomic */

static ino_t
ino_of (int fd)
{
  struct stat st;
  return fstat (fd, &st) == 0 ? st.st_ino : 0;
}

int
fdatasync (int fd)
{
  ino_t ino = ino_of (fd);

  if (ino && ino == __atomic_load_n (&parent_ino, __ATOMIC_SEQ_CST) && fx_d) {
    __atomic_store_n (&dirty_at_parent_sync, (int64_t) fx_count (META_DIRTY), __ATOMIC_SEQ_CST);
    __atomic_fetch_add (&parent_syncs, 1, __ATOMIC_SEQ_CST);
  }
  if (ino && ino == __atomic_load_n (&fail_ino, __ATOMIC_SEQ_CST) &&
      __atomic_load_n (&fail_count, __ATOMIC_SEQ_CST) > 0) {
    __atomic_fetch_sub (&fail_count, 1, __ATOMIC_SEQ_CST);
    errno = EIO;
    return -1;
  }
  return syscall (SYS_fdatasync, fd);
}

static ino_t
ino_of_path (const char *path)
{
  struct stat st;
  cr_assert_eq (stat (path, &st), 0);
  return st.st_ino;
}

static void
setup (void)
{
  fx_setup (&(struct fx_opts) { .size = MiB, .block_size = BS, .parent_owned = true });
  __atomic_store_n (&parent_ino, ino_of_path (fx_parent), __ATOMIC_SEQ_CST);
}

TestSuite (cor_writeback, .init = setup, .fini = fx_teardown);

static int64_t
writeback_by (uint64_t first, uint64_t end, uint64_t deadline_ns, int *err)
{
  *err = 0;
  return cor_writeback (fx_d, first, end, deadline_ns, err);
}

static int64_t
writeback (uint64_t first, uint64_t end, int *err)
{
  return writeback_by (first, end, now_ns () + 5 * NS_PER_SEC, err);
}

/* Write 0xb0 + blk over all of block blk, or its bytes [100, 200). */
static void
dirty_block (uint64_t blk, bool whole)
{
  unsigned char buf[BS];

  memset (buf, 0xb0 + (int) blk, sizeof buf);
  if (whole)
    fx_write (buf, BS, blk * BS);
  else
    fx_write (buf, 100, blk * BS + 100);
}

/* Does the parent's block blk hold what dirty_block wrote (written), or
 * its original bytes? */
static bool
parent_block (uint64_t blk, bool whole, bool written)
{
  unsigned char got[BS];
  uint64_t base = blk * BS;

  fx_parent_read (base, got, BS);
  if (!written)
    return fx_is_pat (got, base, BS);
  if (whole)
    return fx_is_byte (got, 0xb0 + (int) blk, BS);
  return fx_is_pat (got, base, 100) && fx_is_byte (got + 100, 0xb0 + (int) blk, 100) &&
    fx_is_pat (got + 200, base + 200, BS - 200);
}

Test (cor_writeback, copies_dirty_blocks_only)
{
  unsigned char buf[BS];
  int err;

  dirty_block (1, true);
  dirty_block (3, false);
  fx_read (buf, BS, 6 * BS);                    /* fetched, clean */
  memset (buf, 0x99, sizeof buf);
  fx_parent_write (6 * BS, buf, BS);            /* the parent moves on */
  cr_assert_eq (writeback (0, cor_disk_nr_blocks (fx_d), &err), 2 * BS,
                "write-back: %s", strerror (err));
  cr_expect (parent_block (1, true, true), "a dirty block was not written to the parent");
  cr_expect (parent_block (3, false, true), "a partly written block was not written whole");
  for (uint64_t b = 0; b < cor_disk_nr_blocks (fx_d); b++)
    if (b != 1 && b != 3 && b != 6)
      cr_expect (parent_block (b, true, false), "clean block %llu was written",
                 (unsigned long long) b);
  fx_parent_read (6 * BS, buf, BS);
  cr_expect (fx_is_byte (buf, 0x99, BS), "a fetched clean block was written back");
  cr_expect_eq (fx_count (META_DIRTY), 0, "dirty bits left after a write-back");
  cr_expect (fx_bit (META_PRESENT, 1) && fx_bit (META_PRESENT, 3),
             "written-back blocks are no longer present");
  fx_read (buf, BS, BS);
  cr_expect (fx_is_byte (buf, 0xb1, BS), "a written-back block no longer reads back");
}

Test (cor_writeback, dirty_cleared_after_parent_flush)
{
  int err;

  dirty_block (2, true);
  dirty_block (4, true);
  cr_assert_eq (writeback (0, cor_disk_nr_blocks (fx_d), &err), 2 * BS,
                "write-back: %s", strerror (err));
  cr_expect_gt (__atomic_load_n (&parent_syncs, __ATOMIC_SEQ_CST), 0,
                "the write-back never synced the parent");
  cr_expect_eq (__atomic_load_n (&dirty_at_parent_sync, __ATOMIC_SEQ_CST), 2,
                "dirty blocks when the parent was synced: %lld, expected 2 (cleared before "
                "the flush?)", (long long) dirty_at_parent_sync);
  cr_expect_eq (fx_count (META_DIRTY), 0);
}

Test (cor_writeback, failed_parent_flush_keeps_dirty)
{
  int err;

  dirty_block (2, true);
  dirty_block (5, false);
  __atomic_store_n (&fail_ino, parent_ino, __ATOMIC_SEQ_CST);
  /* One failed sync: the kernel reports a lost write once, and the
   * retries of the flush must still fail (the loss is remembered). */
  __atomic_store_n (&fail_count, 1, __ATOMIC_SEQ_CST);
  cr_expect_eq (writeback_by (0, cor_disk_nr_blocks (fx_d), now_ns () + NS_PER_SEC, &err), -1,
                "a write-back whose parent flush failed succeeded");
  cr_expect_eq (fx_count (META_DIRTY), 2, "a failed write-back cleared dirty bits");
  cr_expect (fx_bit (META_DIRTY, 2) && fx_bit (META_DIRTY, 5));
  __atomic_store_n (&fail_count, 0, __ATOMIC_SEQ_CST);
  cr_expect_eq (writeback (0, cor_disk_nr_blocks (fx_d), &err), 2 * BS,
                "the write-back after the failure: %s", strerror (err));
  cr_expect_eq (fx_count (META_DIRTY), 0);
  cr_expect (parent_block (2, true, true) && parent_block (5, false, true),
             "the parent does not hold the writes after the second write-back");
}

Test (cor_writeback, range_leaves_the_rest_dirty)
{
  int err;

  dirty_block (1, true);
  dirty_block (2, true);
  dirty_block (8, true);
  cr_assert_eq (writeback (2, 4, &err), BS, "write-back: %s", strerror (err));
  cr_expect (fx_bit (META_DIRTY, 1) && fx_bit (META_DIRTY, 8) && !fx_bit (META_DIRTY, 2),
             "the dirty bits after a write-back of blocks 2-3 are wrong");
  cr_expect (parent_block (2, true, true), "block 2 was not written back");
  cr_expect (parent_block (1, true, false) && parent_block (8, true, false),
             "blocks outside the range were written back");
}

Test (cor_writeback, overlay_sync_failure_is_sticky)
{
  unsigned char buf[100];
  struct cor_status st;
  int err = 0;

  memset (buf, 0x42, sizeof buf);
  fx_write (buf, sizeof buf, 0);
  __atomic_store_n (&fail_ino, ino_of_path (fx_overlay), __ATOMIC_SEQ_CST);
  __atomic_store_n (&fail_count, 1, __ATOMIC_SEQ_CST);
  cr_expect_eq (cor_flush (fx_d, &err), -1, "a flush whose overlay sync failed succeeded");
  cr_expect_eq (__atomic_load_n (&fail_count, __ATOMIC_SEQ_CST), 0, "the overlay was not synced");
  err = 0;
  cr_expect_eq (cor_flush (fx_d, &err), -1, "a flush after a failed overlay sync succeeded");
  cr_expect_eq (err, EIO, "flush: %s, expected EIO", strerror (err));
  err = 0;
  cr_expect_eq (cor_write (fx_d, buf, sizeof buf, BS, &err), -1,
                "a write after a failed overlay sync succeeded");
  cr_expect_eq (err, EROFS, "write: %s, expected EROFS", strerror (err));
  cor_disk_status (fx_d, &st);
  cr_expect_str_eq (st.health, "failed");
}
