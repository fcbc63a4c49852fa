/* corfs: the control socket server.
 *
 * Notes on the thread model: one thread (from ctl_start) runs a poll(2)
 * loop over the listening socket, every client and a wake-up pipe.
 * Requests are answered in order on that thread; the engine calls it
 * makes (status) take only short engine locks.  A client that sends a
 * line over JSONL_MAX_LINE, or malformed JSON, gets an error reply.
 * Client sockets are non-blocking: one that does not read its replies is
 * dropped as soon as its socket buffer is full, so no client can stall
 * the daemon.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "common/jsonl.h"
#include "common/log.h"
#include "common/util.h"
#include "cor/cor.h"
#include "ctl/ctl.h"
#include "ctl/ctl-internal.h"
#include "merge/merge.h"

#define MAX_CLIENTS 64

#define MAX_QUEUED_EVENTS 1024

struct client {
  int fd;
  size_t len;
  bool overlong;                /* discarding the rest of a too-long line */
  bool events;                  /* subscribed to the event stream */
  char buf[JSONL_MAX_LINE];
};

struct ctl {
  struct cor_engine *e;
  struct merge *mg;
  char *path;
  int listen_fd;
  int wake[2];                  /* [1] written to stop or to flush events */
  pthread_t thread;
  struct client *clients[MAX_CLIENTS];   /* the ctl thread's only */
  pthread_mutex_t qlock;        /* protects queue and dropped; a leaf lock */
  json_t *queue;                /* events waiting for the ctl thread */
  uint64_t dropped;
  bool stopping;                /* protected by qlock */
};

/* Send a reply on a non-blocking client socket, waiting at most 2 s in
 * all for the client to make room (a large status --maps reply may not
 * fit the socket buffer at once).  0 or -1 (drop the client). */
static int
send_reply (int fd, const json_t *v)
{
  char *s = json_dumps (v, JSON_COMPACT);
  size_t len, off = 0;
  uint64_t deadline = now_ns () + 2 * NS_PER_SEC;

  if (!s)
    return -1;
  len = strlen (s);
  s[len++] = '\n';
  while (off < len) {
    ssize_t r = send (fd, s + off, len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r > 0) {
      off += r;
      continue;
    }
    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1 && errno == EAGAIN && now_ns () < deadline) {
      struct pollfd p = { .fd = fd, .events = POLLOUT };
      poll (&p, 1, (int) ((deadline - now_ns ()) / 1000000 + 1));
      continue;
    }
    free (s);
    return -1;
  }
  free (s);
  return 0;
}

/* A message cut at its buffer's end may end in part of a multi-byte
 * character: no valid UTF-8, which json_pack refuses (and a client would
 * get no reply at all).  Drop such a partial character. */
static void
utf8_trim_partial (char *s)
{
  size_t n = strlen (s), i = n;

  while (i > 0 && n - i < 3 && ((unsigned char) s[i - 1] & 0xc0) == 0x80)
    i--;                        /* continuation bytes */
  if (i > 0) {
    unsigned char c = s[i - 1];
    size_t need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
    if (n - (i - 1) < need)
      s[i - 1] = '\0';
  }
}

static json_t *
error_reply (json_t *id, const char *fmt, ...)
{
  char msg[512];
  va_list ap;
  json_t *r;
  int n;

  va_start (ap, fmt);
  n = vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  if (n >= (int) sizeof msg)
    utf8_trim_partial (msg);
  r = json_pack ("{s:b, s:s}", "ok", 0, "error", msg);
  if (!r)                       /* still not UTF-8: say so rather than nothing */
    r = json_pack ("{s:b, s:s}", "ok", 0, "error", "(an error message that is not UTF-8)");
  if (id)
    json_object_set (r, "id", id);
  return r;
}

static int
add_extent (void *opaque, uint64_t offset, uint64_t length)
{
  json_array_append_new ((json_t *) opaque,
                         json_pack ("{s:I, s:I}", "offset", (json_int_t) offset,
                                    "length", (json_int_t) length));
  return 0;
}

