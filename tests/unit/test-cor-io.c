/* Unit tests: the engine's guest I/O (src/cor: cor_read, cor_write,
 * cor_zero, cor_flush) on an active disk over a file:// parent, through
 * the public API only (cor-fixture.h):
 *  - a cold read returns the parent's bytes and marks exactly the blocks
 *    it covers present (not dirty);
 *  - a second read is served from the overlay: the parent changed after
 *    the first read, the old bytes come back;
 *  - a write reads back and marks its blocks present, dirty and changed;
 *    the parent is not written;
 *  - a partial write into missing blocks fetches only the partly covered
 *    edge blocks and keeps their other bytes (read-modify-write);
 *  - a zeroed range reads as zeros, also after the parent changed and
 *    after a restart, and the bytes around it are the parent's;
 *  - flushed writes and bits survive a restart;
 *  - a read at the end is short, a write past it fails with ENOSPC;
 *  - a cold read racing a write on the same block, many times: the
 *    write always wins (the fetch never overwrites it). */
#include <pthread.h>

#include "cor-fixture.h"

#define BS (64 * KiB)

static void
setup (void)
{
  fx_setup (&(struct fx_opts) { .size = MiB, .block_size = BS });
}

TestSuite (cor_io, .init = setup, .fini = fx_teardown);

Test (cor_io, cold_read_fetches_and_marks_present)
{
  unsigned char buf[3000];
  uint64_t off = 2 * BS - 1000;   /* blocks 1 and 2 */

  cr_assert_eq (fx_count (META_PRESENT), 0);
  fx_read (buf, sizeof buf, off);
  cr_expect (fx_is_pat (buf, off, sizeof buf), "a cold read did not return the parent's bytes");
  cr_expect (fx_bit (META_PRESENT, 1) && fx_bit (META_PRESENT, 2),
             "the blocks a cold read covered are not present");
  cr_expect_eq (fx_count (META_PRESENT), 2, "a cold read of 2 blocks made %llu present",
                (unsigned long long) fx_count (META_PRESENT));
  cr_expect_eq (fx_count (META_DIRTY), 0, "a read made blocks dirty");
}

Test (cor_io, second_read_from_overlay)
{
  unsigned char buf[BS], other[BS];

  fx_read (buf, BS, 3 * BS);
  memset (other, 0x55, sizeof other);
  fx_parent_write (3 * BS, other, sizeof other);
  memset (buf, 0, sizeof buf);
  fx_read (buf, BS, 3 * BS);
  cr_expect (fx_is_pat (buf, 3 * BS, BS),
             "the second read went to the parent instead of the overlay");
  struct cor_status st;
  cor_disk_status (fx_d, &st);
  cr_expect_eq (st.fetched_bytes, BS, "fetched %llu bytes for two reads of one block",
                (unsigned long long) st.fetched_bytes);
}

Test (cor_io, write_reads_back_dirty)
{
  unsigned char buf[BS], got[BS], par[BS];

  memset (buf, 0xaa, sizeof buf);
  fx_write (buf, BS, 4 * BS);
  fx_read (got, BS, 4 * BS);
  cr_expect (fx_is_byte (got, 0xaa, BS), "a write does not read back");
  cr_expect (fx_bit (META_PRESENT, 4), "a written block is not present");
  cr_expect (fx_bit (META_DIRTY, 4), "a written block is not dirty");
  cr_expect (fx_bit (META_CHANGED, 4), "a written block is not changed");
  cr_expect_eq (fx_count (META_DIRTY), 1);
  fx_parent_read (4 * BS, par, BS);
  cr_expect (fx_is_pat (par, 4 * BS, BS), "a guest write reached the parent");
}

Test (cor_io, partial_write_fetches_the_rest)
{
  /* From the middle of block 5 to the middle of block 7: 5 and 7 are
   * partly covered (fetched), 6 whole (never fetched). */
  uint64_t off = 5 * BS + BS / 2, n = 2 * BS;
  unsigned char *buf = malloc (n), *got = malloc (3 * BS);
  struct cor_status st;

  cr_assert (buf && got);
  memset (buf, 0x3c, n);
  fx_write (buf, n, off);
  fx_read (got, 3 * BS, 5 * BS);
  cr_expect (fx_is_pat (got, 5 * BS, BS / 2),
             "the unwritten head of a partly written block is not the parent's");
  cr_expect (fx_is_byte (got + BS / 2, 0x3c, n), "the write does not read back");
  cr_expect (fx_is_pat (got + BS / 2 + n, off + n, BS / 2),
             "the unwritten tail of a partly written block is not the parent's");
  cor_disk_status (fx_d, &st);
  cr_expect_eq (st.fetched_bytes, 2 * BS, "fetched %llu bytes, expected the 2 edge blocks",
                (unsigned long long) st.fetched_bytes);
  cr_expect_eq (fx_count (META_DIRTY), 3);
  free (buf);
  free (got);
}

