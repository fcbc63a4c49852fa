/* corfs: the background streamer.
 *
 * Design notes.  The streamer is one more client of the engine: it calls
 * cor_populate() on runs of missing blocks, which claims them in the
 * in-flight table like a guest fault, skips blocks someone else owns and
 * blocks the parent reports as zero, and marks what it fetched present
 * (so the committer makes it durable like any fault).  Nothing here
 * writes the overlay or the index directly.
 *
 * Order: the hint ranges first (a file given in the config, or the trace
 * of guest faults recorded at an earlier cold start of the same image),
 * then sequentially from a cursor that wraps around, so blocks skipped
 * because they were busy or failed are picked up on the next pass.  The
 * stream is resumable by construction: what is present is never fetched
 * again, so a restart simply finds the missing blocks.
 *
 * Giving way to the guest (dm-clone's do_hydration does the same): before
 * each chunk a worker waits while any guest fault is talking to the
 * parent or a guest waits to claim blocks (guest_waiters), and for
 * QUIET_NS after the last fault ended, at most YIELD_MAX_NS (so a guest
 * that faults all the time cannot starve the stream).  A chunk that
 * cor_populate cut short (an exclusive command or a waiting guest) is
 * picked again from where it stopped, from the cursor it came from (the
 * sequential one or the hint's).
 *
 * Rate limit: a token bucket shared by the workers, refilled at `rate`
 * bytes/s with one second of burst; each chunk is charged what it read
 * from the parent after the fact (zero extents are free), which may take
 * the bucket into debt; the next chunk waits it out.  Errors: a failed chunk is counted and reported
 * (stream-error event, status) and retried after an exponential backoff
 * up to 30 s, forever: background work never fails the disk.
 *
 * Progress: the first worker to run surveys the parent's zero extents
 * once (survey.c), so that the ETA counts only the data left to fetch;
 * the other workers stream meanwhile.
 *
 * Completion: when every block is present the first worker to notice
 * makes the index durable (cor_flush), records complete=true, emits
 * stream-complete and, unless configured otherwise, closes the parent's
 * connections: the source can be shut down.
 *
 * Notes on the thread model: COR_STREAM_WORKERS threads per disk, started
 * on the first start and joined at engine shutdown.  d->stream.lock
 * protects the stream fields; it is never held across I/O or
 * cor_populate, and is taken before d->lock where both are held.  The
 * completion (finish) holds no stream lock while cor_update_record waits,
 * at most the hold, for owner_lock (an abort copying holds it): see LOCK
 * ORDER in cor-internal.h.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/util.h"
#include "cor/cor-internal.h"
#include "meta/meta.h"
#include "format/format.h"
#include "remote/remote.h"

enum stream_state { S_OFF, S_RUNNING, S_PAUSED, S_CANCELLED, S_COMPLETE };

#define STREAM_CHUNK (2 << 20)                  /* bytes per request */
#define QUIET_NS (50 * 1000000ULL)              /* after a guest fault */
#define YIELD_MAX_NS (2 * NS_PER_SEC)
#define BACKOFF_MIN_NS (100 * 1000000ULL)
#define BACKOFF_MAX_NS (30 * NS_PER_SEC)
#define CHUNK_DEADLINE_NS (60 * NS_PER_SEC)
#define PROGRESS_NS NS_PER_SEC

static const char *state_names[] = { "off", "running", "paused", "cancelled", "complete" };

const char *
cor_stream_state_name (struct cor_disk *d)
{
  return state_names[d->stream.state];
}

int
cor_stream_init (struct cor_disk *d, const struct cor_disk_config *cfg)
{
  pthread_mutex_init (&d->stream.lock, NULL);
  cond_init_monotonic (&d->stream.cond);
  d->stream.state = S_OFF;
  d->stream.rate = cfg->rate;
  d->stream.release_parent = cfg->release_parent;
  d->stream.backoff_ns = BACKOFF_MIN_NS;
  if (cfg->nr_hints) {
    d->stream.hints = malloc (cfg->nr_hints * sizeof *cfg->hints);
    if (!d->stream.hints)
      return -1;
    memcpy (d->stream.hints, cfg->hints, cfg->nr_hints * sizeof *cfg->hints);
    d->stream.nr_hints = cfg->nr_hints;
  }
  return 0;
}