static json_t *
disk_status (struct ctl *c, struct cor_disk *d, bool maps)
{
  struct cor_status st;
  json_t *j;

  cor_disk_status (d, &st);
  j = json_pack ("{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:b, s:s, s:{s:s, s:I}, "
                 "s:I, s:b, s:{s:s, s:s, s:s, s:s}, "
                 "s:{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}}",
                 "name", cor_disk_name (d),
                 "size", (json_int_t) st.size,
                 "block_size", (json_int_t) st.block_size,
                 "blocks", (json_int_t) st.nr_blocks,
                 "present_blocks", (json_int_t) st.present_blocks,
                 "present_bytes", (json_int_t) (st.present_blocks == st.nr_blocks ? st.size
                                                : st.present_blocks * st.block_size),
                 "dirty_bytes", (json_int_t) (st.dirty_blocks * st.block_size),
                 "suspect_bytes", (json_int_t) (st.suspect_blocks * st.block_size),
                 "complete", st.present_blocks == st.nr_blocks,
                 "health", st.health,
                 "owner", "state", st.owner_state, "epoch", (json_int_t) st.epoch,
                 "generation", (json_int_t) st.generation,
                 "widened", st.widened,
                 "parent", "url", st.parent_url, "backend", st.parent_backend,
                 "state", st.parent_state, "last_error", st.parent_error,
                 "counters",
                 "fetched_bytes", (json_int_t) st.fetched_bytes,
                 "fetch_requests", (json_int_t) st.fetch_requests,
                 "fetch_errors", (json_int_t) st.fetch_errors,
                 "read_bytes", (json_int_t) st.guest_read_bytes,
                 "written_bytes", (json_int_t) st.guest_write_bytes,
                 "flushes", (json_int_t) st.flushes,
                 "remote_retries", (json_int_t) st.remote_retries,
                 "remote_reconnects", (json_int_t) st.remote_reconnects);
  if (j) {
    json_t *ctr = json_object_get (j, "counters");
    json_object_set_new (ctr, "foreground_fetched_bytes", json_integer (st.foreground_fetched_bytes));
    json_object_set_new (ctr, "background_fetched_bytes", json_integer (st.background_fetched_bytes));
    json_object_set_new (ctr, "zero_skipped_bytes", json_integer (st.zero_skipped_bytes));
    json_object_set_new (ctr, "writeback_bytes", json_integer (st.writeback_bytes));
    json_object_set_new (ctr, "writeback_equal_bytes", json_integer (st.writeback_equal_bytes));
    json_object_set_new (j, "stream",
                         json_pack ("{s:s, s:I, s:I, s:f, s:I, s:I, s:s}",
                                    "state", st.stream_state,
                                    "rate", (json_int_t) st.stream_rate,
                                    "streamed_bytes", (json_int_t) st.streamed_bytes,
                                    "bytes_per_s", st.stream_bytes_per_s,
                                    "eta_s", (json_int_t) st.eta_s,
                                    "errors", (json_int_t) st.stream_errors,
                                    "last_error", st.stream_error));
  }
  if (j) {
    struct merge_status ms;
    merge_status (c->mg, d, &ms);
    json_object_set_new (j, "job",
                         json_pack ("{s:s, s:s, s:I, s:I, s:I, s:I, s:b, s:s}",
                                    "kind", ms.kind, "state", ms.state,
                                    "done_bytes", (json_int_t) ms.done_bytes,
                                    "total_bytes", (json_int_t) ms.total_bytes,
                                    "passes", (json_int_t) ms.passes,
                                    "errors", (json_int_t) ms.errors,
                                    "following", ms.following,
                                    "last_error", ms.last_error));
    if (!strcmp (st.owner_state, "standalone"))
      json_object_set_new (json_object_get (j, "parent"), "state", json_string ("detached"));
  }
  if (j && maps) {
    json_t *present = json_array (), *dirty = json_array ();
    cor_disk_extents (d, false, add_extent, present);
    cor_disk_extents (d, true, add_extent, dirty);
    json_object_set_new (j, "maps", json_pack ("{s:o, s:o}", "present", present,
                                               "dirty", dirty));
  }
  return j;
}

/* The engine's event callback: called on engine threads, must not
 * block: queue the event and poke the ctl thread. */
