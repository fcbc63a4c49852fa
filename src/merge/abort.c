/* corfs: the abort job: a mirror's abort (cor_abort's pieces) run as a
 * job, so that its copy has the framework's thread, progress, status
 * (kind "abort") and cancel at exit, and its command's reply is its
 * outcome.
 *
 *   start:  cor_abort_begin: owner_lock taken, every block owned, new
 *           writes refused (or the job fails with nothing changed);
 *   step:   the next run of blocks the parent may lack
 *           (cor_next_unsettled_run, as merge walks them), copied by
 *           cor_abort_copy within a fresh hold; none left ends the copy;
 *   finish: cor_abort_end: flush, pin, record handed-off; or, after a
 *           failed or cancelled copy, the mirror active again.
 * The job never retries: a failure is the command's error reply ("try
 * again"), as cor_abort's.
 *
 * Notes on the thread model: merge_abort runs on one of ctl's job
 * threads (the abort command is a long command) and waits there for the
 * job (job_wait); the hooks run on the job's own thread, which holds
 * d->owner_lock from start to finish and takes mg->lock under it only in
 * job.c's helpers (job_keep_going, job_charge): see job.c.  struct
 * abort_job is the job's thread's until the thread has ended, then its
 * starter's (job_wait orders the two through mg->lock).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "cor/cor.h"
#include "merge/merge-internal.h"

struct abort_job {
  bool begun;                   /* cor_abort_begin succeeded: owner_lock held */
  uint64_t blk;                 /* where the copy goes on, or where it failed */
  int copy_err;                 /* the copy's failure, 0 if none */
  int result;                   /* the outcome: 0, or -1 with msg */
  char msg[1024];
};

static int
abort_prepare (struct job *j, const void *arg, char *errbuf, size_t len)
{
  if (!(j->priv = calloc (1, sizeof (struct abort_job)))) {
    snprintf (errbuf, len, "out of memory");
    return -1;
  }
  return 0;
}

static void
abort_init_progress (struct job *j)
{
  j->total = merge_remaining_bytes (j->d);
}

static uint64_t
abort_status_total (struct job *j)
{
  return j->done + merge_remaining_bytes (j->d);
}

/* The outcome: fail the job with msg, or end it done. */
static void
abort_outcome (struct job *j, struct abort_job *a, int r)
{
  a->result = r;
  if (r == -1) {
    job_set_error (j, "%s", a->msg);
    job_finish (j, J_FAILED);
  }
  else
    job_finish (j, J_DONE);
}

static bool
abort_start (struct job *j)
{
  struct abort_job *a = j->priv;

  if (cor_abort_begin (j->d, a->msg, sizeof a->msg) == -1) {
    abort_outcome (j, a, -1);
    return false;
  }
  a->begun = true;
  return true;
}

static enum job_step
abort_step (struct job *j)
{
  struct abort_job *a = j->priv;
  uint64_t end;
  int64_t r;

  a->blk = cor_next_unsettled_run (j->d, a->blk, COR_ABORT_RUN, &end);
  if (a->blk >= cor_disk_nr_blocks (j->d))
    return JOB_END;             /* nothing left to copy */
  if (!job_keep_going (j)) {    /* cancelled: only at exit (merge_stop) */
    a->copy_err = ECANCELED;
    return JOB_END;
  }
  if ((r = cor_abort_copy (j->d, a->blk, end, &a->copy_err)) == -1)
    return JOB_END;
  job_charge (j, r);
  a->blk = end;
  return JOB_MORE;
}

static void
abort_finish (struct job *j)
{
  struct abort_job *a = j->priv;

  if (a->begun)
    abort_outcome (j, a, cor_abort_end (j->d, a->copy_err, a->blk, a->msg, sizeof a->msg));
}

static void
abort_free_priv (struct job *j)
{
  free (j->priv);
}

const struct job_kind abort_kind = {
  .name = "abort",
  .beside = true,
  .prepare = abort_prepare,
  .init_progress = abort_init_progress,
  .start = abort_start,
  .step = abort_step,
  .finish = abort_finish,
  .status_total = abort_status_total,
  .free = abort_free_priv,
};

int
merge_abort (struct merge *mg, struct cor_disk *d, char *errbuf, size_t len)
{
  struct abort_job *a;
  struct job *j;
  int r;

  if (job_start_held (mg, d, &abort_kind, 0, NULL, &j, errbuf, len) == -1)
    return -1;
  job_wait (j);
  a = j->priv;
  r = a->result;
  if (r == -1)
    snprintf (errbuf, len, "%s", a->msg);
  job_unhold (j);
  return r;
}
