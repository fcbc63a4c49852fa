/* Unit tests: the owner-state transitions (src/cor: cor_activate,
 * cor_handoff, cor_reclaim; docs/design.md "Disk states" and rule 10) over a
 * file:// parent, through the public API only (cor-fixture.h):
 *  - a hand-off makes the disk read-only (EROFS for writes and zeroing,
 *    reads still served), durably: still so after a restart;
 *  - epochs: the same epoch for the same transition is a no-op, a lower
 *    or equal one for another transition is refused as stale; reclaim
 *    with a higher epoch makes the disk writable again;
 *  - reclaim of a disk that is not handed off is refused, unchanged;
 *  - an incoming disk reads through (the parent's current bytes, nothing
 *    kept), refuses writes (EROFS) and streaming (EBUSY);
 *  - activate refuses a writable parent unless forced; forced, it drops
 *    the kernel's pages (the callback), pins the parent, records active
 *    with the epoch, and the disk then keeps what it reads and takes
 *    writes; an older epoch is then stale;
 *  - a record left "activating" (a crash between activation's two
 *    records) is finished at mount: active, same epoch, parent pinned,
 *    writes accepted. */
#include "cor-fixture.h"

#define BS (64 * KiB)

static void
setup_active (void)
{
  fx_setup (&(struct fx_opts) { .size = MiB, .block_size = BS });
}

TestSuite (cor_owner, .init = setup_active, .fini = fx_teardown);

static void
expect_record (enum meta_state state, uint64_t epoch)
{
  struct meta_record rec;

  meta_disk_record (cor_disk_meta (fx_d), &rec);
  cr_expect_eq (rec.state, state, "state %s, expected %s", meta_state_name (rec.state),
                meta_state_name (state));
  cr_expect_eq (rec.epoch, epoch, "epoch %llu, expected %llu",
                (unsigned long long) rec.epoch, (unsigned long long) epoch);
}

static int
try_write (uint64_t off)
{
  unsigned char buf[BS];
  int err = 0;

  memset (buf, 0x6b, sizeof buf);
  return cor_write (fx_d, buf, sizeof buf, off, &err) == 0 ? 0 : err;
}

Test (cor_owner, handoff_makes_read_only)
{
  unsigned char got[BS];
  char msg[1024] = "";
  int err = 0;

  cr_assert_eq (try_write (BS), 0);
  cr_assert_eq (cor_handoff (fx_d, 2, msg, sizeof msg), 0, "handoff: %s", msg);
  for (int round = 0; round < 2; round++) {
    expect_record (META_HANDED_OFF, 2);
    cr_expect (!cor_disk_writable (fx_d), "round %d: a handed-off disk is writable", round);
    cr_expect_eq (try_write (2 * BS), EROFS, "round %d: a write was not refused with EROFS",
                  round);
    cr_expect_eq (cor_zero (fx_d, 3 * BS, BS, &err), -1, "round %d: zeroing succeeded", round);
    cr_expect_eq (err, EROFS);
    fx_read (got, BS, BS);
    cr_expect (fx_is_byte (got, 0x6b, BS), "round %d: the write before the hand-off is lost",
               round);
    fx_read (got, BS, 2 * BS);
    cr_expect (fx_is_pat (got, 2 * BS, BS), "round %d: a refused write changed the disk", round);
    if (round == 0)
      fx_restart ();
  }
}

Test (cor_owner, epochs)
{
  char msg[1024] = "";

  cr_assert_eq (cor_handoff (fx_d, 2, msg, sizeof msg), 0, "handoff: %s", msg);
  cr_expect_eq (cor_handoff (fx_d, 2, msg, sizeof msg), 0, "a repeated handoff was refused");
  msg[0] = '\0';
  cr_expect_eq (cor_handoff (fx_d, 1, msg, sizeof msg), -1, "an older handoff was accepted");
  cr_expect_not_null (strstr (msg, "stale"), "not refused as stale: %s", msg);
  msg[0] = '\0';
  cr_expect_eq (cor_reclaim (fx_d, 2, msg, sizeof msg), -1,
                "a reclaim with the hand-off's epoch was accepted");
  cr_expect_not_null (strstr (msg, "stale"), "not refused as stale: %s", msg);
  expect_record (META_HANDED_OFF, 2);
  cr_expect_eq (try_write (0), EROFS);

  cr_assert_eq (cor_reclaim (fx_d, 3, msg, sizeof msg), 0, "reclaim: %s", msg);
  expect_record (META_ACTIVE, 3);
  cr_expect (cor_disk_writable (fx_d), "a reclaimed disk is not writable");
  cr_expect_eq (try_write (0), 0, "a write to a reclaimed disk failed");
  cr_expect_eq (cor_reclaim (fx_d, 3, msg, sizeof msg), 0, "a repeated reclaim was refused");
  msg[0] = '\0';
  cr_expect_eq (cor_handoff (fx_d, 3, msg, sizeof msg), -1,
                "a handoff with the reclaim's epoch was accepted");
  cr_expect_not_null (strstr (msg, "stale"), "not refused as stale: %s", msg);
  expect_record (META_ACTIVE, 3);
}