static void
on_event (void *opaque, const struct cor_event *ev)
{
  struct ctl *c = opaque;
  struct timespec ts;
  json_t *j;

  clock_gettime (CLOCK_REALTIME, &ts);
  j = json_pack ("{s:s, s:s, s:f}", "event", ev->type, "disk", ev->disk,
                 "time", ts.tv_sec + ts.tv_nsec / 1e9);
  if (!j)
    return;
  if (ev->total)
    json_object_set_new (j, "done", json_integer (ev->done)),
      json_object_set_new (j, "total", json_integer (ev->total));
  if (ev->message)
    json_object_set_new (j, "message", json_string (ev->message));
  pthread_mutex_lock (&c->qlock);
  if (c->stopping || json_array_size (c->queue) >= MAX_QUEUED_EVENTS) {
    c->dropped++;
    json_decref (j);
  }
  else {
    json_array_append_new (c->queue, j);
    if (write (c->wake[1], "e", 1) == -1) { /* the pipe is full: it is awake */ }
  }
  pthread_mutex_unlock (&c->qlock);
}

/* On the ctl thread: send queued events to subscribers.  A subscriber
 * that cannot take them at once is dropped rather than stall the daemon. */
static void
flush_events (struct ctl *c)
{
  json_t *q, *ev;
  size_t i;

  pthread_mutex_lock (&c->qlock);
  q = c->queue;
  c->queue = json_array ();
  pthread_mutex_unlock (&c->qlock);
  json_array_foreach (q, i, ev) {
    char *line = json_dumps (ev, JSON_COMPACT);
    size_t len;
    if (!line)
      continue;
    len = strlen (line);
    line[len++] = '\n';
    for (int k = 0; k < MAX_CLIENTS; k++) {
      struct client *cl = c->clients[k];
      if (cl && cl->events &&
          send (cl->fd, line, len, MSG_NOSIGNAL | MSG_DONTWAIT) != (ssize_t) len) {
        log_warn ("ctl: dropping an event subscriber that does not keep up");
        close (cl->fd);
        free (cl);
        c->clients[k] = NULL;
      }
    }
    free (line);
  }
  json_decref (q);
}

static json_t *
ok_reply (json_t *id)
{
  json_t *r = json_pack ("{s:b}", "ok", 1);
  if (id)
    json_object_set (r, "id", id);
  return r;
}

static json_t *
stream_cmd (struct ctl *c, json_t *req, json_t *id)
{
  const char *name = json_string_value (json_object_get (req, "disk"));
  const char *action = json_string_value (json_object_get (req, "action"));
  json_t *rate = json_object_get (req, "rate");
  struct cor_disk *d;
  int err = 0, r = 0;

  if (!name)
    return error_reply (id, "stream needs \"disk\"");
  if (!(d = cor_disk_find (c->e, name)))
    return error_reply (id, "no disk named %s", name);
  if (rate) {
    if (!json_is_integer (rate) || json_integer_value (rate) < 0)
      return error_reply (id, "rate must be a number of bytes per second (0: unlimited)");
    cor_stream_set_rate (d, json_integer_value (rate));
  }
  if (!action || !strcmp (action, "start"))
    r = cor_stream_start (d, &err);
  else if (!strcmp (action, "pause"))
    r = cor_stream_pause (d, &err);
  else if (!strcmp (action, "resume"))
    r = cor_stream_resume (d, &err);
  else if (!strcmp (action, "cancel"))
    r = cor_stream_cancel (d, &err);
  else if (!strcmp (action, "rate")) {
    if (!rate)
      return error_reply (id, "action rate needs \"rate\"");
  }
  else
    return error_reply (id, "unknown stream action %s (start, pause, resume, cancel, rate)",
                        action);
  if (r == -1) {
    struct cor_status st;
    cor_disk_status (d, &st);
    if (err == EBUSY)
      return error_reply (id, "disk %s is incoming: it streams once activated", name);
    return error_reply (id, "disk %s: cannot %s the stream: it is %s", name, action,
                        st.stream_state);
  }
  return ok_reply (id);
}