/* Must be called with stream.lock held.  Wait until abs_ns or a signal. */
static void
timedwait_unlocked (struct cor_disk *d, uint64_t abs_ns)
{
  struct timespec ts = { abs_ns / NS_PER_SEC, abs_ns % NS_PER_SEC };
  pthread_cond_timedwait (&d->stream.cond, &d->stream.lock, &ts);
}

static bool
block_missing (struct cor_disk *d, uint64_t blk)
{
  return !meta_test (d->md, META_PRESENT, blk);
}

/* No hint range: a chunk picked from the sequential cursor. */
#define NO_HINT SIZE_MAX

/* Must be called with stream.lock held.  The next run to fetch: up to one
 * chunk of consecutive missing blocks; *hint is the hint range it came
 * from, or NO_HINT.  false when none is missing (that the bitmap shows:
 * busy blocks still count as missing). */
static bool
pick_unlocked (struct cor_disk *d, uint64_t *first, uint64_t *end, size_t *hint)
{
  uint64_t chunk = STREAM_CHUNK >> d->block_shift, blk, e;

  if (chunk == 0)
    chunk = 1;
  while (d->stream.hint_idx < d->stream.nr_hints) {
    const struct cor_range *h = &d->stream.hints[d->stream.hint_idx];
    uint64_t hf = h->offset >> d->block_shift;
    uint64_t he = (h->offset + h->length + d->block_size - 1) >> d->block_shift;
    if (he > d->nr_blocks)
      he = d->nr_blocks;
    if (d->stream.hint_cursor < hf)
      d->stream.hint_cursor = hf;
    blk = meta_next (d->md, META_PRESENT, false, d->stream.hint_cursor);
    if (blk < he) {
      for (e = blk + 1; e < he && e - blk < chunk && block_missing (d, e); e++)
        ;
      d->stream.hint_cursor = e;
      *first = blk;
      *end = e;
      *hint = d->stream.hint_idx;
      return true;
    }
    d->stream.hint_idx++;
    d->stream.hint_cursor = 0;
  }
  blk = meta_next (d->md, META_PRESENT, false, d->stream.cursor);
  if (blk >= d->nr_blocks) {
    if (d->stream.cursor == 0)
      return false;
    d->stream.cursor = 0;       /* another pass for skipped blocks */
    blk = meta_next (d->md, META_PRESENT, false, 0);
    if (blk >= d->nr_blocks)
      return false;
  }
  for (e = blk + 1; e < d->nr_blocks && e - blk < chunk && block_missing (d, e); e++)
    ;
  d->stream.cursor = e;
  *first = blk;
  *end = e;
  *hint = NO_HINT;
  return true;
}

/* Must be called with stream.lock held.  Come back to block blk of a
 * chunk picked from hint range hint (or NO_HINT): move the cursor it
 * came from back to it, so that it is not skipped until the next pass. */
static void
rewind_unlocked (struct cor_disk *d, size_t hint, uint64_t blk)
{
  if (hint == NO_HINT) {
    if (d->stream.cursor > blk)
      d->stream.cursor = blk;
  }
  else if (d->stream.hint_idx == hint && d->stream.hint_cursor > blk)
    d->stream.hint_cursor = blk;
}

static bool
running (struct cor_disk *d)
{
  return __atomic_load_n (&d->stream.state, __ATOMIC_SEQ_CST) == S_RUNNING &&
    !__atomic_load_n (&d->stream.stop, __ATOMIC_SEQ_CST);
}

