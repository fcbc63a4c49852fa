/* corfs: mirror pivot and abort (DESIGN.md "Write modes").
 *
 * Thread model: ctl's command thread.  Both hold d->owner_lock (scoped)
 * for their whole run, abort across its copy, flush and re-pin (see
 * "What waits under owner_lock" in cor-internal.h); abort's copy is one
 * step at a time through cor_abort_copy_next, which a job can drive.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "common/cleanup.h"
#include "common/log.h"
#include "common/util.h"
#include "cor/cor-internal.h"
#include "remote/remote.h"

/* Must be called with d->owner_lock held.  May the pivot start (an
 * active mirror whose copy is complete)?  0 or -1 with errbuf. */
static int
pivot_check_unlocked (struct cor_disk *d, const struct meta_record *rec, char *errbuf,
                      size_t len)
{
  uint64_t present;

  if (!d->mirror) {
    snprintf (errbuf, len, "disk %s is not in mirror mode", d->name);
    return -1;
  }
  if (rec->state != META_ACTIVE) {
    snprintf (errbuf, len, "disk %s is %s: only an active mirror can pivot", d->name,
              meta_state_name (rec->state));
    return -1;
  }
  present = meta_count (d->md, META_PRESENT);
  if (present < d->nr_blocks) {
    snprintf (errbuf, len, "disk %s: pivot refused: the copy is not complete (%" PRIu64
              " of %" PRIu64 " blocks); wait for mirror-ready or abort", d->name,
              present, d->nr_blocks);
    return -1;
  }
  return 0;
}

/* Must be called with d->owner_lock held and every block owned (no write
 * in flight).  Check the copy again, flush, record standalone.  0 or -1
 * with errbuf. */
static int
pivot_owned_unlocked (struct cor_disk *d, struct meta_record *rec, char *errbuf, size_t len)
{
  int err;

  /* Again, now that no write can drop a block (a failed overlay write). */
  if (meta_count (d->md, META_PRESENT) < d->nr_blocks) {
    snprintf (errbuf, len, "disk %s: pivot refused: a block was dropped from the copy; "
              "wait for mirror-ready again", d->name);
    return -1;
  }
  /* After quiesce the parent's flush is cancelled, and a failed mirror
   * flush marks every block suspect: do not get there at shutdown. */
  if (__atomic_load_n (&d->e->stopping, __ATOMIC_SEQ_CST)) {
    snprintf (errbuf, len, "disk %s: pivot: not done: the daemon is shutting down", d->name);
    return -1;
  }
  if (cor_flush (d, &err) == -1) {
    snprintf (errbuf, len, "disk %s: flush before pivot: %s", d->name, strerror (err));
    return -1;
  }
  rec->state = META_STANDALONE;
  rec->mirror = false;
  rec->complete = true;
  if (meta_disk_update (d->md, rec) == -1) {
    snprintf (errbuf, len, "disk %s: recording the pivot: %s", d->name, strerror (errno));
    return -1;
  }
  d->mirror = false;
  __atomic_store_n (&d->owner, META_STANDALONE, __ATOMIC_SEQ_CST);
  return 0;
}

int
cor_pivot (struct cor_disk *d, char *errbuf, size_t len)
{
  struct meta_record rec;
  struct busy self;
  int r;

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&d->owner_lock);
    meta_disk_record (d->md, &rec);
    if (pivot_check_unlocked (d, &rec, errbuf, len) == -1)
      return -1;
    if (inflight_own_all (d, &self, "pivot", errbuf, len) == -1)    /* no write in flight */
      return -1;
    r = pivot_owned_unlocked (d, &rec, errbuf, len);
    inflight_release (d, &self);
    if (r == -1)
      return -1;
  }
  remote_release (d->remote);
  log_info ("cor: disk %s: pivoted: standalone, the old storage is no longer used", d->name);
  cor_emit_event (d, COR_EV_PIVOTED, d->size, d->size, NULL);
  return 0;
}

static bool
engine_stopping (const struct cor_disk *d)
{
  return __atomic_load_n (&d->e->stopping, __ATOMIC_SEQ_CST) != 0;
}

/* cor_abort cut short by the daemon's shutdown at block blk (the
 * documented message; the caller reverts the owner and unlocks). */
static void
abort_interrupted (struct cor_disk *d, uint64_t blk, char *errbuf, size_t len)
{
  snprintf (errbuf, len, "disk %s: abort: interrupted at offset %" PRIu64 " by the "
            "daemon's shutdown; the mirror is still active, abort again after the "
            "restart", d->name, block_offset (d, blk));
}

/* Blocks copied at most per step of abort's copy. */
#define ABORT_RUN 256

