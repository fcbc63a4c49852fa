/* corfs: the read path: fault-in (fetch missing blocks, wait for busy
 * ones), incoming read-through, guest reads and seek.
 *
 * Thread model: FUSE worker threads, many at once, and readahead's
 * workers (through cor_fetch_blocks).  Takes d->lock only through the
 * in-flight primitives and for the trace (never across I/O); no other
 * engine lock (LOCK ORDER in cor-internal.h).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "common/iobuf.h"
#include "common/log.h"
#include "common/util.h"
#include "cor/cor-internal.h"
#include "format/format.h"
#include "remote/remote.h"

int
cor_parent_pread (struct cor_disk *d, void *buf, size_t count, uint64_t offset,
                  uint64_t deadline_ns, int *err)
{
  if (d->format)
    return format_pread (d->format, buf, count, offset, deadline_ns, err);
  return remote_pread (d->remote, buf, count, offset, deadline_ns, err);
}

int
cor_parent_zero_extents (struct cor_disk *d, uint64_t offset, uint64_t count,
                         uint64_t deadline_ns, struct remote_extent **z, size_t *nz, int *err)
{
  if (d->format == NULL)
    return remote_zero_extents (d->remote, offset, count, deadline_ns, z, nz, err);
  *z = NULL;
  *nz = 0;
  if (offset >= d->parent_size)
    return 0;
  if (count > d->parent_size - offset)
    count = d->parent_size - offset;
  return format_zero_extents (d->format, offset, count, deadline_ns, z, nz, err);
}

/* Fetch blocks [first, end) from the parent into the overlay and mark them
 * present.  The caller owns the blocks in the in-flight table.  0 or -1
 * with *err.  With keep non-NULL, a successful fetch hands its buffer
 * (the blocks' data, from block_offset (first)) to the caller to free:
 * a cold read replies from it instead of reading the overlay back.  With
 * unstored (and keep) non-NULL, a store that fails (the overlay's
 * filesystem is full) does not fail the fetch: the blocks stay missing,
 * *unstored is set, and the caller serves the data from *keep. */
int
cor_fetch_blocks (struct cor_disk *d, uint64_t first, uint64_t end,
              uint64_t deadline_ns, char **keep, struct early_reply *early,
              bool *unstored, int *err)
{
  uint64_t len = blocks_length (d, first, end), off = block_offset (d, first);
  char *buf = iobuf_get (len);

  if (!buf) {
    *err = ENOMEM;
    return -1;
  }
  __atomic_fetch_add (&d->fetch_requests, 1, __ATOMIC_RELAXED);
  if (cor_parent_pread (d, buf, len, off, deadline_ns, err) == -1) {
    __atomic_fetch_add (&d->fetch_errors, 1, __ATOMIC_RELAXED);
    iobuf_put (buf, len);
    return -1;
  }
  /* The blocks stay claimed until stored, so the data cannot change
   * under the reply. */
  if (early) {
    early->fn (early->opaque, buf + early->skip, early->count);
    early->done = true;
  }
  bool wrote_data = false;
  if (cor_overlay_store (d, buf, first, end, &wrote_data) == -1) {
    *err = errno;
    if (unstored && keep) {
      /* Logged once until a data write succeeds again: a full overlay
       * would otherwise log every read. */
      if (!__atomic_exchange_n (&d->store_failing, 1, __ATOMIC_SEQ_CST))
        log_error ("cor: disk %s: overlay write of %" PRIu64 " bytes at offset %" PRIu64
                   ": %s; reads are served from the parent without keeping the data "
                   "until the overlay can be written again", d->name, len, off,
                   strerror (*err));
      __atomic_fetch_add (&d->fetched_bytes, len, __ATOMIC_RELAXED);
      *unstored = true;
      *keep = buf;
      return 0;
    }
    log_error ("cor: disk %s: overlay write of %" PRIu64 " bytes at offset %"
               PRIu64 ": %s", d->name, len, off, strerror (*err));
    iobuf_put (buf, len);
    return -1;
  }
  /* Only data written shows the overlay has room again: a punch (an
   * all-zero fetch) succeeds on a full filesystem too, and resetting on
   * it would log every other read of a disk that mixes data and zeros. */
  if (wrote_data && __atomic_load_n (&d->store_failing, __ATOMIC_RELAXED))
    __atomic_store_n (&d->store_failing, 0, __ATOMIC_SEQ_CST);
  /* Order matters: the overlay write returned before the bit is set, and
   * needs_sync is set before the bit so the committer that takes the bit
   * also syncs the data. */
  __atomic_store_n (&d->needs_sync, 1, __ATOMIC_SEQ_CST);
  meta_set (d->md, META_PRESENT, first, end - first);
  __atomic_fetch_add (&d->fetched_bytes, len, __ATOMIC_RELAXED);
  if (keep)
    *keep = buf;                /* released with cor_read_ref_release */
  else
    iobuf_put (buf, len);
  return 0;
}