/* Wait while the guest is faulting (see the design notes). */
static void
yield_to_guest (struct cor_disk *d)
{
  uint64_t start = now_ns ();

  while (running (d) && now_ns () - start < YIELD_MAX_NS) {
    uint64_t last = __atomic_load_n (&d->last_fg_ns, __ATOMIC_SEQ_CST);
    if (__atomic_load_n (&d->fg_inflight, __ATOMIC_SEQ_CST) == 0 &&
        __atomic_load_n (&d->guest_waiters, __ATOMIC_SEQ_CST) == 0 &&
        (last == 0 || now_ns () - last >= QUIET_NS))
      return;
    sleep_ns (5 * 1000000ULL);
  }
}

/* Wait until the rate limiter is out of debt (a chunk is charged after
 * it is fetched, by the bytes actually read from the parent, so zero
 * extents cost nothing).  false if the stream stopped meanwhile. */
static bool
throttle (struct cor_disk *d)
{
  bool ok = true;

  pthread_mutex_lock (&d->stream.lock);
  for (;;) {
    uint64_t now = now_ns (), rate = d->stream.rate;
    if (d->stream.stop || d->stream.state != S_RUNNING) {
      ok = false;
      break;
    }
    if (rate == 0)
      break;
    if (d->stream.tokens_ns == 0)
      d->stream.tokens_ns = now;
    d->stream.tokens += (double) (now - d->stream.tokens_ns) / NS_PER_SEC * rate;
    d->stream.tokens_ns = now;
    if (d->stream.tokens > rate)
      d->stream.tokens = rate;  /* one second of burst */
    if (d->stream.tokens >= 0)
      break;
    uint64_t wait = (uint64_t) (-d->stream.tokens / rate * NS_PER_SEC);
    timedwait_unlocked (d, now + (wait < 100000000ULL ? wait : 100000000ULL) + 1);
  }
  pthread_mutex_unlock (&d->stream.lock);
  return ok;
}

/* Every block is present: make it durable, record it, let go of the
 * parent.  Only then may the stream say it is complete: `stream --wait`
 * returns on that, and the operator may shut the source down. */
static int
mark_complete (struct meta_record *rec, void *arg, char *errbuf, size_t len)
{
  if (rec->complete)
    return 1;
  rec->complete = true;
  return 0;
}

static bool
finish (struct cor_disk *d)
{
  char msg[256];
  int err;

  if (cor_flush (d, &err) == -1) {
    log_error ("cor: disk %s: every block is local, but the flush failed: %s; "
               "retrying", d->name, strerror (err));
    return false;
  }
  if (cor_update_record (d, mark_complete, NULL, msg, sizeof msg) == -1) {
    log_error ("cor: disk %s: recording completion: %s; retrying", d->name, msg);
    return false;
  }
  log_info ("cor: disk %s: complete: every block is local (%" PRIu64 " bytes streamed)",
            d->name, __atomic_load_n (&d->streamed_bytes, __ATOMIC_RELAXED));
  if (!d->mirror && d->stream.release_parent) {
    remote_release (d->remote);
    if (d->format)
      format_release (d->format);
  }
  return true;
}

/* After the state is S_COMPLETE, so that a waiter woken by the event
 * sees it. */
static void
announce_complete (struct cor_disk *d)
{
  cor_emit_event (d, COR_EV_STREAM_COMPLETE, d->size, d->size, NULL);
  if (d->mirror)
    cor_emit_event (d, COR_EV_MIRROR_READY, d->size, d->size, NULL);
}

/* Must be called with stream.lock held.  Progress bookkeeping: fetched
 * bytes charge the rate limiter and count as streamed; covered bytes
 * (fetched or found zero) measure progress.  Both have a recent rate:
 * covered bytes fly through zero extents, so the fetched rate is the one
 * a rate limit bounds and the one the ETA divides by (status.c). */