Test (cor_io, zero_range_reads_zeros_and_stays)
{
  /* Block 0 present first (fetched), then zero from its middle to 100
   * bytes into block 3. */
  uint64_t off = BS / 2, n = 3 * BS + 100 - BS / 2;
  unsigned char *got = malloc (5 * BS), *other = malloc (5 * BS);
  int err = 0;

  cr_assert (got && other);
  fx_read (got, 100, 0);
  cr_assert_eq (cor_zero (fx_d, off, n, &err), 0, "zero: %s", strerror (err));
  memset (other, 0x77, 5 * BS);
  fx_parent_write (0, other, 5 * BS);
  for (int round = 0; round < 2; round++) {
    fx_read (got, 5 * BS, 0);
    cr_expect (fx_is_pat (got, 0, off), "round %d: the bytes before the zeroed range changed",
               round);
    cr_expect (fx_is_byte (got + off, 0, n), "round %d: the zeroed range does not read as zeros",
               round);
    cr_expect (fx_is_pat (got + off + n, off + n, BS - 100),
               "round %d: the bytes after the zeroed range are not the parent's old ones", round);
    for (uint64_t b = 0; b < 4; b++)
      cr_expect (fx_bit (META_PRESENT, b) && fx_bit (META_DIRTY, b),
                 "round %d: zeroed block %llu is not present and dirty", round,
                 (unsigned long long) b);
    if (round == 0) {
      cr_assert_eq (cor_flush (fx_d, &err), 0);
      fx_restart ();
    }
  }
  free (got);
  free (other);
}

Test (cor_io, flushed_write_survives_restart)
{
  unsigned char buf[1000], got[1000];
  int err = 0;

  memset (buf, 0xc1, sizeof buf);
  fx_write (buf, sizeof buf, 9 * BS + 10);
  cr_assert_eq (cor_flush (fx_d, &err), 0, "flush: %s", strerror (err));
  fx_restart ();
  cr_expect (fx_bit (META_PRESENT, 9) && fx_bit (META_DIRTY, 9),
             "the written block's bits did not survive a restart");
  cr_expect_eq (fx_count (META_DIRTY), 1);
  memset (buf, 0x11, sizeof buf);
  fx_parent_write (9 * BS + 10, buf, sizeof buf);
  fx_read (got, sizeof got, 9 * BS + 10);
  cr_expect (fx_is_byte (got, 0xc1, sizeof got), "the write did not survive a restart");
  fx_read (got, 10, 9 * BS);
  cr_expect (fx_is_pat (got, 9 * BS, 10), "the fetched head of the block did not survive");
}

Test (cor_io, end_of_disk)
{
  unsigned char buf[200];
  int err = 0;

  cr_expect_eq (cor_read (fx_d, buf, sizeof buf, MiB - 50, &err), 50,
                "a read across the end is not short");
  cr_expect (fx_is_pat (buf, MiB - 50, 50));
  cr_expect_eq (cor_read (fx_d, buf, sizeof buf, MiB, &err), 0, "a read at the end is not empty");
  cr_expect_eq (cor_write (fx_d, buf, sizeof buf, MiB - 50, &err), -1,
                "a write across the end succeeded");
  cr_expect_eq (err, ENOSPC, "a write across the end: %s, expected ENOSPC", strerror (err));
}

/* ---- a cold read racing a write on the same block ---- */

/* 4 KiB blocks: 256 rounds, each on a block of its own, still missing. */
#define RBS (4 * KiB)
#define ROUNDS 256

static void
setup_race (void)
{
  fx_setup (&(struct fx_opts) { .size = ROUNDS * RBS, .block_size = RBS });
}

TestSuite (cor_io_race, .init = setup_race, .fini = fx_teardown);

struct race {
  pthread_barrier_t go;
  uint64_t blk;
  int round;
};

static void *
race_reader (void *arg)
{
  struct race *r = arg;
  unsigned char buf[512];
  int err = 0;

  pthread_barrier_wait (&r->go);
  cor_read (fx_d, buf, sizeof buf, r->blk * RBS + 100, &err);
  return NULL;
}

/* Even rounds write the whole block, odd ones 64 bytes inside it. */
static void
race_expect (struct race *r, const unsigned char *got)
{
  unsigned char c = (unsigned char) (r->round | 1);
  uint64_t base = r->blk * RBS;

  if (r->round % 2 == 0)
    cr_assert (fx_is_byte (got, c, RBS), "round %d: a whole-block write lost to a fetch",
               r->round);
  else {
    cr_assert (fx_is_pat (got, base, 300), "round %d: head not the parent's", r->round);
    cr_assert (fx_is_byte (got + 300, c, 64), "round %d: a partial write lost to a fetch",
               r->round);
    cr_assert (fx_is_pat (got + 364, base + 364, RBS - 364),
               "round %d: tail not the parent's", r->round);
  }
}

Test (cor_io_race, fetch_racing_write_keeps_the_write)
{
  unsigned char buf[RBS], got[RBS];

  for (int round = 0; round < ROUNDS; round++) {
    struct race r = { .blk = round, .round = round };
    pthread_t t;

    cr_assert (!fx_bit (META_PRESENT, r.blk));
    pthread_barrier_init (&r.go, NULL, 2);
    cr_assert_eq (pthread_create (&t, NULL, race_reader, &r), 0);
    memset (buf, round | 1, sizeof buf);
    pthread_barrier_wait (&r.go);
    if (round % 2 == 0)
      fx_write (buf, RBS, r.blk * RBS);
    else
      fx_write (buf, 64, r.blk * RBS + 300);
    pthread_join (t, NULL);
    pthread_barrier_destroy (&r.go);
    fx_read (got, RBS, r.blk * RBS);
    race_expect (&r, got);
    cr_assert (fx_bit (META_DIRTY, r.blk), "round %d: the written block is not dirty", round);
  }
}