/* Must be called with d->lock held.  Remember a guest fault for the trace. */
void
cor_trace_fault_unlocked (struct cor_disk *d, uint64_t first, uint64_t end)
{
  struct cor_range *nv;

  if (!d->trace_path || d->nr_trace >= 1000000)
    return;
  if (d->nr_trace % 1024 == 0) {
    nv = realloc (d->trace, (d->nr_trace + 1024) * sizeof *nv);
    if (!nv)
      return;                   /* the trace is only a hint */
    d->trace = nv;
  }
  d->trace[d->nr_trace].offset = block_offset (d, first);
  d->trace[d->nr_trace].length = blocks_length (d, first, end);
  d->nr_trace++;
}

/* A read's blocks [first, end) gathered in one buffer, for when some of
 * them were fetched but could not be stored (see fault_in). */
struct gather {
  char *buf;                    /* iobuf of blocks_length (first, end), or NULL */
  bool *held;                   /* per block: its data is in buf, not the overlay */
};

/* Copy fetched blocks [blk, run) (data, unstored) into g. */
static int
gather_add (struct cor_disk *d, struct gather *g, uint64_t first, uint64_t end,
            uint64_t blk, uint64_t run, const char *data, int *err)
{
  if (!g->buf) {
    g->buf = iobuf_get (blocks_length (d, first, end));
    g->held = calloc (end - first, sizeof *g->held);
    if (!g->buf || !g->held) {
      *err = ENOMEM;
      return -1;
    }
  }
  memcpy (g->buf + (block_offset (d, blk) - block_offset (d, first)), data,
          blocks_length (d, blk, run));
  for (uint64_t b = blk; b < run; b++)
    g->held[b - first] = true;
  return 0;
}

/* Fill the rest of g (blocks that are present) from the overlay. */
static int
gather_finish (struct cor_disk *d, struct gather *g, uint64_t first, uint64_t end, int *err)
{
  for (uint64_t blk = first; blk < end; ) {
    uint64_t run = blk + 1;
    bool held = g->held[blk - first];
    while (run < end && g->held[run - first] == held)
      run++;
    if (!held && cor_overlay_read (d, g->buf + (block_offset (d, blk) - block_offset (d, first)),
                                   blocks_length (d, blk, run), block_offset (d, blk)) == -1) {
      *err = errno;
      log_error ("cor: disk %s: overlay read at offset %" PRIu64 ": %m", d->name,
                 block_offset (d, blk));
      return -1;
    }
    blk = run;
  }
  return 0;
}

static void
gather_free (struct cor_disk *d, struct gather *g, uint64_t first, uint64_t end)
{
  if (g->buf)
    iobuf_put (g->buf, blocks_length (d, first, end));
  free (g->held);
}

/* Make blocks [first, end) present, fetching what is missing, coalescing
 * adjacent missing blocks into one request and waiting for blocks that
 * another operation is fetching or writing.  Sets *faulted if it had to
 * fetch or wait.  With keep non-NULL, when one fetch covered all of
 * [first, end), *keep is its buffer (see cor_fetch_blocks), else NULL.  All
 * of it, waits included, ends by deadline_ns: a guest read waiting for a
 * prefetch or a streamer chunk that the parent stalls must not wait its
 * own hold time on top of theirs.  0 or -1 with *err.
 *
 * With keep non-NULL, a full overlay never fails a fetch that succeeded:
 * blocks that could not be stored stay missing, and *keep is a buffer of
 * all of [first, end), gathered from the fetches and the overlay. */