static void
account_unlocked (struct cor_disk *d, uint64_t fetched, uint64_t covered)
{
  uint64_t now = now_ns ();

  __atomic_fetch_add (&d->streamed_bytes, fetched, __ATOMIC_RELAXED);
  if (d->stream.rate)
    d->stream.tokens -= fetched;
  d->stream.covered_total += covered;
  d->stream.fetched_total += fetched;
  if (d->stream.rate_window_ns == 0)
    d->stream.rate_window_ns = now;
  d->stream.rate_window_bytes += covered;
  d->stream.rate_window_fetched += fetched;
  if (now - d->stream.rate_window_ns >= 2 * NS_PER_SEC) {
    double secs = (double) (now - d->stream.rate_window_ns) / NS_PER_SEC;
    d->stream.recent_bps = d->stream.rate_window_bytes / secs;
    d->stream.recent_fetched_bps = d->stream.rate_window_fetched / secs;
    d->stream.rate_window_ns = now;
    d->stream.rate_window_bytes = d->stream.rate_window_fetched = 0;
  }
  else if (now > d->stream.rate_window_ns) {
    /* Before a first estimate: one from the window so far rather than
     * none for 2 s.  The fetched rate waits for a second of it: the
     * workers' first chunks go out at once, before the rate limiter has
     * charged any, and over a few milliseconds would read as a rate many
     * times the limit. */
    uint64_t elapsed = now - d->stream.rate_window_ns;
    double secs = (double) elapsed / NS_PER_SEC;
    if (d->stream.recent_bps == 0)
      d->stream.recent_bps = d->stream.rate_window_bytes / secs;
    if (d->stream.recent_fetched_bps == 0 && elapsed >= NS_PER_SEC)
      d->stream.recent_fetched_bps = d->stream.rate_window_fetched / secs;
  }
}

/* Must be called with stream.lock held, which it drops meanwhile.  The
 * first worker to run surveys the zero extents (survey.c) for the ETA;
 * the others stream. */
static void
survey_unlocked (struct cor_disk *d)
{
  uint64_t skipped0 = __atomic_load_n (&d->zero_skipped_bytes, __ATOMIC_RELAXED), zero;
  bool ok;

  d->stream.survey_started = true;
  pthread_mutex_unlock (&d->stream.lock);
  ok = cor_stream_survey (d, &zero);
  pthread_mutex_lock (&d->stream.lock);
  if (ok) {
    d->stream.survey_zero = zero;
    d->stream.survey_skipped0 = skipped0;
    d->stream.survey_done = true;
  }
}

