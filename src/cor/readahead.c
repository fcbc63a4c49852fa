/* corfs: readahead for sequential guest reads.
 *
 * Design notes.  A guest reading sequentially one request at a time (a
 * cache=none disk, dd iflag=direct, a restore) waits a whole parent round
 * trip per request, and the kernel's readahead helps only buffered
 * readers.  So for readers that bypass the page cache (O_DIRECT: the
 * frontend says which, cor_read_ref's kernel_reads_ahead) the engine
 * watches for reads that start in the block
 * after the last block of an earlier read of the same stream (blocks,
 * not bytes: small reads count once per block crossed), and fetches
 * ahead of them in the background: the window starts at RA_MIN and
 * doubles with each sequential read up to the configured maximum (the
 * mount's readahead, as the kernel's for buffered readers), cut into
 * RA_CHUNK requests so that several are in flight at once
 * (COR_RA_WORKERS: what makes a high-latency parent stream at its
 * bandwidth).
 *
 * Prefetches are ordinary fetches through the in-flight table
 * (cor_populate with COR_POP_READAHEAD): a guest read of a block being
 * prefetched waits for it, a write to it waits too, and blocks already
 * present or owned by someone else are skipped.  They count as guest
 * faults, so the streamer gives way to them, and go into the boot trace.
 * A chunk that is all present is read into the overlay's page cache
 * instead (cor_overlay_willneed): the overlay has no readahead of its
 * own (see cor_disk_add), and without this a warm sequential O_DIRECT
 * reader waited for the disk once per request (dd bs=1M iflag=direct of
 * a warm 1 GiB disk: 1.0 GB/s, 1.5 GB/s with it, the local file 1.3-2.5).
 * Buffered readers are left to the kernel, which keeps several 1 MiB
 * reads in flight (fs.c sets the mount's readahead): prefetching for
 * them as well added a store, a read back and a copy per byte, and
 * measured 5-15% slower on a cold whole-disk dd (0.84-0.95 s vs
 * 0.79-0.85 s for 1 GiB).  A failed prefetch is forgotten: the guest's
 * own read fetches the block again and reports the error.  An incoming
 * disk reads through and never gets here.
 *
 * Streams: COR_RA_STREAMS per disk, replaced least recently used; any
 * read that continues none of them starts one.
 *
 * Notes on the thread model: COR_RA_WORKERS threads per disk, started on
 * the first prefetch, joined at engine shutdown.  ra.lock protects the
 * streams and the queue (streams[].next is also read without it, as a
 * hint, with atomics); it is never held across I/O and is taken before
 * d->lock (which cor_populate takes).  cor_readahead_note runs on any
 * FUSE thread.  LOCK ORDER: cor-internal.h.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"
#include "cor/cor-internal.h"
#include "meta/meta.h"

#define RA_MIN (1ULL << 20)
#define RA_CHUNK (1ULL << 20)

static uint64_t
bytes_to_blocks (const struct cor_disk *d, uint64_t bytes)
{
  uint64_t n = bytes >> d->block_shift;
  return n ? n : 1;
}

void
cor_readahead_init (struct cor_disk *d, uint64_t max_bytes)
{
  pthread_mutex_init (&d->ra.lock, NULL);
  pthread_cond_init (&d->ra.cond, NULL);
  d->ra.max = max_bytes ? bytes_to_blocks (d, max_bytes) : 0;
  /* A window the queue cannot hold would only be queued in part. */
  if (d->ra.max > COR_RA_QUEUE * bytes_to_blocks (d, RA_CHUNK))
    d->ra.max = COR_RA_QUEUE * bytes_to_blocks (d, RA_CHUNK);
}

static void *
ra_worker (void *arg)
{
  struct cor_disk *d = arg;

  pthread_mutex_lock (&d->ra.lock);
  for (;;) {
    while (!d->ra.stop && d->ra.qlen == 0)
      pthread_cond_wait (&d->ra.cond, &d->ra.lock);
    if (d->ra.stop)
      break;
    uint64_t first = d->ra.queue[d->ra.qhead].first, end = d->ra.queue[d->ra.qhead].end;
    d->ra.qhead = (d->ra.qhead + 1) % COR_RA_QUEUE;
    d->ra.qlen--;
    pthread_mutex_unlock (&d->ra.lock);

    int err = 0;
    if (meta_next (d->md, META_PRESENT, false, first) >= end)
      cor_overlay_willneed (d, first, end);
    else if (cor_populate (d, first, end, now_ns () + d->hold_ns, COR_POP_READAHEAD,
                           NULL, NULL, &err) == -1)
      log_debug ("cor: disk %s: readahead of blocks %" PRIu64 "-%" PRIu64 " failed: %s "
                 "(the guest's read will fetch them)", d->name, first, end, strerror (err));
    pthread_mutex_lock (&d->ra.lock);
  }
  pthread_mutex_unlock (&d->ra.lock);
  return NULL;
}