static int
fault_in (struct cor_disk *d, uint64_t first, uint64_t end, uint64_t deadline_ns,
          bool *faulted, char **keep, struct early_reply *early, int *err)
{
  uint64_t blk = first, traced = UINT64_MAX;
  struct gather g = { NULL, NULL };

  pthread_mutex_lock (&d->lock);
  while ((blk = meta_next (d->md, META_PRESENT, false, blk)) < end) {
    struct busy self;
    uint64_t run;

    *faulted = true;
    bool busy = inflight_find_unlocked (d, blk, blk + 1) != NULL;
    if (busy || inflight_gated_unlocked (d, deadline_ns)) {
      /* The guest needed it now, even if the streamer or readahead was
       * first: it belongs in the boot trace. */
      if (traced != blk) {
        cor_trace_fault_unlocked (d, blk, blk + 1);
        traced = blk;
      }
      /* (Not counted in guest_waiters: it waits for one busy block,
       * which is present once released, not for a range to be free.) */
      if (inflight_wait_unlocked (d, deadline_ns) == -1) {
        pthread_mutex_unlock (&d->lock);
        log_error ("cor: disk %s: offset %" PRIu64 ": %s when this read's hold time ran "
                   "out (parent %s)", d->name, block_offset (d, blk),
                   busy ? "still being fetched or written by another request"
                   : "held off by an exclusive command waiting for the disk",
                   remote_url (d->remote));
        *err = EIO;
        return -1;
      }
      continue;                 /* re-check: it may be present now */
    }
    inflight_claim_missing_unlocked (d, &self, blk, end, &run);   /* from blk itself */
    cor_trace_fault_unlocked (d, blk, run);
    pthread_mutex_unlock (&d->lock);

    inflight_fg_begin (d);      /* the streamer gives way meanwhile */
    bool whole = keep && blk == first && run == end, unstored = false;
    char *got = NULL;
    int r = cor_fetch_blocks (d, blk, run, deadline_ns, keep ? &got : NULL,
                          whole ? early : NULL, keep ? &unstored : NULL, err);
    if (r == 0)
      __atomic_fetch_add (&d->fg_fetched_bytes, blocks_length (d, blk, run), __ATOMIC_RELAXED);
    inflight_fg_end (d);

    inflight_release (d, &self);
    if (r == 0 && got) {
      if (whole)
        *keep = got;
      else {
        if (unstored)
          r = gather_add (d, &g, first, end, blk, run, got, err);
        iobuf_put (got, blocks_length (d, blk, run));
      }
    }
    if (r == -1) {
      gather_free (d, &g, first, end);
      return -1;
    }
    blk = run;
    pthread_mutex_lock (&d->lock);
  }
  pthread_mutex_unlock (&d->lock);
  if (g.buf) {
    if (gather_finish (d, &g, first, end, err) == -1) {
      gather_free (d, &g, first, end);
      return -1;
    }
    *keep = g.buf;
    g.buf = NULL;
    gather_free (d, &g, first, end);
  }
  return 0;
}

static void
record_latency (struct cor_disk *d, uint64_t ns)
{
  uint64_t us = ns / 1000;
  int i = 0;

  while (i < COR_LAT_BUCKETS && us > cor_latency_bounds_us[i])
    i++;
  __atomic_fetch_add (&d->fault_latency[i], 1, __ATOMIC_RELAXED);
  __atomic_fetch_add (&d->fault_latency_sum_us, us, __ATOMIC_RELAXED);
}

/* Incoming: the source still runs the guest, so nothing read now may be
 * kept (it could be stale after the switch-over): read count bytes at
 * offset (blocks [first, end)) through into ref->buf.  The blocks are
 * claimed in the in-flight table meanwhile, as a fetch's are, so that
 * activation's drain waits for this read and finds every connection to
 * the parent idle when it pins it.  Every wait ends by deadline_ns.
 * count, 0 if the disk is no longer incoming once its blocks are free
 * (activated: the caller reads the usual way), or -1 with *err. */
static bool
still_incoming (const struct cor_disk *d)
{
  return __atomic_load_n (&d->owner, __ATOMIC_SEQ_CST) == META_INCOMING;
}

static ssize_t
read_through (struct cor_disk *d, size_t count, uint64_t offset, uint64_t first, uint64_t end,
              uint64_t deadline_ns, struct cor_read_ref *ref, int *err)
{
  struct busy self;
  int r;

  /* Like any claim, wait while an exclusive operation (activate) drains
   * the disk: it must not find a read-through in flight once it owns it.
   * Activation sets the owner before it releases its claim, so once the
   * blocks are free, still_incoming tells whether to read through. */
  r = inflight_claim (d, &self, first, end, deadline_ns, INFLIGHT_GUEST, still_incoming);
  if (r == -1) {
    log_error ("cor: disk %s: offset %" PRIu64 ": busy (activating?) when this read's "
               "hold time ran out", d->name, offset);
    *err = EIO;
    return -1;
  }
  if (r == 1)
    return 0;

  if (!(ref->buf = iobuf_get (count))) {
    inflight_release (d, &self);
    *err = ENOMEM;
    return -1;
  }
  ref->buf_len = count;
  r = cor_parent_pread (d, ref->buf, count, offset, deadline_ns, err);
  inflight_release (d, &self);
  if (r == -1) {
    cor_read_ref_release (ref);
    return -1;
  }
  __atomic_fetch_add (&d->guest_read_bytes, count, __ATOMIC_RELAXED);
  return count;
}

