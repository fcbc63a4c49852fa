/* corfs: the control commands that always answer at once, on the ctl
 * thread: status (with the maps in pages), ping and events (the
 * subscription; ctl-events.c sends them); metrics is ctl-metrics.c.  They
 * take only short engine and merge locks (cor_disk_status, merge_status,
 * cor_disk_extents), never wait for I/O.  No lock of this module is
 * taken here.
 */
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/version.h"
#include "cor/cor.h"
#include "ctl/ctl-internal.h"
#include "merge/merge.h"

/* status with maps: at most this many extents in one reply (both maps of
 * every disk in it), so that a fragmented disk neither makes the daemon
 * build a huge reply nor overflows the 1 MiB a client reads (jsonl_recv);
 * a longer map is cut, says so ("truncated") and where the next page
 * starts ("next_offset", for "maps_from"). */
#define MAPS_MAX_EXTENTS 8192

/* One map's page: extents from offset from on, at most limit of them. */
struct map_page {
  json_t *list;
  uint64_t from;
  size_t limit, count;
  bool truncated;               /* an extent past the limit exists... */
  uint64_t end;                 /* ...starting here: the page is whole below it */
};

static int
add_extent (void *opaque, uint64_t offset, uint64_t length)
{
  struct map_page *pg = opaque;

  if (offset + length <= pg->from)
    return 0;
  if (offset < pg->from) {      /* runs through the page's first block */
    length -= pg->from - offset;
    offset = pg->from;
  }
  if (pg->count == pg->limit) {
    pg->truncated = true;
    pg->end = offset;
    return -1;
  }
  json_array_append_new (pg->list,
                         json_pack ("{s:I, s:I}", "offset", (json_int_t) offset,
                                    "length", (json_int_t) length));
  pg->count++;
  return 0;
}

/* Drop or shorten the extents of list at or past end. */
static void
clip_extents (json_t *list, uint64_t end)
{
  size_t n;

  while ((n = json_array_size (list)) > 0) {
    json_t *e = json_array_get (list, n - 1);
    uint64_t off = json_integer_value (json_object_get (e, "offset"));
    uint64_t len = json_integer_value (json_object_get (e, "length"));
    if (off >= end)
      json_array_remove (list, n - 1);
    else {
      if (off + len > end)
        json_object_set_new (e, "length", json_integer ((json_int_t) (end - off)));
      return;
    }
  }
}

/* The present and dirty maps of d from byte from on, within *budget
 * extents (reduced by those used).  Both maps are whole below
 * next_offset; truncated when that is short of the disk's end. */
static json_t *
disk_maps (struct cor_disk *d, uint64_t size, uint64_t from, size_t *budget)
{
  struct map_page p = { .list = json_array (), .from = from, .limit = (*budget + 1) / 2 };
  struct map_page q = { .list = json_array (), .from = from, .limit = *budget / 2 };
  uint64_t next = size;
  json_t *j;

  if (from < size) {
    cor_disk_extents (d, false, from, add_extent, &p);
    cor_disk_extents (d, true, from, add_extent, &q);
  }
  if (p.truncated && p.end < next)
    next = p.end;
  if (q.truncated && q.end < next)
    next = q.end;
  clip_extents (p.list, next);
  clip_extents (q.list, next);
  *budget -= json_array_size (p.list) + json_array_size (q.list);
  j = json_pack ("{s:o, s:o, s:b}", "present", p.list, "dirty", q.list, "truncated", next < size);
  if (j && next < size)
    json_object_set_new (j, "next_offset", json_integer ((json_int_t) next));
  return j;
}

/* A disk's status fields but its stream and job (docs/control.md). */
static json_t *
disk_fields (struct cor_disk *d, const struct cor_status *st)
{
  json_t *j;

  j = json_pack ("{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:b, s:s, s:{s:s, s:I}, "
                 "s:I, s:b, s:{s:s, s:s, s:s, s:s}, "
                 "s:{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}}",
                 "name", cor_disk_name (d),
                 "size", (json_int_t) st->size,
                 "block_size", (json_int_t) st->block_size,
                 "blocks", (json_int_t) st->nr_blocks,
                 "present_blocks", (json_int_t) st->present_blocks,
                 "present_bytes", (json_int_t) (st->present_blocks == st->nr_blocks ? st->size
                                                : st->present_blocks * st->block_size),
                 "dirty_bytes", (json_int_t) (st->dirty_blocks * st->block_size),
                 "suspect_bytes", (json_int_t) (st->suspect_blocks * st->block_size),
                 "complete", st->present_blocks == st->nr_blocks,
                 "health", st->health,
                 "owner", "state", meta_state_name (st->owner_state),
                 "epoch", (json_int_t) st->epoch,
                 "generation", (json_int_t) st->generation,
                 "widened", st->widened,
                 "parent", "url", st->parent_url, "backend", st->parent_backend,
                 "state", st->parent_state, "last_error", st->parent_error,
                 "counters",
                 "fetched_bytes", (json_int_t) st->fetched_bytes,
                 "fetch_requests", (json_int_t) st->fetch_requests,
                 "fetch_errors", (json_int_t) st->fetch_errors,
                 "read_bytes", (json_int_t) st->guest_read_bytes,
                 "written_bytes", (json_int_t) st->guest_write_bytes,
                 "flushes", (json_int_t) st->flushes,
                 "remote_retries", (json_int_t) st->remote_retries,
                 "remote_reconnects", (json_int_t) st->remote_reconnects);
  if (j) {
    json_t *ctr = json_object_get (j, "counters");
    /* The disk's size is its parent's until it grows. */
    json_object_set_new (j, "parent_size", json_integer ((json_int_t) st->parent_size));
    json_object_set_new (json_object_get (j, "parent"), "format",
                         json_string (st->parent_format ? st->parent_format : "raw"));
    json_object_set_new (ctr, "foreground_fetched_bytes", json_integer (st->foreground_fetched_bytes));
    json_object_set_new (ctr, "background_fetched_bytes", json_integer (st->background_fetched_bytes));
    json_object_set_new (ctr, "zero_skipped_bytes", json_integer (st->zero_skipped_bytes));
    json_object_set_new (ctr, "writeback_bytes", json_integer (st->writeback_bytes));
    json_object_set_new (ctr, "writeback_equal_bytes", json_integer (st->writeback_equal_bytes));
  }
  return j;
}

