/* corfs: the control socket server.
 *
 * Notes on the thread model: one thread (from ctl_start) runs a poll(2)
 * loop over the listening socket, every client and a wake-up pipe.
 * Requests are answered in order on that thread; the engine calls it
 * makes (status, metrics, stream, merge) take only short engine locks.
 * A client that sends a line over JSONL_MAX_LINE, or malformed JSON,
 * gets an error reply.  Client sockets are non-blocking: one that does
 * not read its replies is dropped as soon as its socket buffer is full,
 * so no client can stall the daemon.
 *
 * Long commands (LONG_CMDS: they wait for the disk to drain, talk to the
 * parent, or open a file anywhere: flatten --to; merge start makes the
 * parent writable) run each on a job thread
 * of its own, so that other clients keep being answered meanwhile.  The
 * ctl thread sends the reply when the job ends (it writes to the wake-up
 * pipe); until then it reads nothing more from that client, so each
 * client's replies stay in the order of its requests.  One long command
 * per disk at a time: a second one is refused.  ctl_stop joins the jobs,
 * which the engine bounds (cor_engine_quiesce makes them give up at
 * shutdown); only a flatten --to target on a filesystem that hangs is not
 * (a FIFO or a device there is refused at once): ctl_stop waits for
 * those until its deadline, then leaves them running (the daemon exits
 * without freeing what they use; they touch only their job, qlock and
 * the wake-up pipe, none of which is freed then).
 *
 * ctl_answer_line (ctl-internal.h, for the fuzzer and unit tests) takes
 * one line through the same answer/handle path on its caller's thread,
 * with a struct ctl and client of its own (no socket, no ctl thread); a
 * long command still runs on a job thread, which it joins before it
 * returns the reply.
 *
 * Access: the socket is created 0600 whatever the umask (a request can
 * activate, hand off or write a file as the daemon's user), and every
 * client's SO_PEERCRED uid must be the daemon's effective uid or root;
 * others get one error line and are closed at once, before they take a
 * client slot (allowed_peer).
 *
 * Locks: qlock (a leaf) protects the event queue, stopping, and each
 * job's done and reply; everything else here is the ctl thread's (and
 * ctl_stop's once that thread has ended).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
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

struct job;

struct client {
  int fd;
  size_t len;
  bool overlong;                /* discarding the rest of a too-long line */
  bool events;                  /* subscribed to the event stream */
  struct job *pending;          /* a long command whose reply is due */
  char buf[JSONL_MAX_LINE];
};

/* A long command running on its own thread. */
struct job {
  struct ctl *c;
  struct client *cl;            /* NULL once the client is gone */
  struct cor_disk *d;
  const char *cmd;              /* static: from LONG_CMDS */
  json_t *(*fn) (struct ctl *c, const char *cmd, json_t *req, json_t *id);
  json_t *req;                  /* a reference, for the job thread */
  json_t *reply;                /* protected by qlock */
  bool done;                    /* protected by qlock */
  pthread_t thread;
  struct job *next;
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
  struct job *jobs;             /* running or unreported */
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

/* maps_budget: NULL for no maps, else the extents the reply may still hold. */
static json_t *
disk_status (struct ctl *c, struct cor_disk *d, uint64_t maps_from, size_t *maps_budget)
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
                 "owner", "state", meta_state_name (st.owner_state), "epoch", (json_int_t) st.epoch,
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
    if (st.owner_state == META_STANDALONE)
      json_object_set_new (json_object_get (j, "parent"), "state", json_string ("detached"));
  }
  if (j && maps_budget)
    json_object_set_new (j, "maps", disk_maps (d, st.size, maps_from, maps_budget));
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
static void drop_client (struct ctl *c, int i);

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
        drop_client (c, k);
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

/* A long command: the target of a copy is resolved and opened here, and
 * a hung filesystem there must not stop the ctl thread. */
