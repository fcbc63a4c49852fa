/* corfs: the stream's survey of the parent's zero extents: how many of
 * the missing bytes the parent promises read as zeros.  Those cost no
 * fetch and no rate-limit token, so the stream's ETA (status.c) divides
 * only the rest, the data still to fetch, by the rate data is fetched at.
 *
 * One question of block status a window of 1 GiB (the remote keeps the
 * last large answer: remote_zero_extents), once per mount, at the
 * stream's first run; what the stream skips as zero afterwards is taken
 * off the count (zero_skipped_bytes).  Guest writes and faults that make
 * surveyed zero blocks present are not, so the count may run high and
 * the ETA short by as much: status clamps it.
 *
 * Thread model: one stream worker runs cor_stream_survey, with no lock
 * held (it asks the parent); the caller publishes the result under
 * stream.lock.  The bitmaps are read without locks (meta.h).
 */
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"
#include "cor/cor-internal.h"
#include "meta/meta.h"
#include "remote/remote.h"

#define SURVEY_WINDOW (1ULL << 30)
#define SURVEY_DEADLINE_NS (60 * NS_PER_SEC)   /* each question */

/* Bytes of the missing blocks that lie wholly inside [off, off + len):
 * those the stream will find zero (populate.c's block_in_zero). */
static uint64_t
missing_inside (struct cor_disk *d, uint64_t off, uint64_t len)
{
  uint64_t first = (off + d->block_size - 1) >> d->block_shift;
  uint64_t end = off + len >= d->size ? d->nr_blocks : (off + len) >> d->block_shift;
  uint64_t blk = first, n = 0;

  while (blk < end && (blk = meta_next (d->md, META_PRESENT, false, blk)) < end) {
    uint64_t run = meta_next (d->md, META_PRESENT, true, blk);
    if (run > end)
      run = end;
    n += blocks_length (d, blk, run);
    blk = run;
  }
  return n;
}

bool
cor_stream_survey (struct cor_disk *d, uint64_t *zero_missing)
{
  uint64_t total = 0;

  for (uint64_t off = 0; off < d->size; off += SURVEY_WINDOW) {
    uint64_t len = d->size - off < SURVEY_WINDOW ? d->size - off : SURVEY_WINDOW;
    struct remote_extent *z = NULL;
    size_t nz = 0;
    int err;

    if (__atomic_load_n (&d->stream.stop, __ATOMIC_SEQ_CST) ||
        __atomic_load_n (&d->e->stopping, __ATOMIC_SEQ_CST))
      return false;
    if (cor_parent_zero_extents (d, off, len, now_ns () + SURVEY_DEADLINE_NS,
                                 &z, &nz, &err) == -1) {
      log_debug ("cor: disk %s: survey of zero extents: %s; the ETA estimates instead",
                 d->name, strerror (err));
      return false;
    }
    for (size_t i = 0; i < nz; i++)
      total += missing_inside (d, z[i].offset, z[i].length);
    free (z);
  }
  *zero_missing = total;
  return true;
}
