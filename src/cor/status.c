/* corfs: events (one name table) and status snapshots.
 *
 * Thread model: any thread.  Events are delivered on the thread that
 * caused them; the callback is published with atomics.  Status reads
 * counters with atomics and takes d->stream.lock for the streamer's
 * fields (LOCK ORDER in cor-internal.h).
 */
#include <stdio.h>
#include <string.h>

#include "cor/cor-internal.h"
#include "format/format.h"
#include "remote/remote.h"

/* ---- events ---- */

void
cor_set_event_fn (struct cor_engine *e,
                  void (*fn) (void *opaque, const struct cor_event *ev), void *opaque)
{
  /* Emitters run on other threads: publish the argument before the
   * function, and read them in the opposite order (cor_emit). */
  __atomic_store_n (&e->event_opaque, opaque, __ATOMIC_SEQ_CST);
  __atomic_store_n (&e->event_fn, fn, __ATOMIC_SEQ_CST);
}

static const char *const event_names[COR_EV_NR] = {
  [COR_EV_STREAM_PROGRESS] = "stream-progress",
  [COR_EV_STREAM_COMPLETE] = "stream-complete",
  [COR_EV_MIRROR_READY] = "mirror-ready",
  [COR_EV_STREAM_ERROR] = "stream-error",
  [COR_EV_ACTIVATED] = "activated",
  [COR_EV_HANDED_OFF] = "handed-off",
  [COR_EV_RECLAIMED] = "reclaimed",
  [COR_EV_PIVOTED] = "pivoted",
  [COR_EV_ABORTED] = "aborted",
  [COR_EV_MERGE_ERROR] = "merge-error",
  [COR_EV_SYNCED] = "synced",
  [COR_EV_FLATTENED] = "flattened",
  [COR_EV_COPY_COMPLETE] = "copy-complete",
  [COR_EV_COPY_FAILED] = "copy-failed",
};

const char *
cor_event_name (enum cor_event_type type)
{
  return (unsigned) type < COR_EV_NR ? event_names[type] : "unknown";
}

void
cor_emit_event (struct cor_disk *d, enum cor_event_type type, uint64_t done, uint64_t total,
                const char *message)
{
  cor_emit (d, cor_event_name (type), done, total, message);
}

void
cor_emit (struct cor_disk *d, const char *type, uint64_t done, uint64_t total,
          const char *message)
{
  struct cor_event ev = { type, d->name, done, total, message };
  void (*fn) (void *, const struct cor_event *) =
    __atomic_load_n (&d->e->event_fn, __ATOMIC_SEQ_CST);

  if (fn)
    fn (__atomic_load_n (&d->e->event_opaque, __ATOMIC_SEQ_CST), &ev);
}

/* ---- status ---- */

/* What status needs of the stream beside its fields (stream.lock). */
struct eta_input {
  uint64_t covered_total, fetched_total;
  bool surveyed;
  uint64_t survey_zero, survey_skipped0, zero_skipped_now;
};

/* Of the missing bytes, those that hold data (to fetch): the missing
 * bytes less those the survey found zero and the stream has not skipped
 * since (survey.c); before a survey, or without one, estimated from the
 * share of data among what the stream covered so far. */
static double
missing_data (uint64_t missing, const struct eta_input *in)
{
  if (in->surveyed) {
    uint64_t skipped = in->zero_skipped_now - in->survey_skipped0;
    uint64_t zero = in->survey_zero > skipped ? in->survey_zero - skipped : 0;
    return zero < missing ? missing - zero : 0;
  }
  return in->covered_total ? (double) missing * in->fetched_total / in->covered_total : missing;
}

/* The stream's ETA in seconds: the missing data over the rate it is
 * fetched at.  Zero extents cost no fetch and a rate limit does not apply
 * to them, so dividing every missing byte by the rate of progress
 * (bytes_per_s) swung with the layout.  0 when complete, -1 when unknown
 * (not running, or no rate yet). */
static int64_t
stream_eta (const struct cor_status *st, const struct eta_input *in)
{
  uint64_t missing = (st->nr_blocks - st->present_blocks) * st->block_size;
  double data = missing_data (missing, in);

  if (st->present_blocks == st->nr_blocks)
    return 0;
  if (strcmp (st->stream_state, "running") != 0)
    return -1;
  if (data >= st->block_size)
    return st->stream_fetched_bytes_per_s > 0
      ? (int64_t) (data / st->stream_fetched_bytes_per_s) + 1 : -1;
  if (in->surveyed)
    return 1;                   /* zeros alone left: no fetch, no rate limit */
  /* Unsurveyed, and only zeros so far: progress alone. */
  return st->stream_bytes_per_s > 0 ? (int64_t) (missing / st->stream_bytes_per_s) + 1 : -1;
}