json_t *
ctl_sources_json (const struct cor_status *st)
{
  json_t *a = json_array ();

  for (size_t i = 0; a && i < st->nr_sources; i++) {
    const struct cor_source_status *s = &st->sources[i];
    json_array_append_new (a, json_pack ("{s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:s}",
                                         "url", s->url, "backend", s->backend,
                                         "state", s->state, "reads", (json_int_t) s->reads,
                                         "bytes", (json_int_t) s->bytes,
                                         "errors", (json_int_t) s->errors,
                                         "latency_us", (json_int_t) s->latency_us,
                                         "last_error", s->error));
  }
  return a;
}

static json_t *
stream_fields (const struct cor_status *st)
{
  return json_pack ("{s:s, s:I, s:I, s:f, s:f, s:I, s:I, s:s}",
                    "state", st->stream_state,
                    "rate", (json_int_t) st->stream_rate,
                    "streamed_bytes", (json_int_t) st->streamed_bytes,
                    "bytes_per_s", st->stream_bytes_per_s,
                    "fetched_bytes_per_s", st->stream_fetched_bytes_per_s,
                    "eta_s", (json_int_t) st->eta_s,
                    "errors", (json_int_t) st->stream_errors,
                    "last_error", st->stream_error);
}

static json_t *
job_fields (struct ctl *c, struct cor_disk *d)
{
  struct merge_status ms;

  merge_status (c->mg, d, &ms);
  return json_pack ("{s:s, s:s, s:I, s:I, s:I, s:I, s:b, s:s}",
                    "kind", ms.kind, "state", ms.state,
                    "done_bytes", (json_int_t) ms.done_bytes,
                    "total_bytes", (json_int_t) ms.total_bytes,
                    "passes", (json_int_t) ms.passes,
                    "errors", (json_int_t) ms.errors,
                    "following", ms.following,
                    "last_error", ms.last_error);
}

/* One disk of a status reply.  maps_budget: NULL for no maps, else the
 * extents the reply may still hold. */
static json_t *
disk_status (struct ctl *c, struct cor_disk *d, uint64_t maps_from, size_t *maps_budget)
{
  struct cor_status st;
  json_t *j;

  cor_disk_status (d, &st);
  if (!(j = disk_fields (d, &st)))
    return NULL;
  json_object_set_new (j, "stream", stream_fields (&st));
  json_object_set_new (j, "job", job_fields (c, d));
  if (st.owner_state == META_STANDALONE)
    json_object_set_new (json_object_get (j, "parent"), "state", json_string ("detached"));
  if (st.nr_sources > 0)
    json_object_set_new (json_object_get (j, "parent"), "sources", ctl_sources_json (&st));
  if (maps_budget)
    json_object_set_new (j, "maps", disk_maps (d, st.size, maps_from, maps_budget));
  return j;
}

json_t *
ctl_status_cmd (struct ctl *c, const char *cmd, json_t *req, json_t *id)
{
  const char *name = json_string_value (json_object_get (req, "disk"));
  bool maps = json_is_true (json_object_get (req, "maps"));
  json_t *from = json_object_get (req, "maps_from"), *disks;
  size_t budget = MAPS_MAX_EXTENTS;

  if (from && (!json_is_integer (from) || json_integer_value (from) < 0))
    return ctl_error_reply (id, "\"maps_from\" must be a byte offset (an integer >= 0)");
  disks = json_array ();
  for (size_t i = 0; i < cor_disk_count (c->e); i++) {
    struct cor_disk *d = cor_disk_get (c->e, i);
    if (!name || !strcmp (name, cor_disk_name (d)))
      json_array_append_new (disks, disk_status (c, d, from ? json_integer_value (from) : 0,
                                                 maps ? &budget : NULL));
  }
  if (name && json_array_size (disks) == 0) {
    json_decref (disks);
    return ctl_error_reply (id, "no disk named %s", name);
  }
  json_t *r = json_pack ("{s:b, s:o}", "ok", 1, "disks", disks);
  if (r && c->supervise_fn) {
    const char *mode = NULL;
    unsigned restarts = 0;
    c->supervise_fn (c->supervise_opaque, &mode, &restarts);
    json_object_set_new (r, "supervised", json_pack ("{s:s, s:I}", "restart_mode",
                                                     mode ? mode : "unknown", "restarts",
                                                     (json_int_t) restarts));
  }
  return ctl_with_id (r, id);
}

void
ctl_set_supervise (struct ctl *c, ctl_supervise_fn *fn, void *opaque)
{
  c->supervise_fn = fn;
  c->supervise_opaque = opaque;
}

json_t *
ctl_ping_cmd (struct ctl *c, const char *cmd, json_t *req, json_t *id)
{
  return ctl_with_id (json_pack ("{s:b, s:i, s:s, s:s}", "ok", 1, "pid", (int) getpid (),
                                 "version", corfs_version (), "commit", corfs_commit ()), id);
}

/* The subscription itself is the dispatcher's (the command table says
 * events subscribes); this is its reply. */
json_t *
ctl_events_cmd (struct ctl *c, const char *cmd, json_t *req, json_t *id)
{
  return ctl_ok_reply (id);
}
