/* corfs: the metrics in the Prometheus text exposition format (version
 * 0.0.4), for the control socket's `metrics` command and for GET /metrics
 * (metrics-http.c): one function builds the text for both.
 *
 * Notes on the thread model: ctl_metrics_text runs on the ctl thread and
 * on metrics-http's server thread, possibly at once.  It keeps no state
 * of its own; it takes only the engine's short status locks
 * (cor_disk_status), once a disk, never waits for I/O, and its work is
 * bounded by the number of disks (fixed once the daemon serves).  No
 * lock of this module is taken here.
 *
 * Names follow Prometheus conventions: base units (bytes, seconds) in the
 * name, `_total` on counters, labels of low cardinality only (the disk's
 * name; its parent's backend on corfs_disk_info, to join on `disk`).
 * corfs_blocks, corfs_present_blocks and corfs_dirty_blocks count blocks,
 * not a base unit; they are documented (docs/control.md) so they stay,
 * beside the _bytes gauges.
 */
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/version.h"
#include "cor/cor.h"
#include "ctl/ctl-internal.h"
#include "ctl/ctl.h"

/* How a table entry's value comes out of struct cor_status. */
enum metric_kind {
  VALUE,                        /* the field as it is */
  BLOCKS_AS_BYTES,              /* a block count times the block size, capped at the size */
  BY_SOURCE,                    /* two series: the guest's (field), the streamer's (field2) */
};

/* The metrics with one value a disk (or two, BY_SOURCE), in the order
 * they are printed; field and field2 are uint64_t fields of struct
 * cor_status. */
static const struct metric {
  const char *name, *type, *help;
  enum metric_kind kind;
  size_t field, field2;
} METRICS[] = {
#define F(x) offsetof (struct cor_status, x)
#define GAUGE(name, help, x) { name, "gauge", help, VALUE, F (x), 0 }
#define COUNTER(name, help, x) { name, "counter", help, VALUE, F (x), 0 }
  GAUGE ("corfs_disk_size_bytes", "Virtual size of the disk.", size),
  GAUGE ("corfs_block_size_bytes", "Block size of the disk's overlay.", block_size),
  GAUGE ("corfs_blocks", "Blocks in the disk.", nr_blocks),
  GAUGE ("corfs_present_blocks", "Blocks present in the overlay.", present_blocks),
  GAUGE ("corfs_dirty_blocks", "Blocks written locally (differ from the parent).",
         dirty_blocks),
  { "corfs_present_bytes", "gauge", "Bytes of the blocks present in the overlay.",
    BLOCKS_AS_BYTES, F (present_blocks), 0 },
  { "corfs_dirty_bytes", "gauge", "Bytes of the blocks written locally.",
    BLOCKS_AS_BYTES, F (dirty_blocks), 0 },
  { "corfs_suspect_bytes", "gauge",
    "Bytes of the blocks the parent may lack (after an unclean shutdown).",
    BLOCKS_AS_BYTES, F (suspect_blocks), 0 },
  { "corfs_fetched_bytes_total", "counter", "Bytes read from the parent, by who asked.",
    BY_SOURCE, F (foreground_fetched_bytes), F (background_fetched_bytes) },
  COUNTER ("corfs_zero_skipped_bytes_total", "Bytes the parent reported as zero, not fetched.",
           zero_skipped_bytes),
  COUNTER ("corfs_guest_read_bytes_total", "Bytes the guest read.", guest_read_bytes),
  COUNTER ("corfs_guest_written_bytes_total", "Bytes the guest wrote.", guest_write_bytes),
  COUNTER ("corfs_remote_requests_total", "Read requests sent to the parent.", fetch_requests),
  COUNTER ("corfs_remote_errors_total", "Parent reads that failed after retries.", fetch_errors),
  COUNTER ("corfs_remote_retries_total", "Parent requests retried.", remote_retries),
  COUNTER ("corfs_remote_reconnects_total", "Reconnections to the parent.", remote_reconnects),
  COUNTER ("corfs_stream_errors_total", "Streamer chunks that failed (and were retried).",
           stream_errors),
  COUNTER ("corfs_writeback_bytes_total", "Bytes written to the parent by merge and abort.",
           writeback_bytes),
  COUNTER ("corfs_writeback_equal_bytes_total",
           "Suspect bytes found equal to the parent's, so not written back.",
           writeback_equal_bytes),
  COUNTER ("corfs_flushes_total", "Guest fsync/flush requests.", flushes),
#undef COUNTER
#undef GAUGE
#undef F
};

