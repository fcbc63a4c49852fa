/* corfs: mirror pivot and abort. */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "common/iobuf.h"
#include "common/log.h"
#include "common/util.h"
#include "cor/cor-internal.h"
#include "meta/meta.h"
#include "remote/remote.h"


/* ---- mirror: pivot and abort ---- */

int
cor_pivot (struct cor_disk *d, char *errbuf, size_t len)
{
  struct meta_record rec;
  struct busy self;
  uint64_t present;
  int err;

  pthread_mutex_lock (&d->owner_lock);
  meta_disk_record (d->md, &rec);
  if (!d->mirror) {
    snprintf (errbuf, len, "disk %s is not in mirror mode", d->name);
    goto fail;
  }
  if (rec.state != META_ACTIVE) {
    snprintf (errbuf, len, "disk %s is %s: only an active mirror can pivot", d->name,
              meta_state_name (rec.state));
    goto fail;
  }
  present = meta_count (d->md, META_PRESENT);
  if (present < d->nr_blocks) {
    snprintf (errbuf, len, "disk %s: pivot refused: the copy is not complete (%" PRIu64
              " of %" PRIu64 " blocks); wait for mirror-ready or abort", d->name,
              present, d->nr_blocks);
    goto fail;
  }
  if (inflight_own_all (d, &self, "pivot", errbuf, len) == -1)    /* no write in flight */
    goto fail;
  /* Again, now that no write can drop a block (a failed overlay write). */
  if (meta_count (d->md, META_PRESENT) < d->nr_blocks) {
    inflight_release (d, &self);
    snprintf (errbuf, len, "disk %s: pivot refused: a block was dropped from the copy; "
              "wait for mirror-ready again", d->name);
    goto fail;
  }
  /* After quiesce the parent's flush is cancelled, and a failed mirror
   * flush marks every block suspect: do not get there at shutdown. */
  if (__atomic_load_n (&d->e->stopping, __ATOMIC_SEQ_CST)) {
    inflight_release (d, &self);
    snprintf (errbuf, len, "disk %s: pivot: not done: the daemon is shutting down", d->name);
    goto fail;
  }
  if (cor_flush (d, &err) == -1) {
    inflight_release (d, &self);
    snprintf (errbuf, len, "disk %s: flush before pivot: %s", d->name, strerror (err));
    goto fail;
  }
  rec.state = META_STANDALONE;
  rec.mirror = false;
  rec.complete = true;
  if (meta_disk_update (d->md, &rec) == -1) {
    inflight_release (d, &self);
    snprintf (errbuf, len, "disk %s: recording the pivot: %s", d->name, strerror (errno));
    goto fail;
  }
  d->mirror = false;
  __atomic_store_n (&d->owner, META_STANDALONE, __ATOMIC_SEQ_CST);
  inflight_release (d, &self);
  pthread_mutex_unlock (&d->owner_lock);
  remote_release (d->remote);
  log_info ("cor: disk %s: pivoted: standalone, the old storage is no longer used", d->name);
  cor_emit (d, "pivoted", d->size, d->size, NULL);
  return 0;
 fail:
  pthread_mutex_unlock (&d->owner_lock);
  return -1;
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

int
cor_abort (struct cor_disk *d, char *errbuf, size_t len)
{
  struct meta_record rec;
  struct busy self;
  uint64_t blk;
  int err = 0;

  pthread_mutex_lock (&d->owner_lock);
  meta_disk_record (d->md, &rec);
  if (!d->mirror || rec.state != META_ACTIVE) {
    snprintf (errbuf, len, "disk %s: nothing to abort (not an active mirror)", d->name);
    pthread_mutex_unlock (&d->owner_lock);
    return -1;
  }
  /* 1. Wait for the writes in flight; then no new writes (as in
   * cor_handoff: the state changes only once own_all succeeded, so an
   * abort that cannot get the disk never fails a guest write).  From
   * here until the copy below ends, writes get EROFS; a copy that fails
   * (or is cut short by the shutdown) reverts the disk to an active
   * mirror. */
  if (inflight_own_all (d, &self, "abort", errbuf, len) == -1) {
    pthread_mutex_unlock (&d->owner_lock);
    return -1;
  }
  __atomic_store_n (&d->owner, META_HANDED_OFF, __ATOMIC_SEQ_CST);
  inflight_release (d, &self);
  /* 2. Whatever the parent may lack (a failed parent write, or every
   * present block after an unclean shutdown) goes to it now. */
  while ((blk = meta_next (d->md, META_DIRTY, true, 0)) < d->nr_blocks ||
         (blk = meta_next (d->md, META_SUSPECT, true, 0)) < d->nr_blocks) {
    uint64_t end = blk + 1;
    if (engine_stopping (d)) {
      __atomic_store_n (&d->owner, META_ACTIVE, __ATOMIC_SEQ_CST);
      abort_interrupted (d, blk, errbuf, len);
      pthread_mutex_unlock (&d->owner_lock);
      return -1;
    }
    while (end < d->nr_blocks && end - blk < 256 &&
           (meta_test (d->md, META_DIRTY, end) || meta_test (d->md, META_SUSPECT, end)))
      end++;
    if (cor_writeback_range (d, blk, end, now_ns () + d->hold_ns, true, &err) == -1) {
      __atomic_store_n (&d->owner, META_ACTIVE, __ATOMIC_SEQ_CST);
      if (engine_stopping (d))    /* the copy was cancelled (remote_cancel) */
        abort_interrupted (d, blk, errbuf, len);
      else
        snprintf (errbuf, len, "disk %s: abort: copying offset %" PRIu64 " to the parent "
                  "failed (%s); the mirror is still active, try again", d->name,
                  block_offset (d, blk), strerror (err));
      pthread_mutex_unlock (&d->owner_lock);
      return -1;
    }
  }
  /* After quiesce the parent's flush is cancelled, and a failed mirror
   * flush marks every block suspect: do not get there at shutdown. */
  if (engine_stopping (d)) {
    __atomic_store_n (&d->owner, META_ACTIVE, __ATOMIC_SEQ_CST);
    snprintf (errbuf, len, "disk %s: abort: interrupted by the daemon's shutdown before "
              "its final flush; the mirror is still active, abort again after the "
              "restart", d->name);
    pthread_mutex_unlock (&d->owner_lock);
    return -1;
  }
  if (cor_flush (d, &err) == -1) {   /* commits, and flushes the parent (mirror) */
    __atomic_store_n (&d->owner, META_ACTIVE, __ATOMIC_SEQ_CST);
    snprintf (errbuf, len, "disk %s: abort: flush failed (%s); try again", d->name,
              strerror (err));
    pthread_mutex_unlock (&d->owner_lock);
    return -1;
  }
  /* 3. Durably read-only: the parent is the disk now; pin what it is
   * (never an empty identity: that would accept any image later). */
  {
    char id[META_ID_MAX];
    if (remote_repin (d->remote, true, d->size, id, sizeof id, now_ns () + d->hold_ns,
                      &err) == -1) {
      char why[1280];
      __atomic_store_n (&d->owner, META_ACTIVE, __ATOMIC_SEQ_CST);
      snprintf (errbuf, len, "disk %s: abort: cannot pin the identity of parent %s (%s); "
                "the mirror is still active, try again", d->name, remote_url (d->remote),
                cor_repin_why (d, err, why, sizeof why));
      pthread_mutex_unlock (&d->owner_lock);
      return -1;
    }
    remote_set_modifying (d->remote, false);
    snprintf (rec.identity, sizeof rec.identity, "%s", id);
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
  cor_emit (d, "aborted", 0, 0, NULL);
  return 0;
}
