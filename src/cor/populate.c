/* corfs: populate, the streamer's and readahead's entry point: make
 * missing blocks present without waiting for busy ones, skipping the
 * parent's zero extents.
 *
 * Thread model: the streamer's and readahead's workers.  d->lock is held
 * while choosing and claiming a run (inflight_claim_missing_unlocked),
 * never across the fetch; callers hold no stream or readahead lock while
 * here (LOCK ORDER in cor-internal.h).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "cor/cor-internal.h"
#include "remote/remote.h"

/* ---- the streamer's entry point ---- */

/* Is every byte of blocks [blk, blk+1) inside one of the zero extents? */
static bool
block_in_zero (struct cor_disk *d, uint64_t blk, const struct remote_extent *z,
               size_t nz, size_t *hint)
{
  uint64_t s = block_offset (d, blk), e = s + blocks_length (d, blk, blk + 1);

  while (*hint < nz && z[*hint].offset + z[*hint].length <= s)
    (*hint)++;
  return *hint < nz && z[*hint].offset <= s && z[*hint].offset + z[*hint].length >= e;
}

/* Fetch owned blocks [first, end), skipping those the parent reports as
 * zero.  Returns bytes fetched or -1 with *err. */
static int64_t
fetch_sparse (struct cor_disk *d, uint64_t first, uint64_t end,
              uint64_t deadline_ns, int *err)
{
  struct remote_extent *z = NULL;
  size_t nz = 0, hint = 0;
  int64_t fetched = 0;
  uint64_t blk = first;
  int zerr;

  if (cor_parent_zero_extents (d, block_offset (d, first), blocks_length (d, first, end),
                               deadline_ns, &z, &nz, &zerr) == -1) {
    if (__atomic_load_n (&d->e->stopping, __ATOMIC_SEQ_CST)) {
      *err = ECANCELED;         /* shutting down: no reading instead */
      return -1;
    }
    log_debug ("cor: disk %s: block status failed (%s); reading instead",
               d->name, strerror (zerr));
  }
  while (blk < end) {
    bool zero = block_in_zero (d, blk, z, nz, &hint);
    uint64_t run = blk + 1;
    while (run < end && block_in_zero (d, run, z, nz, &hint) == zero)
      run++;
    if (zero) {
      uint64_t len = blocks_length (d, blk, run);
      /* Zeros promised by the parent: no data to fetch (rule 6 allows
       * marking these present).  Punch, in case an earlier uncommitted
       * write left data here. */
      if (cor_overlay_zero (d, block_offset (d, blk), len) == -1) {
        *err = errno;
        log_error ("cor: disk %s: overlay punch at offset %" PRIu64 ": %m",
                   d->name, block_offset (d, blk));
        free (z);
        return -1;
      }
      __atomic_store_n (&d->needs_sync, 1, __ATOMIC_SEQ_CST);
      meta_set (d->md, META_PRESENT, blk, run - blk);
      __atomic_fetch_add (&d->zero_skipped_bytes, len, __ATOMIC_RELAXED);
    }
    else {
      if (cor_fetch_blocks (d, blk, run, deadline_ns, NULL, NULL, NULL, err) == -1) {
        free (z);
        return -1;
      }
      fetched += blocks_length (d, blk, run);
    }
    blk = run;
  }
  free (z);
  return fetched;
}

int64_t
cor_populate (struct cor_disk *d, uint64_t first, uint64_t end,
              uint64_t deadline_ns, unsigned flags, uint64_t *next, uint64_t *covered,
              int *err)
{
  bool fg = flags & COR_POP_READAHEAD;
  uint64_t blk = first, stop = end;
  int64_t total = 0;

  if (covered)
    *covered = 0;
  pthread_mutex_lock (&d->lock);
  while ((blk = meta_next (d->md, META_PRESENT, false, blk)) < end) {
    struct busy self;
    uint64_t run;

    if (inflight_background_yields_unlocked (d)) {
      /* An exclusive command or a guest waits to claim blocks: back
       * off, and tell the caller where to come back. */
      stop = blk;
      break;
    }
    /* Busy blocks are skipped: a guest operation owns them.  (The gate
     * and guest_waiters change only under d->lock, so the check above
     * holds for every block skipped.) */
    if ((blk = inflight_claim_missing_unlocked (d, &self, blk, end, &run)) >= end)
      break;
    if (fg)
      cor_trace_fault_unlocked (d, blk, run);
    pthread_mutex_unlock (&d->lock);

    int64_t r;
    if (fg) {
      /* On behalf of a guest: the streamer gives way as to a fault. */
      inflight_fg_begin (d);
      r = cor_fetch_blocks (d, blk, run, deadline_ns, NULL, NULL, NULL, err) == 0
          ? (int64_t) blocks_length (d, blk, run) : -1;
      inflight_fg_end (d);
    }
    else
      r = fetch_sparse (d, blk, run, deadline_ns, err);

    inflight_release (d, &self);
    if (r == -1) {
      if (next)
        *next = blk;
      return -1;
    }
    if (covered)
      *covered += blocks_length (d, blk, run);
    /* Start writing the run back now, not at the next commit: these
     * blocks are not about to be rewritten, and a stream's final flush
     * would otherwise write the whole disk at once.  A hint only. */
    if (r > 0)
      cor_overlay_writeout (d, blk, run);
    total += r;
    __atomic_fetch_add (fg ? &d->fg_fetched_bytes : &d->bg_fetched_bytes, r, __ATOMIC_RELAXED);
    blk = run;
    pthread_mutex_lock (&d->lock);
  }
  pthread_mutex_unlock (&d->lock);
  if (next)
    *next = stop;
  return total;
}
