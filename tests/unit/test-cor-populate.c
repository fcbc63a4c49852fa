/* Unit tests: the engine's background population (src/cor: the streamer,
 * cor_stream_*, and readahead, both built on cor_populate) on an active
 * disk over a file:// parent, through the public API only
 * (cor-fixture.h):
 *  - the streamer fills every block with the parent's bytes, and then
 *    says complete;
 *  - the streamer leaves blocks that were written or zeroed before it
 *    alone (it never overwrites dirty blocks);
 *  - the streamer racing guest writes all over the disk: every write
 *    survives, every unwritten byte is the parent's;
 *  - a guest fault fetches exactly the blocks it covers, and readahead
 *    exactly the configured window after a sequential pair of reads. */
#include <pthread.h>

#include "cor-fixture.h"

#define BS (64 * KiB)

static void
setup (void)
{
  fx_setup (&(struct fx_opts) { .size = MiB, .block_size = BS });
}

TestSuite (cor_populate, .init = setup, .fini = fx_teardown);

static void
start_stream (void)
{
  int err = 0;
  cr_assert_eq (cor_stream_start (fx_d, &err), 0, "stream start: %s", strerror (err));
  cr_assert (fx_wait_stream ("complete"), "the stream did not complete in 10 s");
}

Test (cor_populate, stream_fills_every_block)
{
  unsigned char *got = malloc (MiB);
  struct cor_status st;

  cr_assert_not_null (got);
  start_stream ();
  cr_expect_eq (fx_count (META_PRESENT), cor_disk_nr_blocks (fx_d),
                "a complete stream left blocks missing");
  cr_expect_eq (fx_count (META_DIRTY), 0, "the stream made blocks dirty");
  /* The parent changes: every read must now come from the overlay. */
  memset (got, 0x5a, MiB);
  fx_parent_write (0, got, MiB);
  fx_read (got, MiB, 0);
  cr_expect (fx_is_pat (got, 0, MiB), "the streamed overlay is not the parent's image");
  cor_disk_status (fx_d, &st);
  cr_expect_eq (st.background_fetched_bytes, MiB, "streamed %llu bytes of a 1 MiB disk",
                (unsigned long long) st.background_fetched_bytes);
  free (got);
}

Test (cor_populate, stream_keeps_dirty_blocks)
{
  unsigned char buf[BS], got[BS];
  int err = 0;

  memset (buf, 0xd1, sizeof buf);
  fx_write (buf, BS, 2 * BS);                   /* whole block 2 */
  fx_write (buf, 100, 5 * BS + 1000);           /* part of block 5 */
  cr_assert_eq (cor_zero (fx_d, 7 * BS, BS, &err), 0);   /* whole block 7 */
  start_stream ();
  cr_expect_eq (fx_count (META_DIRTY), 3, "the stream changed the dirty bits");
  fx_read (got, BS, 2 * BS);
  cr_expect (fx_is_byte (got, 0xd1, BS), "the stream overwrote a written block");
  fx_read (got, BS, 5 * BS);
  cr_expect (fx_is_pat (got, 5 * BS, 1000) && fx_is_byte (got + 1000, 0xd1, 100) &&
             fx_is_pat (got + 1100, 5 * BS + 1100, BS - 1100),
             "the stream overwrote a partly written block");
  fx_read (got, BS, 7 * BS);
  cr_expect (fx_is_byte (got, 0, BS), "the stream overwrote a zeroed block");
  fx_read (got, BS, 8 * BS);
  cr_expect (fx_is_pat (got, 8 * BS, BS), "an unwritten block is not the parent's");
}

/* ---- the streamer racing writes: 4 KiB blocks ---- */

#define RBS (4 * KiB)
#define RSIZE (2 * MiB)
#define WSIZE (8 * MiB)

static void
setup_race (void)
{
  fx_setup (&(struct fx_opts) { .size = WSIZE, .block_size = RBS });
}

TestSuite (cor_populate_race, .init = setup_race, .fini = fx_teardown);

/* Writer n writes 32 bytes at offset 64 * (n + 1) of every other block
 * (n = 0: even blocks from the end down, n = 1: odd blocks up), while
 * the streamer fills the disk from the start.  The streamer gives way
 * to guest writes for up to 2 s, then fetches a chunk anyway: the
 * writers are paced to last longer than that (about 3 s), so some of
 * their writes meet blocks that the streamer is fetching. */