static void *
worker (void *arg)
{
  struct cor_disk *d = arg;

  pthread_mutex_lock (&d->stream.lock);
  for (;;) {
    uint64_t first, end, next, covered;
    size_t hint;
    int64_t r;
    int err = 0;

    while (!d->stream.stop && d->stream.state != S_RUNNING)
      pthread_cond_wait (&d->stream.cond, &d->stream.lock);
    if (d->stream.stop)
      break;
    if (!d->stream.survey_started) {
      survey_unlocked (d);
      continue;
    }
    if (!pick_unlocked (d, &first, &end, &hint)) {
      if (meta_count (d->md, META_PRESENT) == d->nr_blocks && !d->stream.finishing) {
        /* One worker finishes; the others wait for it (finishing) and
         * then see the state change. */
        d->stream.finishing = true;
        pthread_mutex_unlock (&d->stream.lock);
        bool ok = finish (d);
        pthread_mutex_lock (&d->stream.lock);
        d->stream.finishing = false;
        if (ok && d->stream.state == S_RUNNING) {
          d->stream.state = S_COMPLETE;
          pthread_cond_broadcast (&d->stream.cond);
          pthread_mutex_unlock (&d->stream.lock);
          announce_complete (d);
          pthread_mutex_lock (&d->stream.lock);
        }
        else if (!ok)
          timedwait_unlocked (d, now_ns () + NS_PER_SEC);
      }
      else
        timedwait_unlocked (d, now_ns () + 20 * 1000000ULL);
      continue;
    }
    pthread_mutex_unlock (&d->stream.lock);

    yield_to_guest (d);
    if (!throttle (d)) {
      pthread_mutex_lock (&d->stream.lock);
      rewind_unlocked (d, hint, first);
      continue;
    }
    /* A guest read waiting for this chunk's blocks gives up at its own
     * deadline (fault_in); the chunk may take longer on a slow link. */
    r = cor_populate (d, first, end, now_ns () + CHUNK_DEADLINE_NS, 0, &next, &covered, &err);

    pthread_mutex_lock (&d->stream.lock);
    if (r == -1 && d->stream.stop) {
      /* Cut short by the shutdown (remote_cancel): not a stream error. */
      rewind_unlocked (d, hint, next);
      continue;
    }
    if (r == -1) {
      char msg[512];
      d->stream.errors++;
      snprintf (msg, sizeof msg, "offset %" PRIu64 ": %s", next << d->block_shift,
                strerror (err));
      snprintf (d->stream.last_error, sizeof d->stream.last_error, "%s", msg);
      rewind_unlocked (d, hint, next);
      uint64_t backoff = d->stream.backoff_ns;
      d->stream.backoff_ns = backoff * 2 > BACKOFF_MAX_NS ? BACKOFF_MAX_NS : backoff * 2;
      log_warn ("cor: disk %s: stream: %s; retrying in %.1f s", d->name, msg, backoff / 1e9);
      cor_emit_event (d, COR_EV_STREAM_ERROR, 0, 0, msg);
      timedwait_unlocked (d, now_ns () + backoff);
      continue;
    }
    d->stream.backoff_ns = BACKOFF_MIN_NS;
    /* Only what this chunk made present counts for the rate and the
     * ETA: a chunk held off or found busy covered nothing. */
    account_unlocked (d, r, covered);
    if (next < end) {
      /* Held off by an exclusive command or a waiting guest (inflight.c):
       * come back to the rest rather than skip ahead, after a moment. */
      rewind_unlocked (d, hint, next);
      timedwait_unlocked (d, now_ns () + 5 * 1000000ULL);
    }
    else if (covered == 0 && meta_next (d->md, META_PRESENT, false, first) < end)
      /* All of it was busy with guest faults or other workers: give them
       * a moment rather than spin. */
      timedwait_unlocked (d, now_ns () + 5 * 1000000ULL);
    if (now_ns () - d->stream.last_progress_ns >= PROGRESS_NS) {
      d->stream.last_progress_ns = now_ns ();
      uint64_t present = meta_count (d->md, META_PRESENT);
      uint64_t done = present == d->nr_blocks ? d->size : present << d->block_shift;
      cor_emit_event (d, COR_EV_STREAM_PROGRESS, done, d->size, NULL);
    }
  }
  pthread_mutex_unlock (&d->stream.lock);
  return NULL;
}

/* Must be called with stream.lock held. */
static int
start_workers_unlocked (struct cor_disk *d)
{
  if (d->stream.workers_started)
    return 0;
  for (int i = 0; i < COR_STREAM_WORKERS; i++)
    if (thread_create_nosig (&d->stream.workers[i], worker, d) == -1) {
      log_error ("cor: disk %s: starting stream workers: %m", d->name);
      /* Stop the ones started. */
      d->stream.stop = true;
      pthread_cond_broadcast (&d->stream.cond);
      pthread_mutex_unlock (&d->stream.lock);
      for (int j = 0; j < i; j++)
        pthread_join (d->stream.workers[j], NULL);
      pthread_mutex_lock (&d->stream.lock);
      d->stream.stop = false;
      return -1;
    }
  d->stream.workers_started = true;
  return 0;
}

