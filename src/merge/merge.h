/* corfs: jobs that write the overlay back: merge into an owned parent,
 * flatten (fill, then detach the parent), copy to a standalone file, and
 * a mirror's abort (copy what the parent lacks, then hand off).
 *
 * merge → {cor, meta, remote}.  One job per disk at a time, and an abort
 * beside it; each job runs on its own thread (created here; see the
 * thread-model note in job.c, the job framework; the kinds are in
 * merge.c, flatten.c, copy.c and abort.c).
 */
#ifndef CORFS_MERGE_H
#define CORFS_MERGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct cor_disk;
struct merge;                   /* the jobs of one engine */

/* Create/free the job table (state_dir: where the daemon keeps its
 * files; copies may not be written there).  merge_free cancels and joins
 * every job.  merge_new: NULL with errno. */
struct merge *merge_new (const char *state_dir);
void merge_free (struct merge *mg);
/* At exit: cancel every job and join them until deadline_ns (now_ns ()
 * terms), freeing those joined.  A job still running then (a copy stuck
 * writing to a filesystem that does not answer) is logged, naming its
 * disk and target, and left running: the number left; then neither mg
 * nor the engine may be freed (the process is exiting).  0: call
 * merge_free. */
size_t merge_stop (struct merge *mg, uint64_t deadline_ns);

/* Start merging disk d into its parent (or steer the running merge:
 * action "start", "pause", "resume", "cancel").  parent_owned records the
 * declaration first.  rate: bytes/s, 0 unlimited, UINT64_MAX unchanged.
 * 0, or -1 with a message in errbuf. */
int merge_control (struct merge *mg, struct cor_disk *d, const char *action,
                   bool parent_owned, uint64_t rate, char *errbuf, size_t len);

/* Start flattening d: fill it (starting the streamer if needed), then
 * detach the parent for good; or, with to != NULL (absolute), copy the
 * current disk contents to the file `to` (sparse, 0600) without
 * detaching: written to `to`.partial, which replaces `to` once whole and
 * durable; a copy to the same file started again continues that partial
 * file if it is still the one recorded, copying again what changed since.
 * Refused for a `to` in the state directory (also through an alias),
 * naming a file:// parent, or existing as anything but a regular file.
 * Opens `to`'s directory and partial file before it returns, which may
 * block on a hung filesystem: call it off ctl's thread.  0 or -1
 * (errbuf). */
int merge_flatten (struct merge *mg, struct cor_disk *d, const char *to,
                   char *errbuf, size_t len);

/* Abort d's mirror (cor_abort) as a job, and wait for it to end: the
 * job copies what the parent lacks with progress in merge_status (kind
 * "abort"), beside any merge or copy of d.  Blocks the calling thread
 * for the whole copy: call it off ctl's thread.  0, or -1 with
 * cor_abort's message in errbuf. */
int merge_abort (struct merge *mg, struct cor_disk *d, char *errbuf, size_t len);

struct merge_status {
  const char *kind;             /* "none", "merge", "flatten", "copy", "abort" */
  const char *state;            /* "running", "paused", "synced", "cancelled",
                                   "failed", "done" */
  uint64_t done_bytes, total_bytes, passes, errors;
  bool following;               /* the guest keeps re-dirtying blocks */
  char last_error[512];
};
void merge_status (struct merge *mg, struct cor_disk *d, struct merge_status *st);

#endif
