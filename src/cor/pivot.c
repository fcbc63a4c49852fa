/* corfs: mirror pivot (docs/design.md "Write modes"); abort is abort.c.
 *
 * Thread model: ctl's command thread (a long command's job thread).  It
 * holds d->owner_lock (scoped) for its whole run, across the flush (see
 * "What waits under owner_lock" in cor-internal.h).
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
