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

/* Supervised mounts: status then says the worker restart mode and how
 * many workers were restarted, from fn (called on the ctl thread; mode
 * NULL until known).  Set once, before requests arrive. */
typedef void ctl_supervise_fn (void *opaque, const char **mode, unsigned *restarts);
void ctl_set_supervise (struct ctl *c, ctl_supervise_fn *fn, void *opaque);

#endif