Test (cor_owner, reclaim_needs_handed_off)
{
  char msg[1024] = "";

  cr_expect_eq (cor_reclaim (fx_d, 5, msg, sizeof msg), -1, "an active disk was reclaimed");
  cr_expect_not_null (strstr (msg, "not handed off"), "reason: %s", msg);
  expect_record (META_ACTIVE, 0);
  cr_expect_eq (try_write (0), 0);
}

/* ---- incoming and activation ---- */

static void
setup_incoming (void)
{
  fx_setup (&(struct fx_opts) { .size = MiB, .block_size = BS, .state = META_INCOMING,
                                .no_identity = true });
}

TestSuite (cor_incoming, .init = setup_incoming, .fini = fx_teardown);

static int invalidated = -1;

static void
note_invalidate (void *opaque, size_t disk_index)
{
  invalidated = (int) disk_index;
}

Test (cor_incoming, reads_through_refuses_writes)
{
  unsigned char got[BS], other[BS];
  int err = 0;

  fx_read (got, BS, 0);
  cr_expect (fx_is_pat (got, 0, BS), "an incoming read is not the parent's bytes");
  cr_expect_eq (fx_count (META_PRESENT), 0, "an incoming disk kept what it read");
  memset (other, 0x21, sizeof other);
  fx_parent_write (0, other, sizeof other);     /* the source writes on */
  fx_read (got, BS, 0);
  cr_expect (fx_is_byte (got, 0x21, BS), "an incoming read did not see the source's write");
  cr_expect_eq (try_write (BS), EROFS, "an incoming disk took a write");
  cr_expect (!cor_disk_writable (fx_d));
  cr_expect (cor_disk_openable_rw (fx_d), "an incoming disk cannot be opened read-write");
  cr_expect_eq (cor_stream_start (fx_d, &err), -1, "an incoming disk started streaming");
  cr_expect_eq (err, EBUSY);
}

Test (cor_incoming, activate)
{
  unsigned char got[BS], other[BS];
  char msg[1024] = "";
  struct meta_record rec;

  cor_set_invalidate_fn (fx_e, note_invalidate, NULL);
  cr_assert_eq (chmod (fx_parent, 0600), 0);
  cr_expect_eq (cor_activate (fx_d, 5, false, msg, sizeof msg), -1,
                "activate over a writable parent without force succeeded");
  cr_expect_not_null (strstr (msg, "writable"), "reason: %s", msg);
  expect_record (META_INCOMING, 0);
  cr_expect_eq (invalidated, -1, "a refused activation dropped the page cache");

  cr_assert_eq (cor_activate (fx_d, 5, true, msg, sizeof msg), 0, "activate: %s", msg);
  expect_record (META_ACTIVE, 5);
  cr_expect_eq (invalidated, 0, "activation did not drop the kernel's pages of disk 0");
  meta_disk_record (cor_disk_meta (fx_d), &rec);
  cr_expect_neq (rec.identity[0], '\0', "activation pinned no parent identity");
  cr_expect_eq (cor_activate (fx_d, 5, true, msg, sizeof msg), 0,
                "a repeated activate was refused");
  msg[0] = '\0';
  cr_expect_eq (cor_activate (fx_d, 4, true, msg, sizeof msg), -1,
                "an older activate was accepted");
  cr_expect_not_null (strstr (msg, "stale"), "not refused as stale: %s", msg);

  fx_read (got, BS, 0);
  cr_expect_eq (fx_count (META_PRESENT), 1, "an active disk did not keep what it read");
  memset (other, 0x21, sizeof other);
  fx_parent_write (0, other, sizeof other);
  fx_read (got, BS, 0);
  cr_expect (fx_is_pat (got, 0, BS), "an activated disk read the parent again");
  cr_expect_eq (try_write (BS), 0, "an activated disk refused a write");
}

static void
setup_activating (void)
{
  fx_setup (&(struct fx_opts) { .size = MiB, .block_size = BS, .state = META_ACTIVATING,
                                .epoch = 7, .no_identity = true });
}

TestSuite (cor_activating, .init = setup_activating, .fini = fx_teardown);

Test (cor_activating, finished_at_mount)
{
  struct meta_record rec;
  char msg[1024] = "";

  expect_record (META_ACTIVE, 7);
  cr_assert_eq (meta_record_get (fx_m, "d", &rec), 0);
  cr_expect_eq (rec.state, META_ACTIVE, "the finished activation is not durable");
  cr_expect_neq (rec.identity[0], '\0', "the finished activation pinned no parent");
  cr_expect (cor_disk_writable (fx_d), "the disk is not writable after the mount finished it");
  cr_expect_eq (try_write (0), 0);
  cr_expect_eq (cor_activate (fx_d, 7, true, msg, sizeof msg), 0,
                "activate with the same epoch again was refused: %s", msg);
  expect_record (META_ACTIVE, 7);
}
