/* corfs: the committer: group commit of the index (docs/design.md rules 1-3, 7).
 *
 * Notes on the thread model: one committer thread per engine.  It wakes
 * when a flusher asks (cor_flush) or after COMMIT_INTERVAL_S, whichever
 * comes first, and runs one commit:
 *
 *   1. take every disk's pending bitmap chunks (meta_batch_begin);
 *   2. fdatasync every overlay that was written since its last sync or
 *      that has chunks in the batch (a present bit is set only after its
 *      overlay write returned, so the sync covers every bit taken in 1);
 *   3. commit the batch in one LMDB transaction.
 *
 * A flusher records target = seq_started + 1 under e->lock and waits for
 * seq_done >= target: that commit began after the flusher's call, so it
 * covers every write answered before it.  A failed commit leaves its
 * chunks pending, and later commits are cumulative, so the result of
 * commit seq_done is the answer for every flusher waiting for it.
 *
 * The interval is 5 s, not the "at least once a second" of the design advice corfs started from: an
 * fdatasync of an overlay every second while the streamer or a cold
 * reader writes it at full speed made those buffered writes (the copy
 * into ext4's page cache) 3 to 6 times slower on this 2-core machine:
 * streaming 1 GiB took 3.2-3.4 s, 0.58-1.1 s with 5 s (0.64-0.94 s with
 * the overlay on tmpfs, where fdatasync does nothing).  What waits
 * longer is only the index's record of fetched blocks (at most 5 s of
 * fetches are fetched again after a crash) and of unsynced guest
 * writes (which may be lost anyway, and whose changed/suspect maps
 * are widened after an unclean shutdown: rule 4); every fsync still
 * commits at once.
 *
 * Sticky failure (rule 7): an overlay whose fdatasync fails may have lost
 * dirty pages, so the disk goes to "failed": its chunks are never
 * committed, writes get EROFS and every flush EIO, for good.
 *
 * Locks: e->lock (the sequence numbers, stop) is taken by flushers that
 * may hold owner_lock (hand-off, pivot, abort call cor_flush), so the
 * committer never takes an owner or disk lock; only meta's (LOCK ORDER in
 * cor-internal.h).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"

#define COMMIT_INTERVAL_S 5
#include "cor/cor-internal.h"
#include "meta/meta.h"
#include "remote/remote.h"

void
cor_disk_fail (struct cor_disk *d, const char *why, int err)
{
  int old;

  /* Recorded where a restarted worker finds it, before any answer. */
  meta_disk_set_failed (d->md);
  old = __atomic_exchange_n (&d->health, COR_FAILED, __ATOMIC_SEQ_CST);

  if (old != COR_FAILED)
    log_error ("cor: disk %s: %s: %s; the disk is now read-only and every "
               "later flush fails", d->name, why, strerror (err));
}

int
cor_commit_once (struct cor_engine *e)
{
  struct meta_batch *b = meta_batch_begin (e->meta);
  size_t n;
  struct cor_disk **disks;

  if (!b)
    return errno;
  pthread_mutex_lock (&e->lock);
  n = e->nr_disks;
  disks = e->disks;             /* the array only grows before start */
  pthread_mutex_unlock (&e->lock);

  for (size_t i = 0; i < n; i++) {
    struct cor_disk *d = disks[i];
    bool written = __atomic_exchange_n (&d->needs_sync, 0, __ATOMIC_SEQ_CST);
    if (__atomic_load_n (&d->health, __ATOMIC_SEQ_CST) == COR_FAILED) {
      meta_batch_drop (b, d->md);
      continue;
    }
    if (written || meta_batch_has (b, d->md)) {
      if (cor_overlay_sync (d) == -1) {
        cor_disk_fail (d, "overlay fdatasync", errno);
        meta_batch_drop (b, d->md);
      }
    }
  }
  if (meta_batch_commit (b) == -1) {
    int err = errno;
    log_error ("cor: index commit failed: %s", strerror (err));
    return err;
  }
  return 0;
}

static void *
committer (void *arg)
{
  struct cor_engine *e = arg;

  pthread_mutex_lock (&e->lock);
  while (!e->stop) {
    if (!e->requested) {
      struct timespec ts;
      clock_gettime (CLOCK_MONOTONIC, &ts);
      ts.tv_sec += COMMIT_INTERVAL_S;
      pthread_cond_timedwait (&e->wake, &e->lock, &ts);
      if (e->stop)
        break;
    }
    e->requested = false;
    uint64_t seq = ++e->seq_started;
    pthread_mutex_unlock (&e->lock);
    int r = cor_commit_once (e);
    pthread_mutex_lock (&e->lock);
    e->seq_done = seq;
    e->last_result = r;
    pthread_cond_broadcast (&e->done);
  }
  pthread_mutex_unlock (&e->lock);
  return NULL;
}

int
cor_engine_start (struct cor_engine *e)
{
  if (thread_create_nosig (&e->thread, committer, e) == -1) {
    log_error ("cor: starting the committer: %m");
    return -1;
  }
  pthread_mutex_lock (&e->lock);
  e->running = true;
  pthread_mutex_unlock (&e->lock);
  for (size_t i = 0; i < e->nr_disks; i++)
    cor_stream_autostart (e->disks[i], e->disks[i]->start_mode);
  return 0;
}

int
cor_flush (struct cor_disk *d, int *err)
{
  struct cor_engine *e = d->e;
  int r;

  __atomic_fetch_add (&d->flushes, 1, __ATOMIC_RELAXED);
  if (__atomic_load_n (&d->health, __ATOMIC_SEQ_CST) == COR_FAILED) {
    *err = EIO;
    return -1;
  }
  pthread_mutex_lock (&e->lock);
  if (!e->running) {
    pthread_mutex_unlock (&e->lock);
    r = cor_commit_once (e);
  }
  else {
    uint64_t target = e->seq_started + 1;
    e->requested = true;
    pthread_cond_signal (&e->wake);
    while (e->seq_done < target)
      pthread_cond_wait (&e->done, &e->lock);
    r = e->last_result;
    pthread_mutex_unlock (&e->lock);
  }
  if (__atomic_load_n (&d->health, __ATOMIC_SEQ_CST) == COR_FAILED) {
    *err = EIO;
    return -1;
  }
  /* Mirror: the parent received every write too; make those stable. */
  if (r == 0 && d->mirror && cor_mirror_flush (d, err) == -1)
    return -1;
  if (r) {
    *err = r == ENOSPC ? ENOSPC : EIO;
    return -1;
  }
  return 0;
}

int
cor_engine_stop (struct cor_engine *e)
{
  bool running;
  int r;

  pthread_mutex_lock (&e->lock);
  running = e->running;
  e->stop = true;
  pthread_cond_signal (&e->wake);
  pthread_mutex_unlock (&e->lock);
  if (running)
    pthread_join (e->thread, NULL);
  /* The final commit; it also answers any flusher still waiting. */
  r = cor_commit_once (e);
  pthread_mutex_lock (&e->lock);
  e->running = false;
  e->seq_done = ++e->seq_started;
  e->last_result = r;
  pthread_cond_broadcast (&e->done);
  pthread_mutex_unlock (&e->lock);
  return r;
}
