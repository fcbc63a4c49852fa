/* corfs: the control socket's insides, shared by the files of src/ctl
 * only, and the one entry point the fuzzer and the unit tests use
 * (ctl_answer_line).  Not part of ctl's interface to the daemon (ctl.h).
 *
 * The files, each with one job:
 *   ctl-server.c    the socket, its thread, accepting (peer credentials),
 *                   reading clients' lines and sending replies
 *   ctl-events.c    the event queue: engine threads in, subscribers out
 *   ctl-dispatch.c  the command table: a request line to its handler,
 *                   here or on a job thread; error and ok replies
 *   ctl-status.c    the commands that always answer at once: status,
 *                   ping, events
 *   ctl-metrics.c   the metrics text (Prometheus), for the metrics
 *                   command and for metrics-http.c
 *   metrics-http.c  GET /metrics over HTTP (--metrics-listen), on
 *                   libmicrohttpd's thread; shares nothing with the ctl
 *                   thread but the engine
 *   ctl-disk.c      the commands that act on a disk: stream, merge,
 *                   flatten, checkpoint, dirty, activate, handoff,
 *                   reclaim, pivot, abort
 *   ctl-job.c       the job runner: long commands on their own threads,
 *                   their replies held until they end
 *
 * Locks: qlock (a leaf: nothing else is taken under it) protects the
 * event queue, dropped, stopping, and each job's done and reply.
 * Everything else is the ctl thread's (ctl_stop's once that thread has
 * ended), or a job thread's own request.
 */
#ifndef CORFS_CTL_INTERNAL_H
#define CORFS_CTL_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/jsonl.h"
#include "ctl/ctl.h"

struct cor_engine;
struct cor_disk;
struct cor_event;
struct merge;
struct ctl;

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

/* A command's handler: the reply to request req (id: its "id", or NULL),
 * a new reference.  cmd is the command's name (one handler may serve
 * several).  Runs on the ctl thread, or on a job thread for a long
 * command: then it must touch only its request, the engine and the
 * merge jobs, never a client. */
typedef json_t *ctl_handler_fn (struct ctl *c, const char *cmd, json_t *req, json_t *id);

/* A long command running on its own thread. */
struct job {
  struct ctl *c;
  struct client *cl;            /* NULL once the client is gone */
  struct cor_disk *d;
  const char *cmd;              /* static: from the command table */
  ctl_handler_fn *fn;
  json_t *req;                  /* a reference, for the job thread */
  json_t *reply;                /* protected by qlock */
  bool done;                    /* protected by qlock */
  pthread_t thread;
  struct job *next;
};

struct ctl {
  struct cor_engine *e;
  ctl_supervise_fn *supervise_fn;       /* NULL unless supervised */
  void *supervise_opaque;
  struct merge *mg;
  char *path;
  int listen_fd;
  int wake[2];                  /* [1] written to stop, to flush events, or when a job ends */
  pthread_t thread;
  struct client *clients[MAX_CLIENTS];   /* the ctl thread's only */
  pthread_mutex_t qlock;        /* see "Locks" above; a leaf lock */
  json_t *queue;                /* events waiting for the ctl thread */
  uint64_t dropped;
  bool stopping;                /* protected by qlock */
  struct job *jobs;             /* running or unreported: the ctl thread's */
};

/* ---- ctl-server.c ---- */

/* Send a reply on a non-blocking client socket, waiting at most 2 s in
 * all for the client to make room.  0, or -1 (drop the client). */
int ctl_send_reply (int fd, const json_t *v);

/* Close client slot i; a long command it started runs on, its reply
 * dropped. */
void ctl_drop_client (struct ctl *c, int i);

/* Handle the complete lines in client i's buffer, up to one that starts
 * a long command.  -1 if the client must be dropped. */
int ctl_serve_lines (struct ctl *c, int i);

/* ---- ctl-events.c ---- */

/* The engine's event callback (cor_set_event_fn): queues ev and wakes
 * the ctl thread; never blocks. */
void ctl_on_event (void *opaque, const struct cor_event *ev);

/* On the ctl thread: send the queued events to the subscribers. */
void ctl_flush_events (struct ctl *c);

/* ---- ctl-dispatch.c ---- */

/* The reply to one request line of client cl (without its newline), or
 * NULL when a long command was started for cl: its reply is sent when
 * it ends (ctl_finish_jobs). */
json_t *ctl_answer (struct ctl *c, const char *line, size_t len, struct client *cl);

/* {"ok": false, "error": MESSAGE} (printf-style, cut to 511 bytes of
 * valid UTF-8), with "id" when id is not NULL. */
json_t *ctl_error_reply (json_t *id, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

/* {"ok": true}, with "id" when id is not NULL. */
json_t *ctl_ok_reply (json_t *id);

/* reply with "id" added when id is not NULL; returns reply. */
json_t *ctl_with_id (json_t *reply, json_t *id);

/* The disk the request's "disk" names, or NULL with *err the reply. */
struct cor_disk *ctl_req_disk (struct ctl *c, json_t *req, json_t *id, json_t **err);

/* ---- ctl-status.c, ctl-metrics.c and ctl-disk.c: the handlers ---- */

ctl_handler_fn ctl_status_cmd, ctl_ping_cmd, ctl_metrics_cmd, ctl_events_cmd;
ctl_handler_fn ctl_sources_cmd;        /* ctl-sources.c */

/* ctl-status.c: the sources of a disk with several, in order of
 * preference, as status's parent.sources and the sources command give
 * them (url, backend, state, reads, bytes, errors, latency_us,
 * last_error).  NULL when out of memory. */
struct cor_status;
json_t *ctl_sources_json (const struct cor_status *st);
ctl_handler_fn ctl_stream_cmd, ctl_merge_cmd, ctl_flatten_cmd, ctl_checkpoint_cmd,
  ctl_dirty_cmd, ctl_owner_cmd, ctl_mirror_cmd;

/* ---- ctl-job.c ---- */

/* Run fn (command cmd, on disk d) on a job thread for client cl.  NULL
 * when started (cl->pending is set; the reply comes when it ends), else
 * the error reply (another long command on d, no thread). */
json_t *ctl_start_job (struct ctl *c, struct cor_disk *d, const char *cmd, ctl_handler_fn *fn,
                       json_t *req, json_t *id, struct client *cl);

/* Remove job j from the list, join its thread (waiting for it if it has
 * not ended) and free it; returns its reply (the caller's). */
json_t *ctl_reap_job (struct ctl *c, struct job *j);

/* On the ctl thread: send the replies of the jobs that ended, then go on
 * with what their clients sent meanwhile. */
void ctl_finish_jobs (struct ctl *c);

/* After the ctl thread has ended: join every job until deadline_ns,
 * sending its reply; one still running then is logged, its client told,
 * and left listed.  The number left. */
size_t ctl_stop_jobs (struct ctl *c, uint64_t deadline_ns);

/* ---- for the fuzzer and tests ---- */

/* Answer one request line (len bytes, without its newline) as the control
 * thread answers a client, against the engine's disks and the jobs of mg.
 * A long command (checkpoint, activate, ...) runs on a job thread as the
 * server runs it, and is waited for: its reply is returned like any
 * other.  Returns the reply's JSON text (no newline; the caller frees it),
 * or NULL when no reply could be built.  Sets *events when the request
 * subscribes to the event stream. */
char *ctl_answer_line (struct cor_engine *e, struct merge *mg, const char *line, size_t len,
                       bool *events);

#endif