static json_t *
flatten_cmd (struct ctl *c, const char *cmd, json_t *req, json_t *id)
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
checkpoint_cmd (struct ctl *c, const char *cmd, json_t *req, json_t *id)
{
  json_t *err = NULL, *r;
  struct cor_disk *d = req_disk (c, req, id, &err);
  uint32_t gen;
  char msg[1024];

  if (!d)
    return err;
  if ((gen = cor_checkpoint (d, msg, sizeof msg)) == 0)
    return error_reply (id, "%s", msg);
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

/* pivot / abort: {"disk": NAME} */
static json_t *
mirror_cmd (struct ctl *c, const char *cmd, json_t *req, json_t *id)
{
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

/* merge start: it may talk to the parent (making it writable: an NBD
 * parent's connection 0 may be busy with a stalled read for a while) and
 * wait for the record (cor_update_record), so it runs as a long command.
 * pause, resume, cancel and rate only touch the job and stay on the ctl
 * thread. */
static json_t *
merge_start_cmd (struct ctl *c, const char *cmd, json_t *req, json_t *id)
{
  return merge_cmd (c, req, id);
}

static bool
is_merge_start (json_t *req)
{
  const char *action = json_string_value (json_object_get (req, "action"));
  return !action || !strcmp (action, "start");
}

/* The commands that run on a job thread (see the thread model). */
static const struct {
  const char *cmd;
  json_t *(*fn) (struct ctl *c, const char *cmd, json_t *req, json_t *id);
} LONG_CMDS[] = {
  { "merge", merge_start_cmd },
  { "checkpoint", checkpoint_cmd },
  { "activate", owner_cmd }, { "handoff", owner_cmd }, { "reclaim", owner_cmd },
  { "pivot", mirror_cmd }, { "abort", mirror_cmd }, { "flatten", flatten_cmd },
};

static void *
job_thread (void *arg)
{
  struct job *j = arg;
  json_t *reply = j->fn (j->c, j->cmd, j->req, json_object_get (j->req, "id"));

  pthread_mutex_lock (&j->c->qlock);
  j->reply = reply;
  j->done = true;
  pthread_mutex_unlock (&j->c->qlock);
  if (j->c->wake[1] >= 0 && write (j->c->wake[1], "j", 1) == -1) { /* full: it is awake */ }
  return NULL;
}

/* Start long command i of LONG_CMDS for client cl.  NULL when started
 * (the reply comes when it ends), else the error reply. */
static json_t *
start_long (struct ctl *c, size_t i, json_t *req, json_t *id, struct client *cl)
{
  json_t *err = NULL;
  struct cor_disk *d = req_disk (c, req, id, &err);
  struct job *j;

  if (!d)
    return err;
  for (j = c->jobs; j; j = j->next)
    if (j->d == d)
      return error_reply (id, "disk %s: %s refused: %s is still running on this disk; "
                          "try again once it has answered", cor_disk_name (d),
                          LONG_CMDS[i].cmd, j->cmd);
  if (!(j = calloc (1, sizeof *j)))
    return error_reply (id, "out of memory");
  *j = (struct job) { .c = c, .cl = cl, .d = d, .cmd = LONG_CMDS[i].cmd,
                      .fn = LONG_CMDS[i].fn, .req = json_incref (req) };
  if (thread_create_nosig (&j->thread, job_thread, j) == -1) {
    log_error ("ctl: starting a thread for %s: %m", j->cmd);
    json_decref (j->req);
    free (j);
    return error_reply (id, "disk %s: %s: cannot start a thread: %s", cor_disk_name (d),
                        LONG_CMDS[i].cmd, strerror (errno));
  }
  j->next = c->jobs;
  c->jobs = j;
  cl->pending = j;
  return NULL;
}

/* Dispatch one request.  NULL when a long command was started for cl:
 * its reply is sent when it ends. */
static json_t *
handle (struct ctl *c, json_t *req, struct client *cl)
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
    json_t *from = json_object_get (req, "maps_from"), *disks, *r;
    size_t budget = MAPS_MAX_EXTENTS;
    if (from && (!json_is_integer (from) || json_integer_value (from) < 0))
      return error_reply (id, "\"maps_from\" must be a byte offset (an integer >= 0)");
    disks = json_array ();
    for (size_t i = 0; i < cor_disk_count (c->e); i++) {
      struct cor_disk *d = cor_disk_get (c->e, i);
      if (!name || !strcmp (name, cor_disk_name (d)))
        json_array_append_new (disks, disk_status (c, d, from ? json_integer_value (from) : 0,
                                                   maps ? &budget : NULL));
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
  if (!strcmp (cmd, "merge") && !is_merge_start (req))
    return merge_cmd (c, req, id);
  if (!strcmp (cmd, "dirty"))
    return dirty_cmd (c, req, id);
  for (size_t i = 0; i < sizeof LONG_CMDS / sizeof LONG_CMDS[0]; i++)
    if (!strcmp (cmd, LONG_CMDS[i].cmd))
      return start_long (c, i, req, id, cl);
  if (!strcmp (cmd, "events")) {
    cl->events = true;
    return ok_reply (id);
  }
  return error_reply (id, "unknown command %s", cmd);
}

/* The reply to one request line of client cl (without its newline), or
 * NULL when a long command was started for cl (see handle). */
static json_t *
answer (struct ctl *c, const char *line, size_t len, struct client *cl)
{
  json_error_t jerr;
  json_t *req = json_loadb (line, len, 0, &jerr), *reply;

  reply = req ? handle (c, req, cl) : error_reply (NULL, "malformed JSON: %s", jerr.text);
  json_decref (req);
  return reply;
}

static void
drop_client (struct ctl *c, int i)
{
  if (c->clients[i]->pending)
    c->clients[i]->pending->cl = NULL;  /* the job runs on; its reply is dropped */
  close (c->clients[i]->fd);
  free (c->clients[i]);
  c->clients[i] = NULL;
}

/* Handle the complete lines in client i's buffer, up to one that starts
 * a long command (the rest waits for its reply).  Returns -1 if the
 * client must be dropped. */
static int
serve_lines (struct ctl *c, int i)
{
  struct client *cl = c->clients[i];

  while (!cl->pending) {
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
      reply = answer (c, cl->buf, linelen, cl);
      int s = reply ? send_reply (cl->fd, reply) : 0;
      json_decref (reply);
      if (s == -1)
        return -1;
    }
    memmove (cl->buf, nl + 1, cl->len - linelen - 1);
    cl->len -= linelen + 1;
  }
  return 0;
}

/* Read what client i sent and handle it.  -1: drop the client. */
static int
serve_client (struct ctl *c, int i)
{
  struct client *cl = c->clients[i];
  ssize_t r;

  r = read (cl->fd, cl->buf + cl->len, sizeof cl->buf - cl->len);
  if (r <= 0)
    return r == -1 && (errno == EINTR || errno == EAGAIN) ? 0 : -1;
  cl->len += r;
  return serve_lines (c, i);
}

/* Remove job j from the list, join its thread (waiting for it if it has
 * not ended) and free it; returns its reply (the caller's). */
static json_t *
reap_joined (struct ctl *c, struct job *j);

static json_t *
reap_job (struct ctl *c, struct job *j)
{
  pthread_join (j->thread, NULL);
  return reap_joined (c, j);
}

/* reap_job for a job whose thread is joined. */
static json_t *
reap_joined (struct ctl *c, struct job *j)
{
  json_t *reply;

  for (struct job **pp = &c->jobs; *pp; pp = &(*pp)->next)
    if (*pp == j) {
      *pp = j->next;
      break;
    }
  reply = j->reply;             /* set before the thread ended: no lock needed */
  json_decref (j->req);
  free (j);
  return reply;
}

/* For the fuzzer and tests: one line answered as the ctl thread answers
 * it, without a socket.  A long command runs on its job thread as usual,
 * and is waited for here, so that its reply is returned like any other. */
char *
ctl_answer_line (struct cor_engine *e, struct merge *mg, const char *line, size_t len,
                 bool *events)
{
  struct ctl c = { .e = e, .mg = mg, .listen_fd = -1, .wake = { -1, -1 },
                   .qlock = PTHREAD_MUTEX_INITIALIZER };
  struct client *cl = calloc (1, sizeof *cl);
  json_t *reply;
  char *s;

  if (!cl)
    return NULL;
  cl->fd = -1;
  cl->events = *events;
  reply = answer (&c, line, len, cl);
  if (!reply && cl->pending)
    reply = reap_job (&c, cl->pending);
  s = reply ? json_dumps (reply, JSON_COMPACT) : NULL;
  json_decref (reply);
  *events = cl->events;
  free (cl);
  pthread_mutex_destroy (&c.qlock);
  return s;
}

/* On the ctl thread: send the replies of the jobs that ended, then go on
 * with what their clients sent meanwhile. */
static void
finish_jobs (struct ctl *c)
{
  struct job *j, *next;

  for (j = c->jobs; j; j = next) {
    next = j->next;
    pthread_mutex_lock (&c->qlock);
    bool done = j->done;
    pthread_mutex_unlock (&c->qlock);
    if (!done)
      continue;
    struct client *cl = j->cl;
    json_t *reply = reap_job (c, j);
    if (!cl) {
      json_decref (reply);
      continue;
    }
    int i = 0;
    while (c->clients[i] != cl)
      i++;
    cl->pending = NULL;
    int s = reply ? send_reply (cl->fd, reply) : -1;
    json_decref (reply);
    if (s == -1 || serve_lines (c, i) == -1)
      drop_client (c, i);
    next = c->jobs;             /* serve_lines may have started one */
  }
}

/* May the peer on fd send commands?  Only the daemon's own user and
 * root: the socket's 0600 mode already keeps others out, unless someone
 * loosened it; this holds even then.  Refusals are logged, at most
 * the first few and then one in a thousand (a local user could loop). */
static bool
allowed_peer (int fd)
{
  static unsigned refused;      /* the ctl thread's only */
  struct ucred cred;
  socklen_t len = sizeof cred;

  if (getsockopt (fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == -1) {
    log_warn ("ctl: control client refused: SO_PEERCRED: %m");
    return false;
  }
  if (cred.uid == 0 || cred.uid == geteuid ())
    return true;
  if (refused++ < 10 || refused % 1000 == 0)
    log_warn ("ctl: control client refused: pid %d runs as uid %u, the daemon as "
              "uid %u (only it and root may use the control socket)", (int) cred.pid,
              (unsigned) cred.uid, (unsigned) geteuid ());
  return false;
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
      if (c->clients[i] && !c->clients[i]->pending) {
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
      finish_jobs (c);
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
        if (!allowed_peer (fd)) {
          /* Closed at once: a refused client must not hold a slot (64
           * idle ones would lock root out).  The reply is queued on its
           * socket before the close, so it can still read why, even
           * after its own send met EPIPE (the CLI reads it then). */
          json_t *r = error_reply (NULL, "permission denied: the control socket "
                                   "serves only its daemon's user and root");
          jsonl_send (fd, r);
          json_decref (r);
          close (fd);
          continue;
        }
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
  /* Linux creates the socket file with the socket inode's mode minus the
   * umask: 0600 before bind means no moment with a looser mode (a
   * process-wide umask change would race the other threads).  The chmod
   * after bind makes it exactly 0600 whatever the umask; it does not
   * follow a symlink (the state directory is the daemon user's alone,
   * daemon.c checks, so nothing should have replaced the file). */
  if (c->listen_fd == -1 || fchmod (c->listen_fd, 0600) == -1 ||
      bind (c->listen_fd, (struct sockaddr *) &sun, sizeof sun) == -1 ||
      fchmodat (AT_FDCWD, path, 0600, AT_SYMLINK_NOFOLLOW) == -1 ||
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

/* A long command still running at the stop deadline: say so (log, and
 * its client) and leave it listed, unjoined. */
static void
abandon_job (struct ctl *c, struct job *j)
{
  json_t *to = json_object_get (j->req, "to");
  char msg[PATH_MAX + 256];

  snprintf (msg, sizeof msg, "disk %s: %s%s%s is still running at exit (stuck in the "
            "kernel, on a filesystem that does not answer?); the daemon exits without it",
            cor_disk_name (j->d), j->cmd, json_is_string (to) ? " --to " : "",
            json_is_string (to) ? json_string_value (to) : "");
  log_error ("ctl: %s", msg);
  if (j->cl) {
    json_t *reply = error_reply (json_object_get (j->req, "id"), "%s", msg);
    if (reply)
      send_reply (j->cl->fd, reply);
    json_decref (reply);
  }
}

size_t
ctl_stop (struct ctl *c, uint64_t deadline_ns)
{
  size_t left = 0;

  if (!c)
    return 0;
  pthread_mutex_lock (&c->qlock);
  c->stopping = true;
  pthread_mutex_unlock (&c->qlock);
  if (write (c->wake[1], "x", 1) != 1 && errno != EAGAIN)
    log_error ("ctl: waking the control thread: %m");
  pthread_join (c->thread, NULL);
  /* The jobs end soon once the engine is quiesced; their clients get the
   * replies (an error saying the daemon is shutting down, mostly).  One
   * stuck past the deadline is left running, still listed. */
  for (struct job **pp = &c->jobs; *pp;) {
    struct job *j = *pp;
    struct client *cl = j->cl;
    if (!thread_join_until (j->thread, deadline_ns)) {
      abandon_job (c, j);
      left++;
      pp = &j->next;
      continue;
    }
    json_t *reply = reap_joined (c, j);
    if (cl && reply)
      send_reply (cl->fd, reply);
    if (cl)
      cl->pending = NULL;
    json_decref (reply);
  }
  for (int i = 0; i < MAX_CLIENTS; i++)
    if (c->clients[i])
      drop_client (c, i);
  close (c->listen_fd);
  c->listen_fd = -1;
  unlink (c->path);
  return left;
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