static uint64_t
field_value (const struct cor_status *st, size_t field)
{
  return *(const uint64_t *) ((const char *) st + field);
}

static void
metric_head (FILE *f, const char *name, const char *type, const char *help)
{
  fprintf (f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value, escaped as the format wants (backslash, quote and
 * newline).  Disk names and backends never hold them; the version comes
 * from a file. */
static void
put_label (FILE *f, const char *v)
{
  for (; *v; v++) {
    if (*v == '\\' || *v == '"')
      fputc ('\\', f);
    if (*v == '\n')
      fputs ("\\n", f);
    else
      fputc (*v, f);
  }
}

/* The build, and each disk with its parent's backend: info gauges, 1. */
static void
print_info (FILE *f, struct cor_engine *e, const struct cor_status *sts, size_t n)
{
  metric_head (f, "corfs_build_info", "gauge", "The corfs build: version and git commit.");
  fputs ("corfs_build_info{version=\"", f);
  put_label (f, corfs_version ());
  fputs ("\",commit=\"", f);
  put_label (f, corfs_commit ());
  fputs ("\"} 1\n", f);
  metric_head (f, "corfs_disk_info", "gauge", "Each disk and its parent's backend.");
  for (size_t i = 0; i < n; i++) {
    fputs ("corfs_disk_info{disk=\"", f);
    put_label (f, cor_disk_name (cor_disk_get (e, i)));
    fputs ("\",backend=\"", f);
    put_label (f, sts[i].parent_backend ? sts[i].parent_backend : "");
    fputs ("\"} 1\n", f);
  }
}

/* The guest fault latency histogram of every disk. */
static void
print_fault_histogram (FILE *f, struct cor_engine *e, const struct cor_status *sts, size_t n)
{
  metric_head (f, "corfs_guest_fault_seconds", "histogram",
               "Latency of guest reads that had to wait for the parent.");
  for (size_t i = 0; i < n; i++) {
    const char *name = cor_disk_name (cor_disk_get (e, i));
    uint64_t cum = 0;
    for (int b = 0; b < COR_LAT_BUCKETS; b++) {
      cum += sts[i].fault_latency[b];
      fprintf (f, "corfs_guest_fault_seconds_bucket{disk=\"%s\",le=\"%g\"} %" PRIu64 "\n",
               name, cor_latency_bounds_us[b] / 1e6, cum);
    }
    cum += sts[i].fault_latency[COR_LAT_BUCKETS];
    fprintf (f, "corfs_guest_fault_seconds_bucket{disk=\"%s\",le=\"+Inf\"} %" PRIu64 "\n", name, cum);
    fprintf (f, "corfs_guest_fault_seconds_sum{disk=\"%s\"} %" PRIu64 ".%06" PRIu64 "\n", name,
             sts[i].fault_latency_sum_us / 1000000, sts[i].fault_latency_sum_us % 1000000);
    fprintf (f, "corfs_guest_fault_seconds_count{disk=\"%s\"} %" PRIu64 "\n", name, cum);
  }
}

/* Per source of the disks with several (label `url`, credentials
 * stripped): bytes served, failed requests, the latency of the last piece
 * served, and 1 while the source matches and serves. */
static void
print_source_metrics (FILE *f, struct cor_engine *e, const struct cor_status *sts, size_t n)
{
  static const struct { const char *name, *type, *help; } M[] = {
    { "corfs_source_bytes_total", "counter", "Bytes a source served." },
    { "corfs_source_errors_total", "counter", "Requests a source failed (then failed over)." },
    { "corfs_source_latency_seconds", "gauge", "Latency of the last piece a source served." },
    { "corfs_source_up", "gauge", "1 while a source matches and serves." },
  };
  size_t any = 0;

  for (size_t i = 0; i < n; i++)
    any += sts[i].nr_sources;
  for (size_t m = 0; any && m < sizeof M / sizeof M[0]; m++) {
    metric_head (f, M[m].name, M[m].type, M[m].help);
    for (size_t i = 0; i < n; i++)
      for (size_t k = 0; k < sts[i].nr_sources; k++) {
        const struct cor_source_status *src = &sts[i].sources[k];
        fprintf (f, "%s{disk=\"", M[m].name);
        put_label (f, cor_disk_name (cor_disk_get (e, i)));
        fputs ("\",url=\"", f);
        put_label (f, src->url);
        switch (m) {
        case 0: fprintf (f, "\"} %" PRIu64 "\n", src->bytes); break;
        case 1: fprintf (f, "\"} %" PRIu64 "\n", src->errors); break;
        case 2: fprintf (f, "\"} %" PRIu64 ".%06" PRIu64 "\n", src->latency_us / 1000000,
                         src->latency_us % 1000000); break;
        default: fprintf (f, "\"} %d\n", !strcmp (src->state, "ok")); break;
        }
      }
  }
}

/* One series of table entry k for the disk of status st. */
static void
print_series (FILE *f, const struct metric *k, const char *disk, const struct cor_status *st)
{
  uint64_t v = field_value (st, k->field);

  switch (k->kind) {
  case VALUE:
    fprintf (f, "%s{disk=\"%s\"} %" PRIu64 "\n", k->name, disk, v);
    break;
  case BLOCKS_AS_BYTES:
    v *= st->block_size;        /* at most the size plus a block: no overflow */
    fprintf (f, "%s{disk=\"%s\"} %" PRIu64 "\n", k->name, disk, v < st->size ? v : st->size);
    break;
  case BY_SOURCE:
    fprintf (f, "%s{disk=\"%s\",source=\"guest\"} %" PRIu64 "\n", k->name, disk, v);
    fprintf (f, "%s{disk=\"%s\",source=\"stream\"} %" PRIu64 "\n", k->name, disk,
             field_value (st, k->field2));
    break;
  }
}

/* Every metric of the n disks whose status is sts, to f. */
static void
print_metrics (FILE *f, struct cor_engine *e, const struct cor_status *sts, size_t n)
{
  print_info (f, e, sts, n);
  for (size_t m = 0; m < sizeof METRICS / sizeof METRICS[0]; m++) {
    const struct metric *k = &METRICS[m];
    metric_head (f, k->name, k->type, k->help);
    for (size_t i = 0; i < n; i++)
      print_series (f, k, cor_disk_name (cor_disk_get (e, i)), &sts[i]);
  }
  print_fault_histogram (f, e, sts, n);
  print_source_metrics (f, e, sts, n);
}

char *
ctl_metrics_text (struct cor_engine *e, size_t *lenp)
{
  char *buf = NULL;
  size_t len = 0, n = cor_disk_count (e);
  struct cor_status *sts = calloc (n ? n : 1, sizeof *sts);
  FILE *f;

  if (!sts)
    return NULL;
  if (!(f = open_memstream (&buf, &len))) {
    free (sts);
    return NULL;
  }
  for (size_t i = 0; i < n; i++)
    cor_disk_status (cor_disk_get (e, i), &sts[i]);
  print_metrics (f, e, sts, n);
  free (sts);
  if (fclose (f) != 0) {
    free (buf);
    return NULL;
  }
  if (lenp)
    *lenp = len;
  return buf;
}

/* The `metrics` command: {"ok": true, "text": ...}. */
json_t *
ctl_metrics_cmd (struct ctl *c, const char *cmd, json_t *req, json_t *id)
{
  char *text = ctl_metrics_text (c->e, NULL);
  json_t *r;

  if (!text)
    return ctl_error_reply (id, "out of memory");
  r = json_pack ("{s:b, s:s}", "ok", 1, "text", text);
  free (text);
  return ctl_with_id (r, id);
}