/* Prometheus text exposition format. */
static json_t *
metrics_cmd (struct ctl *c, json_t *id)
{
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream (&buf, &len);
  json_t *r;

  if (!f)
    return error_reply (id, "out of memory");
#define HEAD(name, type, help) \
  fprintf (f, "# HELP " name " " help "\n# TYPE " name " " type "\n")
  size_t n = cor_disk_count (c->e);
  struct cor_status *sts = calloc (n ? n : 1, sizeof *sts);
  if (!sts) {
    fclose (f);
    free (buf);
    return error_reply (id, "out of memory");
  }
  for (size_t i = 0; i < n; i++)
    cor_disk_status (cor_disk_get (c->e, i), &sts[i]);
#define STATUS_LOOP for (size_t i = 0; i < n; i++)
#define NAME cor_disk_name (cor_disk_get (c->e, i))
  HEAD ("corfs_disk_size_bytes", "gauge", "Virtual size of the disk.");
  STATUS_LOOP fprintf (f, "corfs_disk_size_bytes{disk=\"%s\"} %" PRIu64 "\n", NAME, sts[i].size);
  HEAD ("corfs_present_blocks", "gauge", "Blocks present in the overlay.");
  STATUS_LOOP fprintf (f, "corfs_present_blocks{disk=\"%s\"} %" PRIu64 "\n", NAME, sts[i].present_blocks);
  HEAD ("corfs_dirty_blocks", "gauge", "Blocks written locally (differ from the parent).");
  STATUS_LOOP fprintf (f, "corfs_dirty_blocks{disk=\"%s\"} %" PRIu64 "\n", NAME, sts[i].dirty_blocks);
  HEAD ("corfs_blocks", "gauge", "Blocks in the disk.");
  STATUS_LOOP fprintf (f, "corfs_blocks{disk=\"%s\"} %" PRIu64 "\n", NAME, sts[i].nr_blocks);
  HEAD ("corfs_fetched_bytes_total", "counter", "Bytes read from the parent, by who asked.");
  STATUS_LOOP {
    fprintf (f, "corfs_fetched_bytes_total{disk=\"%s\",source=\"guest\"} %" PRIu64 "\n",
             NAME, sts[i].foreground_fetched_bytes);
    fprintf (f, "corfs_fetched_bytes_total{disk=\"%s\",source=\"stream\"} %" PRIu64 "\n",
             NAME, sts[i].background_fetched_bytes);
  }
  HEAD ("corfs_zero_skipped_bytes_total", "counter", "Bytes the parent reported as zero, not fetched.");
  STATUS_LOOP fprintf (f, "corfs_zero_skipped_bytes_total{disk=\"%s\"} %" PRIu64 "\n", NAME, sts[i].zero_skipped_bytes);
  HEAD ("corfs_remote_errors_total", "counter", "Parent reads that failed after retries.");
  STATUS_LOOP fprintf (f, "corfs_remote_errors_total{disk=\"%s\"} %" PRIu64 "\n", NAME, sts[i].fetch_errors);
  HEAD ("corfs_remote_retries_total", "counter", "Parent requests retried.");
  STATUS_LOOP fprintf (f, "corfs_remote_retries_total{disk=\"%s\"} %" PRIu64 "\n", NAME, sts[i].remote_retries);
  HEAD ("corfs_remote_reconnects_total", "counter", "Reconnections to the parent.");
  STATUS_LOOP fprintf (f, "corfs_remote_reconnects_total{disk=\"%s\"} %" PRIu64 "\n", NAME, sts[i].remote_reconnects);
  HEAD ("corfs_stream_errors_total", "counter", "Streamer chunks that failed (and were retried).");
  STATUS_LOOP fprintf (f, "corfs_stream_errors_total{disk=\"%s\"} %" PRIu64 "\n", NAME, sts[i].stream_errors);
  HEAD ("corfs_flushes_total", "counter", "Guest fsync/flush requests.");
  STATUS_LOOP fprintf (f, "corfs_flushes_total{disk=\"%s\"} %" PRIu64 "\n", NAME, sts[i].flushes);
  HEAD ("corfs_guest_fault_seconds", "histogram", "Latency of guest reads that had to wait for the parent.");
  STATUS_LOOP {
    uint64_t cum = 0;
    for (int b = 0; b < COR_LAT_BUCKETS; b++) {
      cum += sts[i].fault_latency[b];
      fprintf (f, "corfs_guest_fault_seconds_bucket{disk=\"%s\",le=\"%g\"} %" PRIu64 "\n",
               NAME, cor_latency_bounds_us[b] / 1e6, cum);
    }
    cum += sts[i].fault_latency[COR_LAT_BUCKETS];
    fprintf (f, "corfs_guest_fault_seconds_bucket{disk=\"%s\",le=\"+Inf\"} %" PRIu64 "\n", NAME, cum);
    fprintf (f, "corfs_guest_fault_seconds_sum{disk=\"%s\"} %g\n", NAME, sts[i].fault_latency_sum_us / 1e6);
    fprintf (f, "corfs_guest_fault_seconds_count{disk=\"%s\"} %" PRIu64 "\n", NAME, cum);
  }
#undef HEAD
#undef STATUS_LOOP
#undef NAME
  free (sts);
  fclose (f);
  r = json_pack ("{s:b, s:s}", "ok", 1, "text", buf);
  free (buf);
  if (id)
    json_object_set (r, "id", id);
  return r;
}