ssize_t
cor_read_ref (struct cor_disk *d, size_t count, uint64_t offset,
              struct cor_read_ref *ref, int *err)
{
  uint64_t first, end;

  ref->buf = NULL;
  ref->buf_len = 0;
  ref->skip = 0;
  ref->fd = cor_overlay_fd (d);
  ref->delivered = false;
  if (offset >= d->size || count == 0)
    return 0;
  if (count > d->size - offset)
    count = d->size - offset;
  cor_block_range (offset, count, d->block_shift, &first, &end);
  uint64_t t0 = now_ns ();
  if (__atomic_load_n (&d->owner, __ATOMIC_SEQ_CST) == META_INCOMING &&
      meta_next (d->md, META_PRESENT, false, first) < end) {
    ssize_t n = read_through (d, count, offset, first, end, t0 + d->hold_ns, ref, err);
    if (n != 0)
      return n;
    /* (0: activated meanwhile, read the usual way.) */
  }
  bool faulted = false;
  struct early_reply early = { ref->deliver, ref->opaque, offset - block_offset (d, first),
                               count, false };
  int r = fault_in (d, first, end, t0 + d->hold_ns, &faulted, &ref->buf,
                    ref->deliver ? &early : NULL, err);
  if (faulted)
    record_latency (d, now_ns () - t0);
  ref->delivered = early.done;
  if (r == -1 && !early.done)
    return -1;
  if (ref->buf) {
    ref->skip = early.skip;
    ref->buf_len = blocks_length (d, first, end);
  }
  if (!ref->kernel_reads_ahead)
    cor_readahead_note (d, first, end);
  __atomic_fetch_add (&d->guest_read_bytes, count, __ATOMIC_RELAXED);
  return count;
}

void
cor_read_ref_release (struct cor_read_ref *ref)
{
  iobuf_put (ref->buf, ref->buf_len);
  ref->buf = NULL;
  ref->buf_len = 0;
}

int
cor_read_ref_copy (struct cor_disk *d, const struct cor_read_ref *ref, void *buf,
                   size_t n, uint64_t offset, int *err)
{
  if (ref->buf) {
    memcpy (buf, ref->buf + ref->skip, n);
    return 0;
  }
  return cor_overlay_read_ref (d, ref->fd, buf, n, offset, err);
}

ssize_t
cor_read (struct cor_disk *d, void *buf, size_t count, uint64_t offset, int *err)
{
  struct cor_read_ref ref = { .deliver = NULL };
  ssize_t n = cor_read_ref (d, count, offset, &ref, err);

  if (n <= 0)
    return n;
  int r = cor_read_ref_copy (d, &ref, buf, n, offset, err);
  cor_read_ref_release (&ref);
  return r == -1 ? -1 : n;
}

int64_t
cor_seek (struct cor_disk *d, uint64_t offset, bool data, int *err)
{
  uint64_t pos = offset;

  if (offset >= d->size) {
    *err = ENXIO;
    return -1;
  }
  while (pos < d->size) {
    uint64_t blk = pos >> d->block_shift, run_end;
    off_t q;

    if (!meta_test (d->md, META_PRESENT, blk)) {
      /* Unknown content counts as data. */
      if (data)
        return pos;
      blk = meta_next (d->md, META_PRESENT, true, blk);
      if (blk >= d->nr_blocks)
        return d->size;
      pos = block_offset (d, blk);
      continue;
    }
    run_end = block_offset (d, meta_next (d->md, META_PRESENT, false, blk));
    if (run_end > d->size)
      run_end = d->size;
    q = cor_overlay_seek (d, pos, data);
    if (q == -1 && errno != ENXIO) {
      *err = errno;
      return -1;
    }
    if (q != -1 && (uint64_t) q < run_end)
      return q;
    pos = run_end;
  }
  if (data) {
    *err = ENXIO;
    return -1;
  }
  return d->size;
}