int
cor_abort_copy_next (struct cor_disk *d, uint64_t deadline_ns, const int *cancel,
                     uint64_t *blk, int *err)
{
  uint64_t b, end;

  if ((b = meta_next (d->md, META_DIRTY, true, 0)) >= d->nr_blocks &&
      (b = meta_next (d->md, META_SUSPECT, true, 0)) >= d->nr_blocks)
    return 0;
  *blk = b;
  if (cancel && __atomic_load_n (cancel, __ATOMIC_SEQ_CST)) {
    *err = ECANCELED;
    return -1;
  }
  end = b + 1;
  while (end < d->nr_blocks && end - b < ABORT_RUN &&
         (meta_test (d->md, META_DIRTY, end) || meta_test (d->md, META_SUSPECT, end)))
    end++;
  if (cor_writeback_range (d, b, end, deadline_ns, true, err) == -1)
    return -1;
  return 1;
}

/* Must be called with d->owner_lock held and new writes refused (the
 * owner handed off in memory).  Steps 2 and 3 of abort, up to the record:
 * copy whatever the parent may lack (a failed parent write, or every
 * present block after an unclean shutdown), flush, and pin the parent's
 * identity in rec.  owner_lock is held across all of this remote I/O so
 * that no record writer sees the disk between active and handed off;
 * cor_update_record waits for it at most the hold (EAGAIN), and the
 * daemon's shutdown (stopping, remote_cancel) cuts it short at the next
 * step.  0, or -1 with errbuf (the caller makes the mirror active again). */
static int
abort_settle_unlocked (struct cor_disk *d, struct meta_record *rec, char *errbuf, size_t len)
{
  uint64_t blk = 0;
  int r, err = 0;
  char id[META_ID_MAX];

  while ((r = cor_abort_copy_next (d, now_ns () + d->hold_ns, &d->e->stopping, &blk,
                                   &err)) == 1)
    ;
  if (r == -1) {
    if (engine_stopping (d))    /* cancelled, or the copy was (remote_cancel) */
      abort_interrupted (d, blk, errbuf, len);
    else
      snprintf (errbuf, len, "disk %s: abort: copying offset %" PRIu64 " to the parent "
                "failed (%s); the mirror is still active, try again", d->name,
                block_offset (d, blk), strerror (err));
    return -1;
  }
  /* After quiesce the parent's flush is cancelled, and a failed mirror
   * flush marks every block suspect: do not get there at shutdown. */
  if (engine_stopping (d)) {
    snprintf (errbuf, len, "disk %s: abort: interrupted by the daemon's shutdown before "
              "its final flush; the mirror is still active, abort again after the "
              "restart", d->name);
    return -1;
  }
  if (cor_flush (d, &err) == -1) {   /* commits, and flushes the parent (mirror) */
    snprintf (errbuf, len, "disk %s: abort: flush failed (%s); try again", d->name,
              strerror (err));
    return -1;
  }
  /* 3. Durably read-only: the parent is the disk now; pin what it is
   * (never an empty identity: that would accept any image later). */
  if (remote_repin (d->remote, true, d->size, id, sizeof id, now_ns () + d->hold_ns,
                    &err) == -1) {
    char why[1280];
    snprintf (errbuf, len, "disk %s: abort: cannot pin the identity of parent %s (%s); "
              "the mirror is still active, try again", d->name, remote_url (d->remote),
              cor_repin_why (d, err, why, sizeof why));
    return -1;
  }
  remote_set_modifying (d->remote, false);
  snprintf (rec->identity, sizeof rec->identity, "%s", id);
  return 0;
}

int
cor_abort (struct cor_disk *d, char *errbuf, size_t len)
{
  struct meta_record rec;
  struct busy self;
  int err = 0;

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&d->owner_lock);
    meta_disk_record (d->md, &rec);
    if (!d->mirror || rec.state != META_ACTIVE) {
      snprintf (errbuf, len, "disk %s: nothing to abort (not an active mirror)", d->name);
      return -1;
    }
    /* 1. Wait for the writes in flight; then no new writes (as in
     * cor_handoff: the state changes only once inflight_own_all succeeded, so an
     * abort that cannot get the disk never fails a guest write).  From
     * here until the copy ends, writes get EROFS; a copy that fails (or
     * is cut short by the shutdown) reverts the disk to an active
     * mirror. */
    if (inflight_own_all (d, &self, "abort", errbuf, len) == -1)
      return -1;
    __atomic_store_n (&d->owner, META_HANDED_OFF, __ATOMIC_SEQ_CST);
    inflight_release (d, &self);
    if (abort_settle_unlocked (d, &rec, errbuf, len) == -1) {
      __atomic_store_n (&d->owner, META_ACTIVE, __ATOMIC_SEQ_CST);
      return -1;
    }
    rec.state = META_HANDED_OFF;
    if (meta_disk_update (d->md, &rec) == -1) {
      snprintf (errbuf, len, "disk %s: recording the abort: %s", d->name, strerror (errno));
      return -1;
    }
  }
  cor_stream_cancel (d, &err);
  log_info ("cor: disk %s: mirror aborted: the parent is current; the disk is read-only",
            d->name);
  cor_emit_event (d, COR_EV_ABORTED, 0, 0, NULL);
  return 0;
}