static struct cor_disk *
req_disk (struct ctl *c, json_t *req, json_t *id, json_t **err)
{
  const char *name = json_string_value (json_object_get (req, "disk"));
  struct cor_disk *d;

  if (!name) {
    *err = error_reply (id, "this command needs \"disk\"");
    return NULL;
  }
  if (!(d = cor_disk_find (c->e, name)))
    *err = error_reply (id, "no disk named %s", name);
  return d;
}

static json_t *
merge_cmd (struct ctl *c, json_t *req, json_t *id)
{
  json_t *err = NULL, *rate = json_object_get (req, "rate");
  struct cor_disk *d = req_disk (c, req, id, &err);
  const char *action = json_string_value (json_object_get (req, "action"));
  char msg[512];

  if (!d)
    return err;
  if (rate && (!json_is_integer (rate) || json_integer_value (rate) < 0))
    return error_reply (id, "rate must be a number of bytes per second (0: unlimited)");
  if (merge_control (c->mg, d, action ? action : "start",
                     json_is_true (json_object_get (req, "parent_owned")),
                     rate ? (uint64_t) json_integer_value (rate) : UINT64_MAX,
                     msg, sizeof msg) == -1)
    return error_reply (id, "%s", msg);
  return ok_reply (id);
}

static json_t *
flatten_cmd (struct ctl *c, json_t *req, json_t *id)
{
  json_t *err = NULL;
  struct cor_disk *d = req_disk (c, req, id, &err);
  const char *to = json_string_value (json_object_get (req, "to"));
  char msg[512];

  if (!d)
    return err;
  if (to && to[0] != '/')
    return error_reply (id, "\"to\" must be an absolute path");
  if (merge_flatten (c->mg, d, to, msg, sizeof msg) == -1)
    return error_reply (id, "%s", msg);
  return ok_reply (id);
}

static json_t *
checkpoint_cmd (struct ctl *c, json_t *req, json_t *id)
{
  json_t *err = NULL, *r;
  struct cor_disk *d = req_disk (c, req, id, &err);
  uint32_t gen;
  int e = 0;

  if (!d)
    return err;
  if ((gen = cor_checkpoint (d, &e)) == 0)
    return error_reply (id, "disk %s: checkpoint failed: %s", cor_disk_name (d), strerror (e));
  r = json_pack ("{s:b, s:I}", "ok", 1, "generation", (json_int_t) gen);
  if (id)
    json_object_set (r, "id", id);
  return r;
}

struct dirty_ctx {
  json_t *extents;
  unsigned shift;
  uint64_t size;
};

static int
add_dirty_extent (void *opaque, uint64_t first, uint64_t nr)
{
  struct dirty_ctx *x = opaque;
  uint64_t off = first << x->shift, len = nr << x->shift;
  if (off + len > x->size)
    len = x->size - off;
  json_array_append_new (x->extents, json_pack ("{s:I, s:I}", "offset", (json_int_t) off,
                                                "length", (json_int_t) len));
  return 0;
}