/* Must be called with ra.lock held.  Queue [first, end) in chunks, as
 * far as the queue has room (the workers fetch what is missing and read
 * in what is present).  Returns the
 * block up to which all is queued (end when all of it is), first when
 * nothing could be (the workers cannot start): readahead is only a
 * hint, the guest fetches what it needs itself. */
static uint64_t
enqueue_unlocked (struct cor_disk *d, uint64_t first, uint64_t end)
{
  uint64_t chunk = bytes_to_blocks (d, RA_CHUNK);

  if (d->ra.stop)
    return first;               /* shutting down (or could not start) */
  if (!d->ra.started) {
    d->ra.started = true;
    for (; d->ra.nr_workers < COR_RA_WORKERS; d->ra.nr_workers++)
      if (thread_create_nosig (&d->ra.workers[d->ra.nr_workers], ra_worker, d) == -1) {
        log_warn ("cor: disk %s: cannot start a readahead thread: %m", d->name);
        d->ra.stop = true;      /* those started exit; no readahead */
        pthread_cond_broadcast (&d->ra.cond);
        return first;
      }
  }
  while (first < end) {
    uint64_t e = first + chunk < end ? first + chunk : end;
    if (d->ra.qlen == COR_RA_QUEUE)
      break;
    size_t tail = (d->ra.qhead + d->ra.qlen) % COR_RA_QUEUE;
    d->ra.queue[tail].first = first;
    d->ra.queue[tail].end = e;
    d->ra.qlen++;
    first = e;
  }
  pthread_cond_broadcast (&d->ra.cond);
  return first < end ? first : end;
}

void
cor_readahead_note (struct cor_disk *d, uint64_t first, uint64_t end)
{
  int hit = -1;

  if (!d->ra.max)
    return;
  for (int i = 0; i < COR_RA_STREAMS; i++)
    if (__atomic_load_n (&d->ra.streams[i].next, __ATOMIC_RELAXED) == first && first) {
      hit = i;
      break;
    }
  pthread_mutex_lock (&d->ra.lock);
  d->ra.clock++;
  if (hit >= 0 && d->ra.streams[hit].next != first)
    hit = -1;                   /* changed under us: treat as new */
  if (hit < 0) {
    /* A new stream, in the least recently used slot: no prefetch yet,
     * one read is not a pattern. */
    int lru = 0;
    for (int i = 1; i < COR_RA_STREAMS; i++)
      if (d->ra.streams[i].used < d->ra.streams[lru].used)
        lru = i;
    __atomic_store_n (&d->ra.streams[lru].next, end, __ATOMIC_RELAXED);
    d->ra.streams[lru].window = bytes_to_blocks (d, RA_MIN) < d->ra.max
                                ? bytes_to_blocks (d, RA_MIN) : d->ra.max;
    d->ra.streams[lru].issued = end;
    d->ra.streams[lru].used = d->ra.clock;
    pthread_mutex_unlock (&d->ra.lock);
    return;
  }

  typeof (d->ra.streams[0]) *s = &d->ra.streams[hit];
  uint64_t max = d->ra.max;
  __atomic_store_n (&s->next, end, __ATOMIC_RELAXED);
  s->used = d->ra.clock;
  if (s->window < max)
    s->window = s->window * 2 < max ? s->window * 2 : max;
  uint64_t target = end + s->window < d->nr_blocks ? end + s->window : d->nr_blocks;
  uint64_t from = s->issued > end ? s->issued : end;
  /* Top the window up when at least half of it has been consumed, so
   * requests go out in batches rather than one chunk per read. */
  if (from < target && (target - from) * 2 >= s->window)
    s->issued = enqueue_unlocked (d, from, target);
  pthread_mutex_unlock (&d->ra.lock);
}

void
cor_readahead_stop (struct cor_disk *d)
{
  pthread_mutex_lock (&d->ra.lock);
  d->ra.stop = true;
  d->ra.qlen = 0;
  pthread_cond_broadcast (&d->ra.cond);
  pthread_mutex_unlock (&d->ra.lock);
}

void
cor_readahead_join (struct cor_disk *d)
{
  pthread_mutex_lock (&d->ra.lock);
  int n = d->ra.nr_workers;
  pthread_mutex_unlock (&d->ra.lock);
  for (int i = 0; i < n; i++)
    pthread_join (d->ra.workers[i], NULL);
}