void
cor_disk_status (struct cor_disk *d, struct cor_status *st)
{
  static const char *health[] = { "rw", "ro", "failed" };
  struct meta_record rec;
  struct remote_stats rs;
  struct eta_input in;

  memset (st, 0, sizeof *st);
  meta_disk_record (d->md, &rec);
  st->size = cor_disk_size (d);
  st->parent_size = d->parent_size;
  st->block_size = d->block_size;
  st->nr_blocks = cor_disk_nr_blocks (d);
  st->present_blocks = meta_count (d->md, META_PRESENT);
  /* A grow sets the new blocks' bits just before it publishes their
   * number. */
  if (st->present_blocks > st->nr_blocks)
    st->present_blocks = st->nr_blocks;
  st->dirty_blocks = meta_count (d->md, META_DIRTY);
  st->suspect_blocks = meta_count (d->md, META_SUSPECT);
  st->health = health[__atomic_load_n (&d->health, __ATOMIC_SEQ_CST)];
  st->owner_state = rec.state;
  st->epoch = rec.epoch;
  st->generation = rec.generation;
  st->widened = rec.widened_generation != 0;
  st->parent_url = remote_url (d->remote);
  st->parent_backend = remote_backend (d->remote);
  st->parent_state = remote_state_name (remote_status (d->remote, st->parent_error,
                                                       sizeof st->parent_error));
  st->parent_format = d->format ? format_name (format_kind (d->format)) : "raw";
  /* A fault in the image (a bad table found by a read) when the remote
   * itself has none to report. */
  if (d->format && !st->parent_error[0])
    format_last_error (d->format, st->parent_error, sizeof st->parent_error);
  remote_get_stats (d->remote, &rs);
  st->remote_retries = rs.retries;
  st->remote_reconnects = rs.reconnects;
  st->nr_sources = remote_nr_sources (d->remote);
  if (st->nr_sources > COR_MAX_SOURCES)
    st->nr_sources = COR_MAX_SOURCES;
  for (size_t i = 0; i < st->nr_sources; i++) {
    struct remote_source_info si;
    remote_source_info (d->remote, i, &si);
    st->sources[i] = (struct cor_source_status) {
      .url = si.url, .backend = si.backend, .state = si.state, .reads = si.reads,
      .bytes = si.bytes, .errors = si.errors, .latency_us = si.latency_us };
    snprintf (st->sources[i].error, sizeof st->sources[i].error, "%s", si.error);
  }
  st->fetched_bytes = __atomic_load_n (&d->fetched_bytes, __ATOMIC_RELAXED);
  st->fetch_requests = __atomic_load_n (&d->fetch_requests, __ATOMIC_RELAXED);
  st->fetch_errors = __atomic_load_n (&d->fetch_errors, __ATOMIC_RELAXED);
  st->guest_read_bytes = __atomic_load_n (&d->guest_read_bytes, __ATOMIC_RELAXED);
  st->guest_write_bytes = __atomic_load_n (&d->guest_write_bytes, __ATOMIC_RELAXED);
  st->flushes = __atomic_load_n (&d->flushes, __ATOMIC_RELAXED);
  st->foreground_fetched_bytes = __atomic_load_n (&d->fg_fetched_bytes, __ATOMIC_RELAXED);
  st->background_fetched_bytes = __atomic_load_n (&d->bg_fetched_bytes, __ATOMIC_RELAXED);
  st->zero_skipped_bytes = __atomic_load_n (&d->zero_skipped_bytes, __ATOMIC_RELAXED);
  st->writeback_bytes = __atomic_load_n (&d->wb_written_bytes, __ATOMIC_RELAXED);
  st->writeback_equal_bytes = __atomic_load_n (&d->wb_equal_bytes, __ATOMIC_RELAXED);
  for (int i = 0; i <= COR_LAT_BUCKETS; i++)
    st->fault_latency[i] = __atomic_load_n (&d->fault_latency[i], __ATOMIC_RELAXED);
  st->fault_latency_sum_us = __atomic_load_n (&d->fault_latency_sum_us, __ATOMIC_RELAXED);
  pthread_mutex_lock (&d->stream.lock);
  st->stream_state = cor_stream_state_name (d);
  st->stream_rate = d->stream.rate;
  st->streamed_bytes = __atomic_load_n (&d->streamed_bytes, __ATOMIC_RELAXED);
  st->stream_errors = d->stream.errors;
  st->stream_bytes_per_s = d->stream.recent_bps;
  st->stream_fetched_bytes_per_s = d->stream.recent_fetched_bps;
  in = (struct eta_input) { d->stream.covered_total, d->stream.fetched_total,
                            d->stream.survey_done, d->stream.survey_zero,
                            d->stream.survey_skipped0, st->zero_skipped_bytes };
  snprintf (st->stream_error, sizeof st->stream_error, "%s", d->stream.last_error);
  pthread_mutex_unlock (&d->stream.lock);
  st->eta_s = stream_eta (st, &in);
}

int
cor_disk_extents (struct cor_disk *d, bool dirty, uint64_t from_offset,
                  int (*fn) (void *opaque, uint64_t offset, uint64_t length),
                  void *opaque)
{
  enum meta_map map = dirty ? META_DIRTY : META_PRESENT;
  uint64_t blk = from_offset >> d->block_shift;

  while ((blk = meta_next (d->md, map, true, blk)) < d->nr_blocks) {
    uint64_t end = meta_next (d->md, map, false, blk);
    if (fn (opaque, block_offset (d, blk), blocks_length (d, blk, end)) == -1)
      return -1;
    blk = end;
  }
  return 0;
}
const uint64_t cor_latency_bounds_us[COR_LAT_BUCKETS] = {
  100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 1000000, 10000000,
};