static json_t *
dirty_cmd (struct ctl *c, json_t *req, json_t *id)
{
  json_t *err = NULL, *since = json_object_get (req, "since"), *r;
  struct cor_disk *d = req_disk (c, req, id, &err);
  struct dirty_ctx x;
  struct cor_status st;
  bool widened = false;

  if (!d)
    return err;
  if (!json_is_integer (since) || json_integer_value (since) < 1)
    return error_reply (id, "dirty needs \"since\": a generation number (from 1)");
  cor_disk_status (d, &st);
  x.extents = json_array ();
  x.shift = cor_disk_block_shift (d);
  x.size = cor_disk_size (d);
  if (cor_changed_extents (d, json_integer_value (since), &widened,
                            add_dirty_extent, &x) == -1) {
    json_decref (x.extents);
    if (errno == EINVAL)
      return error_reply (id, "disk %s: no generation %" JSON_INTEGER_FORMAT
                          " (the current one is %" PRIu32 ")", cor_disk_name (d),
                          json_integer_value (since), st.generation);
    return error_reply (id, "disk %s: reading the changed maps: %s", cor_disk_name (d),
                        strerror (errno));
  }
  r = json_pack ("{s:b, s:I, s:I, s:b, s:o}", "ok", 1,
                 "since", (json_int_t) json_integer_value (since),
                 "generation", (json_int_t) st.generation, "widened", widened,
                 "extents", x.extents);
  if (id)
    json_object_set (r, "id", id);
  return r;
}

/* activate / handoff / reclaim: {"disk": NAME, "epoch": N[, "force": true]} */
static json_t *
owner_cmd (struct ctl *c, const char *cmd, json_t *req, json_t *id)
{
  json_t *err = NULL, *epoch = json_object_get (req, "epoch");
  struct cor_disk *d = req_disk (c, req, id, &err);
  char msg[1024];
  int r;

  if (!d)
    return err;
  if (!json_is_integer (epoch) || json_integer_value (epoch) < 1)
    return error_reply (id, "%s needs \"epoch\": a positive integer chosen by the "
                        "management tool, strictly increasing per disk", cmd);
  uint64_t e = json_integer_value (epoch);
  if (!strcmp (cmd, "activate"))
    r = cor_activate (d, e, json_is_true (json_object_get (req, "force")), msg, sizeof msg);
  else if (!strcmp (cmd, "handoff"))
    r = cor_handoff (d, e, msg, sizeof msg);
  else
    r = cor_reclaim (d, e, msg, sizeof msg);
  if (r == -1)
    return error_reply (id, "%s", msg);
  return ok_reply (id);
}

static json_t *
handle (struct ctl *c, json_t *req, bool *events)
{
  json_t *id = json_object_get (req, "id");
  const char *cmd = json_string_value (json_object_get (req, "cmd"));

  if (!json_is_object (req))
    return error_reply (NULL, "request must be a JSON object");
  if (!cmd)
    return error_reply (id, "request has no \"cmd\" string");
  if (!strcmp (cmd, "status")) {
    const char *name = json_string_value (json_object_get (req, "disk"));
    bool maps = json_is_true (json_object_get (req, "maps"));
    json_t *disks = json_array (), *r;
    for (size_t i = 0; i < cor_disk_count (c->e); i++) {
      struct cor_disk *d = cor_disk_get (c->e, i);
      if (!name || !strcmp (name, cor_disk_name (d)))
        json_array_append_new (disks, disk_status (c, d, maps));
    }
    if (name && json_array_size (disks) == 0) {
      json_decref (disks);
      return error_reply (id, "no disk named %s", name);
    }
    r = json_pack ("{s:b, s:o}", "ok", 1, "disks", disks);
    if (id)
      json_object_set (r, "id", id);
    return r;
  }
  if (!strcmp (cmd, "ping")) {
    json_t *r = json_pack ("{s:b, s:i}", "ok", 1, "pid", (int) getpid ());
    if (id)
      json_object_set (r, "id", id);
    return r;
  }
  if (!strcmp (cmd, "stream"))
    return stream_cmd (c, req, id);
  if (!strcmp (cmd, "metrics"))
    return metrics_cmd (c, id);
  if (!strcmp (cmd, "merge"))
    return merge_cmd (c, req, id);
  if (!strcmp (cmd, "flatten"))
    return flatten_cmd (c, req, id);
  if (!strcmp (cmd, "checkpoint"))
    return checkpoint_cmd (c, req, id);
  if (!strcmp (cmd, "dirty"))
    return dirty_cmd (c, req, id);
  if (!strcmp (cmd, "activate") || !strcmp (cmd, "handoff") || !strcmp (cmd, "reclaim"))
    return owner_cmd (c, cmd, req, id);
  if (!strcmp (cmd, "pivot") || !strcmp (cmd, "abort")) {
    json_t *err = NULL;
    struct cor_disk *d = req_disk (c, req, id, &err);
    char msg[1024];
    if (!d)
      return err;
    if ((!strcmp (cmd, "pivot") ? cor_pivot (d, msg, sizeof msg)
         : cor_abort (d, msg, sizeof msg)) == -1)
      return error_reply (id, "%s", msg);
    return ok_reply (id);
  }
  if (!strcmp (cmd, "events")) {
    *events = true;
    return ok_reply (id);
  }
  return error_reply (id, "unknown command %s", cmd);
}