int
cor_stream_start (struct cor_disk *d, int *err)
{
  int ret = 0;

  if (__atomic_load_n (&d->owner, __ATOMIC_SEQ_CST) == META_INCOMING) {
    /* Nothing read while incoming may be kept: no streaming until the
     * disk is activated. */
    *err = EBUSY;
    return -1;
  }
  pthread_mutex_lock (&d->stream.lock);
  /* Even with every block present, a worker finishes the stream: the
   * blocks may have come from guest faults not yet committed. */
  if (d->stream.state != S_RUNNING && d->stream.state != S_COMPLETE) {
    if (start_workers_unlocked (d) == -1) {
      *err = EAGAIN;
      ret = -1;
    }
    else {
      if (d->stream.state != S_PAUSED)
        d->stream.cursor = 0;
      d->stream.state = S_RUNNING;
      log_info ("cor: disk %s: stream started", d->name);
    }
  }
  pthread_cond_broadcast (&d->stream.cond);
  pthread_mutex_unlock (&d->stream.lock);
  return ret;
}

static int
transition (struct cor_disk *d, int from_mask, int to, const char *what, int *err)
{
  int ret = 0;

  pthread_mutex_lock (&d->stream.lock);
  if (from_mask & (1 << d->stream.state)) {
    d->stream.state = to;
    log_info ("cor: disk %s: stream %s", d->name, what);
  }
  else {
    *err = EINVAL;
    ret = -1;
  }
  pthread_cond_broadcast (&d->stream.cond);
  pthread_mutex_unlock (&d->stream.lock);
  return ret;
}

int
cor_stream_pause (struct cor_disk *d, int *err)
{
  return transition (d, 1 << S_RUNNING, S_PAUSED, "paused", err);
}

int
cor_stream_resume (struct cor_disk *d, int *err)
{
  return transition (d, 1 << S_PAUSED, S_RUNNING, "resumed", err);
}

int
cor_stream_cancel (struct cor_disk *d, int *err)
{
  return transition (d, 1 << S_RUNNING | 1 << S_PAUSED, S_CANCELLED, "cancelled", err);
}

void
cor_stream_set_rate (struct cor_disk *d, uint64_t bytes_per_s)
{
  pthread_mutex_lock (&d->stream.lock);
  d->stream.rate = bytes_per_s;
  d->stream.tokens = 0;
  d->stream.tokens_ns = 0;
  pthread_cond_broadcast (&d->stream.cond);
  pthread_mutex_unlock (&d->stream.lock);
}

void
cor_stream_autostart (struct cor_disk *d, enum cor_stream_mode mode)
{
  int err;

  if (__atomic_load_n (&d->owner, __ATOMIC_SEQ_CST) == META_INCOMING)
    return;                     /* cor_activate calls this again */
  if (mode == COR_STREAM_ON)
    cor_stream_start (d, &err);
  else if (mode == COR_STREAM_PAUSED) {
    pthread_mutex_lock (&d->stream.lock);
    if (meta_count (d->md, META_PRESENT) == d->nr_blocks)
      d->stream.state = S_COMPLETE;
    else if (start_workers_unlocked (d) == 0)
      d->stream.state = S_PAUSED;
    pthread_mutex_unlock (&d->stream.lock);
  }
  else if (meta_count (d->md, META_PRESENT) == d->nr_blocks) {
    pthread_mutex_lock (&d->stream.lock);
    d->stream.state = S_COMPLETE;
    pthread_mutex_unlock (&d->stream.lock);
  }
}

void
cor_stream_stop (struct cor_disk *d)
{
  pthread_mutex_lock (&d->stream.lock);
  d->stream.stop = true;
  pthread_cond_broadcast (&d->stream.cond);
  pthread_mutex_unlock (&d->stream.lock);
}

void
cor_stream_join (struct cor_disk *d)
{
  bool started;

  pthread_mutex_lock (&d->stream.lock);
  started = d->stream.workers_started;
  pthread_mutex_unlock (&d->stream.lock);
  if (started)
    for (int i = 0; i < COR_STREAM_WORKERS; i++)
      pthread_join (d->stream.workers[i], NULL);
  pthread_mutex_lock (&d->stream.lock);
  d->stream.workers_started = false;
  pthread_mutex_unlock (&d->stream.lock);
}
