/* corfs: a mirror's abort (docs/design.md "Write modes"), in the pieces that
 * merge's abort job drives (src/merge/abort.c), and the one derivation
 * of "blocks the parent may lack" that abort and merge both walk.
 *
 * Abort: 1. own every block, then refuse new writes (the owner handed
 * off in memory); 2. copy every dirty or suspect block to the parent,
 * one run at a time (cor_abort_copy); 3. flush, pin the parent's
 * identity, record handed-off.  A copy that fails, or is cut short by
 * the daemon's shutdown, makes the disk an active mirror again.
 *
 * Notes on the thread model: all three steps run on one thread, a merge
 * job's (or cor_abort's caller).  cor_abort_begin takes d->owner_lock
 * and returns holding it; cor_abort_end releases it, whatever the
 * outcome; in between the caller holds it across cor_abort_copy's
 * remote I/O, which is what keeps every other record writer out while
 * the disk is neither active nor handed off (see "What waits under
 * owner_lock" in cor-internal.h: cor_update_record waits for it at most
 * the hold, and the daemon's shutdown cuts the copy short at the next
 * run).  Between the steps the caller may take its own leaf locks (the
 * job's mg->lock) but never another engine lock.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"
#include "cor/cor-internal.h"
#include "remote/remote.h"

uint64_t
cor_next_unsettled_run (struct cor_disk *d, uint64_t from, uint64_t max, uint64_t *end)
{
  uint64_t a = meta_next (d->md, META_DIRTY, true, from);
  uint64_t b = meta_next (d->md, META_SUSPECT, true, from);
  uint64_t blk = a < b ? a : b, e = blk + 1;

  if (blk < d->nr_blocks)
    while (e < d->nr_blocks && e - blk < max &&
           (meta_test (d->md, META_DIRTY, e) || meta_test (d->md, META_SUSPECT, e)))
      e++;
  *end = e;
  return blk;
}

static bool
engine_stopping (const struct cor_disk *d)
{
  return __atomic_load_n (&d->e->stopping, __ATOMIC_SEQ_CST) != 0;
}

int
cor_abort_begin (struct cor_disk *d, char *errbuf, size_t len)
{
  struct meta_record rec;
  struct busy self;

  pthread_mutex_lock (&d->owner_lock);
  meta_disk_record (d->md, &rec);
  if (!d->mirror || rec.state != META_ACTIVE) {
    snprintf (errbuf, len, "disk %s: nothing to abort (not an active mirror)", d->name);
    pthread_mutex_unlock (&d->owner_lock);
    return -1;
  }
  /* 1. Wait for the writes in flight; then no new writes (as in
   * cor_handoff: the state changes only once inflight_own_all succeeded,
   * so an abort that cannot get the disk never fails a guest write).
   * From here until cor_abort_end, writes get EROFS. */
  if (inflight_own_all (d, &self, "abort", errbuf, len) == -1) {
    pthread_mutex_unlock (&d->owner_lock);
    return -1;
  }
  __atomic_store_n (&d->owner, META_HANDED_OFF, __ATOMIC_SEQ_CST);
  inflight_release (d, &self);
  return 0;
}

int64_t
cor_abort_copy (struct cor_disk *d, uint64_t first, uint64_t end, int *err)
{
  uint64_t deadline_ns = now_ns () + d->hold_ns;   /* a fresh hold per run */
  int64_t r;

  if (engine_stopping (d)) {
    *err = ECANCELED;
    return -1;
  }
  r = cor_writeback_range (d, first, end, deadline_ns, true, err);
  if (r == -1 && *err == 0)
    *err = EIO;
  return r;
}

/* The copy failed at block blk with err: the message (ECANCELED, or any
 * failure once the daemon is stopping: remote_cancel, is its shutdown). */
static void
copy_failed (struct cor_disk *d, int err, uint64_t blk, char *errbuf, size_t len)
{
  if (err == ECANCELED || engine_stopping (d))
    snprintf (errbuf, len, "disk %s: abort: interrupted at offset %" PRIu64 " by the "
              "daemon's shutdown; the mirror is still active, abort again after the "
              "restart", d->name, block_offset (d, blk));
  else
    snprintf (errbuf, len, "disk %s: abort: copying offset %" PRIu64 " to the parent "
              "failed (%s); the mirror is still active, try again", d->name,
              block_offset (d, blk), strerror (err));
}

/* Must be called with d->owner_lock held and new writes refused, every
 * block copied.  3., up to the record: flush, and pin the parent's
 * identity in rec.  0, or -1 with errbuf (the caller makes the mirror
 * active again). */
static int
settle_unlocked (struct cor_disk *d, struct meta_record *rec, char *errbuf, size_t len)
{
  char id[META_ID_MAX];
  int err = 0;

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
  /* Durably read-only: the parent is the disk now; pin what it is
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
cor_abort_end (struct cor_disk *d, int copy_err, uint64_t blk, char *errbuf, size_t len)
{
  struct meta_record rec;
  int err = 0;

  meta_disk_record (d->md, &rec);
  if (copy_err)
    copy_failed (d, copy_err, blk, errbuf, len);
  if (copy_err || settle_unlocked (d, &rec, errbuf, len) == -1) {
    __atomic_store_n (&d->owner, META_ACTIVE, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock (&d->owner_lock);
    return -1;
  }
  rec.state = META_HANDED_OFF;
  if (meta_disk_update (d->md, &rec) == -1) {
    snprintf (errbuf, len, "disk %s: recording the abort: %s", d->name, strerror (errno));
    pthread_mutex_unlock (&d->owner_lock);
    return -1;
  }
  pthread_mutex_unlock (&d->owner_lock);
  cor_stream_cancel (d, &err);
  log_info ("cor: disk %s: mirror aborted: the parent is current; the disk is read-only",
            d->name);
  cor_emit_event (d, COR_EV_ABORTED, 0, 0, NULL);
  return 0;
}

int
cor_abort (struct cor_disk *d, char *errbuf, size_t len)
{
  uint64_t blk = 0, end;
  int err = 0;

  if (cor_abort_begin (d, errbuf, len) == -1)
    return -1;
  while ((blk = cor_next_unsettled_run (d, blk, COR_ABORT_RUN, &end)) < d->nr_blocks &&
         cor_abort_copy (d, blk, end, &err) != -1)
    blk = end;
  return cor_abort_end (d, err, blk, errbuf, len);
}