/* The reply to one request line (without its newline), or NULL. */
static json_t *
answer (struct ctl *c, const char *line, size_t len, bool *events)
{
  json_error_t jerr;
  json_t *req = json_loadb (line, len, 0, &jerr), *reply;

  reply = req ? handle (c, req, events) : error_reply (NULL, "malformed JSON: %s", jerr.text);
  json_decref (req);
  return reply;
}

char *
ctl_answer_line (struct cor_engine *e, struct merge *mg, const char *line, size_t len,
                 bool *events)
{
  struct ctl c = { .e = e, .mg = mg, .listen_fd = -1, .wake = { -1, -1 } };
  json_t *reply = answer (&c, line, len, events);
  char *s = reply ? json_dumps (reply, JSON_COMPACT) : NULL;

  json_decref (reply);
  return s;
}

static void
drop_client (struct ctl *c, int i)
{
  close (c->clients[i]->fd);
  free (c->clients[i]);
  c->clients[i] = NULL;
}

/* Handle the complete lines in client i's buffer.  Returns -1 if the
 * client must be dropped. */
static int
serve_client (struct ctl *c, int i)
{
  struct client *cl = c->clients[i];
  ssize_t r = read (cl->fd, cl->buf + cl->len, sizeof cl->buf - cl->len);

  if (r <= 0)
    return r == -1 && (errno == EINTR || errno == EAGAIN) ? 0 : -1;
  cl->len += r;
  for (;;) {
    char *nl = memchr (cl->buf, '\n', cl->len);
    json_t *reply;
    if (!nl) {
      if (cl->len == sizeof cl->buf) {
        /* Too long: answer once, then discard up to the next newline. */
        if (!cl->overlong) {
          reply = error_reply (NULL, "request longer than %d bytes", JSONL_MAX_LINE);
          int s = send_reply (cl->fd, reply);
          json_decref (reply);
          if (s == -1)
            return -1;
        }
        cl->overlong = true;
        cl->len = 0;
      }
      return 0;
    }
    size_t linelen = nl - cl->buf;
    if (cl->overlong)
      cl->overlong = false;     /* the tail of the long line: drop it */
    else if (linelen > 0) {
      reply = answer (c, cl->buf, linelen, &cl->events);
      int s = send_reply (cl->fd, reply);
      json_decref (reply);
      if (s == -1)
        return -1;
    }
    memmove (cl->buf, nl + 1, cl->len - linelen - 1);
    cl->len -= linelen + 1;
  }
}

