/* corfs: the control socket (STATE/corfs.sock): newline-delimited JSON
 * requests and replies, documented in docs/control.md.
 *
 * ctl is a client of the engine; the CLI talks to it only through the
 * socket.  It runs one thread (created by ctl_start) that serves every
 * client with poll(2), and a job thread for each long command while it
 * runs (activate, handoff, checkpoint, ...: see docs/control.md), so that
 * status, metrics and events always answer.  Its files and lock story:
 * ctl-internal.h.
 */
#ifndef CORFS_CTL_H
#define CORFS_CTL_H

#include <stddef.h>
#include <stdint.h>

struct cor_engine;
struct merge;
struct ctl;

/* Bind the socket at path (replacing a stale one) and start serving the
 * engine's disks and the merge jobs.  0, or -1 with the reason logged. */
int ctl_start (struct cor_engine *e, struct merge *mg, const char *path, struct ctl **cp);

/* Stop serving: join the control thread, close every client, remove the
 * socket.  Events emitted afterwards are dropped.  The object stays valid
 * for the engine's event callback until ctl_free.  Long commands are
 * joined until deadline_ns (now_ns () terms); one still running then
 * (stuck in the kernel, e.g. flatten --to on a hung filesystem) is
 * logged, its client told, and left running: the number left, and then
 * c must not be freed (the process is exiting). */
size_t ctl_stop (struct ctl *c, uint64_t deadline_ns);

/* Free; call after the engine (whose threads emit events) is freed. */
void ctl_free (struct ctl *c);

/* The metrics of the engine's disks in the Prometheus text format
 * (docs/control.md, `metrics`), as the `metrics` command gives them;
 * *len (if not NULL) its length.  Any thread; takes only the engine's
 * short status locks.  The caller frees; NULL when out of memory. */
char *ctl_metrics_text (struct cor_engine *e, size_t *len);

/* ---- the metrics over HTTP (metrics-http.c) ---- */

struct metrics_http;

/* Check a --metrics-listen value: PORT (on 127.0.0.1), ADDR:PORT with a
 * numeric IPv4 address or localhost, or [ADDR6]:PORT; port 1 to 65535.
 * 0, or -1 with a one-line reason (starting with spec) in err. */
int metrics_listen_check (const char *spec, char *err, size_t len);

/* Listen on spec and serve GET /metrics (ctl_metrics_text of e) on a
 * thread of libmicrohttpd's, never blocking the rest of the daemon.
 * 0, or -1 with the reason logged (bad value, port in use). */
int metrics_http_start (struct cor_engine *e, const char *spec, struct metrics_http **mp);

/* Stop serving: close the listening socket and every connection, join
 * the server's thread, free m (NULL is fine).  Before the engine is
 * freed. */
void metrics_http_stop (struct metrics_http *m);
/* Supervised mounts: status then says the worker restart mode and how
 * many workers were restarted, from fn (called on the ctl thread; mode
 * NULL until known).  Set once, before requests arrive. */
typedef void ctl_supervise_fn (void *opaque, const char **mode, unsigned *restarts);
void ctl_set_supervise (struct ctl *c, ctl_supervise_fn *fn, void *opaque);

#endif