static void *
race_writer (void *arg)
{
  int n = (int) (intptr_t) arg;
  uint64_t nr = WSIZE / RBS;
  unsigned char buf[32];

  memset (buf, 0xe0 + n, sizeof buf);
  for (uint64_t i = 0; i < nr / 2; i++) {
    uint64_t blk = n == 0 ? nr - 2 - 2 * i : 2 * i + 1;
    int err = 0;
    if (cor_write (fx_d, buf, sizeof buf, blk * RBS + 64 * (n + 1), &err) == -1)
      return (void *) (intptr_t) err;
    usleep (3000);
  }
  return NULL;
}

Test (cor_populate_race, stream_racing_writes_keeps_them)
{
  pthread_t t[2];
  unsigned char *got = malloc (WSIZE);
  struct cor_status st;
  void *ret;
  int err = 0;

  cr_assert_not_null (got);
  cr_assert_eq (cor_stream_start (fx_d, &err), 0);
  for (int n = 0; n < 2; n++)
    cr_assert_eq (pthread_create (&t[n], NULL, race_writer, (void *) (intptr_t) n), 0);
  for (int n = 0; n < 2; n++) {
    pthread_join (t[n], &ret);
    cr_assert_null (ret, "writer %d: %s", n, strerror ((int) (intptr_t) ret));
  }
  cor_disk_status (fx_d, &st);
  cr_assert_gt (st.background_fetched_bytes, 0, "the streamer fetched nothing while the "
                "writers ran: no race");
  cr_assert (fx_wait_stream ("complete"), "the stream did not complete in 10 s");
  fx_read (got, WSIZE, 0);
  for (uint64_t blk = 0; blk < WSIZE / RBS; blk++) {
    int n = blk % 2 == 0 ? 0 : 1;
    uint64_t at = 64 * (n + 1), base = blk * RBS;
    const unsigned char *b = got + base;
    cr_assert (fx_is_pat (b, base, at) && fx_is_byte (b + at, 0xe0 + n, 32) &&
               fx_is_pat (b + at + 32, base + at + 32, RBS - at - 32),
               "block %llu: a write lost to the streamer, or the parent's bytes around it",
               (unsigned long long) blk);
  }
  cr_expect_eq (fx_count (META_DIRTY), WSIZE / RBS);
  free (got);
}

/* ---- exactly the blocks asked for ---- */

#define RA_BLOCKS 16

static void
setup_ra (void)
{
  fx_setup (&(struct fx_opts) { .size = RSIZE, .block_size = RBS,
                                .readahead = RA_BLOCKS * RBS });
}

TestSuite (cor_populate_ra, .init = setup_ra, .fini = fx_teardown);

/* The present blocks are exactly [first, end). */
static bool
present_exactly (uint64_t first, uint64_t end)
{
  struct meta_disk *md = cor_disk_meta (fx_d);
  uint64_t nr = cor_disk_nr_blocks (fx_d);

  return meta_next (md, META_PRESENT, true, 0) == (first < end ? first : nr) &&
    (first >= end || meta_next (md, META_PRESENT, false, first) == end) &&
    meta_next (md, META_PRESENT, true, end) == nr;
}

Test (cor_populate_ra, fault_fetches_exactly_its_blocks)
{
  unsigned char got[3 * RBS];

  /* Bytes in blocks 10 to 12, starting and ending inside them. */
  fx_read (got, 2 * RBS, 10 * RBS + RBS - 1);
  cr_expect (present_exactly (10, 13), "a fault made other blocks than 10-12 present");
  cr_expect (fx_is_pat (got, 10 * RBS + RBS - 1, 2 * RBS));
}

Test (cor_populate_ra, readahead_fetches_the_window)
{
  unsigned char got[RBS * (RA_BLOCKS + 2)];
  uint64_t deadline = now_ns () + 10 * NS_PER_SEC;

  /* Two reads in a row (blocks 0 and 1): readahead then fetches the
   * next RA_BLOCKS blocks, 2 to 17, and no more. */
  fx_read (got, RBS, 0);
  fx_read (got, RBS, RBS);
  while (fx_count (META_PRESENT) < RA_BLOCKS + 2 && now_ns () < deadline)
    usleep (5000);
  usleep (200000);               /* room for a prefetch too many */
  cr_expect (present_exactly (0, RA_BLOCKS + 2),
             "readahead made %llu blocks present, expected blocks 0-%d",
             (unsigned long long) fx_count (META_PRESENT), RA_BLOCKS + 1);
  memset (got, 0, sizeof got);
  fx_parent_write (0, got, sizeof got);
  fx_read (got, sizeof got, 0);
  cr_expect (fx_is_pat (got, 0, sizeof got), "the prefetched blocks are not the parent's");
  struct cor_status st;
  cor_disk_status (fx_d, &st);
  cr_expect_eq (st.fetched_bytes, (RA_BLOCKS + 2) * RBS, "fetched %llu bytes",
                (unsigned long long) st.fetched_bytes);
}