static void *
ctl_thread (void *arg)
{
  struct ctl *c = arg;

  for (;;) {
    struct pollfd pfd[MAX_CLIENTS + 2];
    int idx[MAX_CLIENTS + 2], n = 0;

    pfd[n].fd = c->wake[0]; pfd[n].events = POLLIN; idx[n++] = -2;
    pfd[n].fd = c->listen_fd; pfd[n].events = POLLIN; idx[n++] = -1;
    for (int i = 0; i < MAX_CLIENTS; i++)
      if (c->clients[i]) {
        pfd[n].fd = c->clients[i]->fd;
        pfd[n].events = POLLIN;
        idx[n++] = i;
      }
    if (poll (pfd, n, -1) == -1) {
      if (errno == EINTR)
        continue;
      log_error ("ctl: poll: %m");
      return NULL;
    }
    if (pfd[0].revents) {
      char junk[256];
      bool stopping;
      if (read (c->wake[0], junk, sizeof junk) == -1) { /* EAGAIN: fine */ }
      pthread_mutex_lock (&c->qlock);
      stopping = c->stopping;
      pthread_mutex_unlock (&c->qlock);
      if (stopping)
        return NULL;
      flush_events (c);
    }
    /* Clients first, the listener last: flush_events above may have
     * dropped a client, and a new client must not take its slot (and its
     * stale revents) in this same iteration. */
    for (int k = 2; k < n; k++) {
      struct client *cl = c->clients[idx[k]];
      if (!pfd[k].revents || !cl || cl->fd != pfd[k].fd)
        continue;
      if (serve_client (c, idx[k]) == -1)
        drop_client (c, idx[k]);
    }
    for (int k = 1; k < 2; k++) {
      if (!pfd[k].revents)
        continue;
      {
        /* Non-blocking: a read never waits, and a client whose replies
         * fill the socket buffer (it does not read them) is dropped. */
        int fd = accept4 (c->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        int slot = -1;
        if (fd == -1)
          continue;
        for (int i = 0; i < MAX_CLIENTS; i++)
          if (!c->clients[i]) { slot = i; break; }
        if (slot == -1 || !(c->clients[slot] = calloc (1, sizeof (struct client)))) {
          json_t *r = error_reply (NULL, "too many control clients");
          jsonl_send (fd, r);
          json_decref (r);
          close (fd);
          continue;
        }
        c->clients[slot]->fd = fd;
      }
    }
  }
}

int
ctl_start (struct cor_engine *e, struct merge *mg, const char *path, struct ctl **cp)
{
  struct ctl *c = calloc (1, sizeof *c);
  struct sockaddr_un sun = { .sun_family = AF_UNIX };

  if (!c)
    return -1;
  c->e = e;
  c->mg = mg;
  c->listen_fd = -1;
  c->wake[0] = c->wake[1] = -1;
  if ((size_t) snprintf (sun.sun_path, sizeof sun.sun_path, "%s", path) >= sizeof sun.sun_path) {
    log_error ("ctl: socket path %s is longer than %zu bytes", path, sizeof sun.sun_path - 1);
    goto err;
  }
  c->path = strdup (path);
  /* The state directory's lock is held, so a socket file here is stale. */
  unlink (path);
  c->listen_fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (c->listen_fd == -1 || bind (c->listen_fd, (struct sockaddr *) &sun, sizeof sun) == -1 ||
      listen (c->listen_fd, 16) == -1) {
    log_error ("ctl: control socket %s: %m", path);
    goto err;
  }
  pthread_mutex_init (&c->qlock, NULL);
  c->queue = json_array ();
  if (pipe2 (c->wake, O_CLOEXEC | O_NONBLOCK) == -1 ||
      thread_create_nosig (&c->thread, ctl_thread, c) == -1) {
    log_error ("ctl: starting the control thread: %m");
    json_decref (c->queue);
    pthread_mutex_destroy (&c->qlock);
    goto err;
  }
  cor_set_event_fn (e, on_event, c);
  *cp = c;
  return 0;

 err:
  if (c->listen_fd >= 0)
    close (c->listen_fd);
  if (c->wake[0] >= 0) {
    close (c->wake[0]);
    close (c->wake[1]);
  }
  free (c->path);
  free (c);
  return -1;
}

void
ctl_stop (struct ctl *c)
{
  if (!c)
    return;
  pthread_mutex_lock (&c->qlock);
  c->stopping = true;
  pthread_mutex_unlock (&c->qlock);
  if (write (c->wake[1], "x", 1) != 1 && errno != EAGAIN)
    log_error ("ctl: waking the control thread: %m");
  pthread_join (c->thread, NULL);
  for (int i = 0; i < MAX_CLIENTS; i++)
    if (c->clients[i])
      drop_client (c, i);
  close (c->listen_fd);
  c->listen_fd = -1;
  unlink (c->path);
}

void
ctl_free (struct ctl *c)
{
  if (!c)
    return;
  close (c->wake[0]);
  close (c->wake[1]);
  json_decref (c->queue);
  pthread_mutex_destroy (&c->qlock);
  free (c->path);
  free (c);
}
