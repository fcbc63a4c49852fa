/* Unit tests: change generations (src/cor: cor_checkpoint,
 * cor_changed_extents, over meta's changed maps) on an active disk over a
 * file:// parent, through the public API only (cor-fixture.h):
 *  - a checkpoint starts generation 2; blocks written after it are the
 *    changes since 2, those before and after together the changes since
 *    1; reads (fetches) change nothing; a generation not yet started is
 *    refused (EINVAL);
 *  - the generation and its changes survive a clean restart, unwidened;
 *  - zeroing counts as a change. */
#include "cor-fixture.h"

#define BS (64 * KiB)

static void
setup (void)
{
  fx_setup (&(struct fx_opts) { .size = MiB, .block_size = BS });
}

TestSuite (cor_checkpoint, .init = setup, .fini = fx_teardown);

/* Changed blocks as a bit mask (16 blocks). */
static int
add_extent (void *opaque, uint64_t first, uint64_t nr)
{
  uint32_t *mask = opaque;

  for (uint64_t b = first; b < first + nr; b++)
    *mask |= 1u << b;
  return 0;
}

static uint32_t
changed_since (uint32_t gen)
{
  uint32_t mask = 0;
  bool widened = true;

  cr_assert_eq (cor_changed_extents (fx_d, gen, &widened, add_extent, &mask), 0,
                "changed extents since %u: %m", gen);
  cr_expect (!widened, "the changes since %u are widened", gen);
  return mask;
}

static void
write_block (uint64_t blk)
{
  unsigned char buf[100];

  memset (buf, 0x31, sizeof buf);
  fx_write (buf, sizeof buf, blk * BS + 7);
}

Test (cor_checkpoint, generations)
{
  unsigned char got[BS];
  char msg[1024] = "";
  struct cor_status st;
  bool widened;
  uint32_t mask;

  cr_assert_eq (cor_disk_nr_blocks (fx_d), 16);
  write_block (1);
  fx_read (got, BS, 9 * BS);
  cr_expect_eq (changed_since (1), 1u << 1, "changes since 1: %#x", changed_since (1));
  cr_assert_eq (cor_checkpoint (fx_d, msg, sizeof msg), 2, "checkpoint: %s", msg);
  cr_expect_eq (changed_since (2), 0, "changes in a new generation: %#x", changed_since (2));
  write_block (4);
  write_block (5);
  cr_expect_eq (changed_since (2), (1u << 4) | (1u << 5), "changes since 2: %#x",
                changed_since (2));
  cr_expect_eq (changed_since (1), (1u << 1) | (1u << 4) | (1u << 5), "changes since 1: %#x",
                changed_since (1));
  errno = 0;
  mask = 0;
  cr_expect_eq (cor_changed_extents (fx_d, 3, &widened, add_extent, &mask), -1,
                "changes since a generation not started were given");
  cr_expect_eq (errno, EINVAL);
  cor_disk_status (fx_d, &st);
  cr_expect_eq (st.generation, 2);

  int err = 0;
  cr_assert_eq (cor_flush (fx_d, &err), 0);
  fx_restart ();
  cor_disk_status (fx_d, &st);
  cr_expect_eq (st.generation, 2, "the generation after a restart: %u", st.generation);
  cr_expect_eq (changed_since (2), (1u << 4) | (1u << 5), "changes since 2 after a restart: %#x",
                changed_since (2));
  cr_expect_eq (changed_since (1), (1u << 1) | (1u << 4) | (1u << 5),
                "changes since 1 after a restart: %#x", changed_since (1));
}

Test (cor_checkpoint, zero_is_a_change)
{
  char msg[1024] = "";
  int err = 0;

  cr_assert_eq (cor_checkpoint (fx_d, msg, sizeof msg), 2, "checkpoint: %s", msg);
  cr_assert_eq (cor_zero (fx_d, 3 * BS, 2 * BS, &err), 0);
  cr_expect_eq (changed_since (2), (1u << 3) | (1u << 4), "changes since 2: %#x",
                changed_since (2));
}
