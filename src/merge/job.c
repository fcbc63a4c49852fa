/* corfs: the job framework: the job table of an engine, starting,
 * steering (pause, resume, cancel, rate), the job thread, the rate limit,
 * progress and status.  What a job does is its kind's (struct job_kind in
 * merge-internal.h): merge.c, flatten.c, copy.c, abort.c.  Starters
 * return once the thread runs, and the client follows progress through
 * status; only abort's starter (one of ctl's job threads, never the ctl
 * thread) holds its job and waits for it to end (job_start_held,
 * job_wait), since the abort command's reply is its outcome.  A disk has
 * at most one job in each of two lanes: merge, flatten and copy share
 * one; abort has the other (struct job_kind, beside), so that it is
 * neither refused by nor waits for a merge or a copy (it owns the disk
 * through the engine, and stops a merge by handing the disk off).
 *
 * Notes on the thread model: one thread per job, created by job_start on
 * its starter's thread (merge_control on ctl's thread, merge_flatten on
 * one of ctl's job threads: opening a copy's target may block) and joined
 * by the next job on the same disk, by merge_stop (at exit, until a
 * deadline: a job stuck in the kernel is left running, and nothing it
 * uses is freed) or by merge_free (after ctl_stop: no starter is left).
 * A held job is freed only once its starter let go of it (job_unhold):
 * merge_stop leaves one still held to its starter.
 * A job is listed, as starting, before its starter runs the kind's
 * prepare hook, so two starters cannot both start a job on one disk;
 * what prepare opens is used only by the job's thread afterwards, and
 * freed by whoever frees the job.
 *
 * Lock order: mg->lock protects the job list and every job's state
 * fields (and the fields a kind marks so).  It is a leaf: never held
 * across engine, remote or file system calls, and nothing is taken under
 * it but meta's lock-free bitmap counts (a merge's remaining bytes) and
 * whatever a kind's cancel hook takes.  The engine's locks (d->owner_lock
 * before d->lock and before meta's mutex, src/cor/cor-internal.h's order)
 * are taken by the kinds' engine calls (cor_update_record, cor_writeback,
 * cor_read, cor_flush, cor_checkpoint, cor_abort_*) on the job's and the
 * starter's threads with mg->lock not held, and the engine never calls
 * back into this module (the record callbacks a kind passes to
 * cor_update_record take no lock of ours).  One exception, in one
 * direction only: the abort job holds d->owner_lock from its start hook
 * to its finish hook (cor_abort_begin to cor_abort_end), and takes
 * mg->lock under it in job.c's helpers between runs; mg->lock is never
 * held while taking an engine lock, so the order is owner_lock, then
 * mg->lock, and no cycle arises.  Likewise cor_emit (ctl's event
 * queue lock) is called without mg->lock, and ctl and the daemon call
 * merge_* holding no lock of theirs.  Jobs wait on mg->cond (pause, rate
 * changes, cancel).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "common/log.h"
#include "common/util.h"
#include "cor/cor.h"
#include "merge/merge-internal.h"

static const char *state_names[] = { "running", "paused", "synced", "cancelled",
                                     "failed", "done", "starting" };

struct merge *
merge_new (const char *state_dir)
{
  struct merge *mg = calloc (1, sizeof *mg);

  if (!mg)
    return NULL;
  struct stat st;

  if (!(mg->state_dir = realpath (state_dir, NULL)) || stat (mg->state_dir, &st) == -1) {
    free (mg->state_dir);
    free (mg);
    return NULL;
  }
  mg->state_dev = st.st_dev;
  mg->state_ino = st.st_ino;
  pthread_mutex_init (&mg->lock, NULL);
  cond_init_monotonic (&mg->cond);
  return mg;
}

static bool
finished (enum jstate s)
{
  return s != J_RUNNING && s != J_PAUSED && s != J_STARTING;
}

void
job_free (struct job *j)
{
  if (j->kind->free)
    j->kind->free (j);
  free (j);
}

/* Must be called with mg->lock held. */
static void
cancel_unlocked (struct job *j)
{
  j->state = J_CANCELLED;
  if (j->kind->cancel)
    j->kind->cancel (j);
}

/* Must be called with mg->lock held.  merge_stop and merge_free: every
 * job is to end, without re-pinning. */
static void
cancel_all_unlocked (struct merge *mg)
{
  mg->closing = true;
  for (struct job *j = mg->jobs; j; j = j->next)
    if (!finished (j->state))
      cancel_unlocked (j);
  pthread_cond_broadcast (&mg->cond);
}

size_t
merge_stop (struct merge *mg, uint64_t deadline_ns)
{
  struct job *list;
  size_t left = 0;

  if (!mg)
    return 0;
  /* The list is taken whole: a starter that ctl_stop left stuck may still
   * list a job later, and must not race with this walk (the process is
   * exiting then: what it starts is never joined). */
  pthread_mutex_lock (&mg->lock);
  cancel_all_unlocked (mg);
  list = mg->jobs;
  mg->jobs = NULL;
  pthread_mutex_unlock (&mg->lock);
  for (struct job **pp = &list; *pp;) {
    struct job *j = *pp;
    if (j->started && !thread_join_until (j->thread, deadline_ns)) {
      log_error ("merge: disk %s: the %s job%s%s is still running at exit (stuck in the "
                 "kernel, on a filesystem that does not answer?); the daemon exits without "
                 "it", cor_disk_name (j->d), j->kind->name, j->target ? " to " : "",
                 j->target ? j->target : "");
      left++;
      pp = &j->next;
      continue;
    }
    *pp = j->next;
    /* A starter still waiting for it (a command that ctl_stop left
     * running) frees it when done (job_unhold). */
    pthread_mutex_lock (&mg->lock);
    bool held = j->waiters > 0;
    j->orphaned = held;
    pthread_mutex_unlock (&mg->lock);
    if (!held)
      job_free (j);
  }
  return left;
}

void
merge_free (struct merge *mg)
{
  if (!mg)
    return;
  pthread_mutex_lock (&mg->lock);
  cancel_all_unlocked (mg);
  pthread_mutex_unlock (&mg->lock);
  while (mg->jobs) {
    struct job *j = mg->jobs;
    mg->jobs = j->next;
    if (j->started)
      pthread_join (j->thread, NULL);
    job_free (j);
  }
  pthread_cond_destroy (&mg->cond);
  pthread_mutex_destroy (&mg->lock);
  free (mg->state_dir);
  free (mg);
}

/* Must be called with mg->lock held.  d's job in one lane: beside
 * (abort) or not (merge, flatten, copy). */
static struct job *
find_job_unlocked (struct merge *mg, struct cor_disk *d, bool beside)
{
  for (struct job *j = mg->jobs; j; j = j->next)
    if (j->d == d && j->kind->beside == beside)
      return j;
  return NULL;
}

/* Must be called with mg->lock held.  Take j off the list (if listed). */
static void
unlist_unlocked (struct merge *mg, struct job *j)
{
  for (struct job **pp = &mg->jobs; *pp; pp = &(*pp)->next)
    if (*pp == j) {
      *pp = j->next;
      break;
    }
}

/* Must be called with mg->lock held.  Sleep until abs_ns or a change. */
static void
wait_unlocked (struct merge *mg, uint64_t abs_ns)
{
  struct timespec ts = { abs_ns / NS_PER_SEC, abs_ns % NS_PER_SEC };
  pthread_cond_timedwait (&mg->cond, &mg->lock, &ts);
}

/* ---- for the kinds, on the job's thread ---- */

bool
job_keep_going (struct job *j)
{
  bool ok;

  pthread_mutex_lock (&j->mg->lock);
  while (j->state == J_PAUSED)
    pthread_cond_wait (&j->mg->cond, &j->mg->lock);
  ok = j->state == J_RUNNING;
  pthread_mutex_unlock (&j->mg->lock);
  return ok;
}

/* A token bucket refilled at j->rate bytes/s, holding at most one
 * second's worth; a piece may take it below zero, and the next one waits
 * until it is refilled.  A rate change or a cancel wakes it. */
void
job_throttle (struct job *j)
{
  for (;;) {
    uint64_t rate, now = now_ns ();
    pthread_mutex_lock (&j->mg->lock);
    rate = j->rate;
    if (rate) {
      j->tokens += (double) (now - j->tokens_ns) / NS_PER_SEC * rate;
      if (j->tokens > rate)
        j->tokens = rate;
    }
    j->tokens_ns = now;
    if (rate == 0 || j->tokens >= 0 || j->state != J_RUNNING) {
      pthread_mutex_unlock (&j->mg->lock);
      return;
    }
    wait_unlocked (j->mg, now + 100 * 1000000ULL);
    pthread_mutex_unlock (&j->mg->lock);
  }
}

void
job_charge (struct job *j, uint64_t bytes)
{
  j->tokens -= bytes;
  pthread_mutex_lock (&j->mg->lock);
  j->done += bytes;
  pthread_mutex_unlock (&j->mg->lock);
}

void
job_set_done (struct job *j, uint64_t done)
{
  pthread_mutex_lock (&j->mg->lock);
  j->done = done;
  pthread_mutex_unlock (&j->mg->lock);
}

void
job_sleep (struct job *j, uint64_t ns)
{
  pthread_mutex_lock (&j->mg->lock);
  wait_unlocked (j->mg, now_ns () + ns);
  pthread_mutex_unlock (&j->mg->lock);
}

void
job_set_error (struct job *j, const char *fmt, ...)
{
  va_list ap;

  pthread_mutex_lock (&j->mg->lock);
  va_start (ap, fmt);
  vsnprintf (j->last_error, sizeof j->last_error, fmt, ap);
  va_end (ap);
  j->errors++;
  pthread_mutex_unlock (&j->mg->lock);
}

void
job_finish (struct job *j, enum jstate s)
{
  pthread_mutex_lock (&j->mg->lock);
  if (j->state == J_RUNNING || j->state == J_PAUSED || s == J_FAILED)
    j->state = s;
  pthread_cond_broadcast (&j->mg->cond);
  pthread_mutex_unlock (&j->mg->lock);
}

static void *
job_thread (void *arg)
{
  struct job *j = arg;
  const struct job_kind *k = j->kind;

  j->tokens_ns = now_ns ();
  if (!k->start || k->start (j))
    while (k->step (j) == JOB_MORE)
      ;
  if (k->finish)
    k->finish (j);
  pthread_mutex_lock (&j->mg->lock);
  j->ended = true;
  pthread_cond_broadcast (&j->mg->cond);
  pthread_mutex_unlock (&j->mg->lock);
  return NULL;
}

/* ---- starting and steering ---- */

/* List a new job of kind on d as starting, replacing a finished job
 * (joined and freed here, outside mg->lock); NULL (errbuf) if a job is
 * still running there. */
static struct job *
list_new_job (struct merge *mg, struct cor_disk *d, const struct job_kind *kind,
              char *errbuf, size_t len)
{
  struct job *j, *old;

  if (!(j = calloc (1, sizeof *j))) {
    snprintf (errbuf, len, "out of memory");
    return NULL;
  }
  j->mg = mg;
  j->d = d;
  j->kind = kind;
  j->state = J_STARTING;
  pthread_mutex_lock (&mg->lock);
  old = find_job_unlocked (mg, d, kind->beside);
  if (old && (!finished (old->state) || old->waiters > 0)) {
    snprintf (errbuf, len, "disk %s: a %s job is %s", cor_disk_name (d),
              old->kind->name, state_names[old->state]);
    pthread_mutex_unlock (&mg->lock);
    free (j);
    return NULL;
  }
  if (old)
    unlist_unlocked (mg, old);
  j->next = mg->jobs;
  mg->jobs = j;
  pthread_mutex_unlock (&mg->lock);
  if (old) {
    pthread_join (old->thread, NULL);
    job_free (old);
  }
  return j;
}

/* Unlist and free j (a job that never started). */
static void
drop_new_job (struct merge *mg, struct job *j)
{
  pthread_mutex_lock (&mg->lock);
  unlist_unlocked (mg, j);
  pthread_mutex_unlock (&mg->lock);
  job_free (j);
}

/* The new job is listed first, as starting, so that a job started
 * meanwhile from another thread (flatten runs on one of ctl's job
 * threads) is refused; then the kind prepares it, without mg->lock.
 * held: the starter keeps a reference (job_wait, job_unhold). */
static int
start_job (struct merge *mg, struct cor_disk *d, const struct job_kind *kind, uint64_t rate,
           const void *arg, bool held, struct job **jp, char *errbuf, size_t len)
{
  struct job *j = list_new_job (mg, d, kind, errbuf, len);

  if (!j)
    return -1;
  if (kind->prepare && kind->prepare (j, arg, errbuf, len) == -1) {
    drop_new_job (mg, j);
    return -1;
  }
  pthread_mutex_lock (&mg->lock);
  j->rate = rate == UINT64_MAX ? 0 : rate;
  if (kind->init_progress)
    kind->init_progress (j);
  j->state = J_RUNNING;
  if (thread_create_nosig (&j->thread, job_thread, j) == -1) {
    pthread_mutex_unlock (&mg->lock);
    snprintf (errbuf, len, "cannot start a thread: %s", strerror (errno));
    drop_new_job (mg, j);
    return -1;
  }
  j->started = true;
  j->waiters = held;
  pthread_mutex_unlock (&mg->lock);
  if (jp)
    *jp = j;
  return 0;
}

int
job_start (struct merge *mg, struct cor_disk *d, const struct job_kind *kind,
           uint64_t rate, const void *arg, char *errbuf, size_t len)
{
  return start_job (mg, d, kind, rate, arg, false, NULL, errbuf, len);
}

int
job_start_held (struct merge *mg, struct cor_disk *d, const struct job_kind *kind,
                uint64_t rate, const void *arg, struct job **jp, char *errbuf, size_t len)
{
  return start_job (mg, d, kind, rate, arg, true, jp, errbuf, len);
}

void
job_wait (struct job *j)
{
  pthread_mutex_lock (&j->mg->lock);
  while (!j->ended)
    pthread_cond_wait (&j->mg->cond, &j->mg->lock);
  pthread_mutex_unlock (&j->mg->lock);
}

void
job_unhold (struct job *j)
{
  bool free_it;

  pthread_mutex_lock (&j->mg->lock);
  j->waiters--;
  free_it = j->orphaned && j->waiters == 0;
  pthread_mutex_unlock (&j->mg->lock);
  if (free_it)
    job_free (j);
}

/* Must be called with mg->lock held.  d's running or paused job of kind. */
static struct job *
find_active_unlocked (struct merge *mg, struct cor_disk *d, const struct job_kind *kind)
{
  struct job *j = find_job_unlocked (mg, d, kind->beside);

  return j && j->kind == kind && !finished (j->state) && j->state != J_STARTING ? j : NULL;
}

int
job_control (struct merge *mg, struct cor_disk *d, const struct job_kind *kind,
             const char *action, uint64_t rate, char *errbuf, size_t len)
{
  struct job *j;
  int ret = 0;

  pthread_mutex_lock (&mg->lock);
  if (!(j = find_active_unlocked (mg, d, kind)))
    ret = -1;
  else if (!strcmp (action, "pause") && j->state == J_RUNNING)
    j->state = J_PAUSED;
  else if (!strcmp (action, "resume") && j->state == J_PAUSED)
    j->state = J_RUNNING;
  else if (!strcmp (action, "cancel"))
    cancel_unlocked (j);
  else if (!strcmp (action, "rate") && rate != UINT64_MAX)
    j->rate = rate;
  else
    ret = -1;
  if (ret == 0 && rate != UINT64_MAX)
    j->rate = rate;
  if (ret == -1) {
    j = find_job_unlocked (mg, d, kind->beside);
    if (!j || j->kind != kind)
      snprintf (errbuf, len, "disk %s: cannot %s the %s: no %s is running",
                cor_disk_name (d), action, kind->name, kind->name);
    else
      snprintf (errbuf, len, "disk %s: cannot %s the %s: %s", cor_disk_name (d), action,
                kind->name, state_names[j->state]);
  }
  pthread_cond_broadcast (&mg->cond);
  pthread_mutex_unlock (&mg->lock);
  return ret;
}

bool
job_resume (struct merge *mg, struct cor_disk *d, const struct job_kind *kind, uint64_t rate)
{
  struct job *j;

  pthread_mutex_lock (&mg->lock);
  if ((j = find_active_unlocked (mg, d, kind))) {
    if (rate != UINT64_MAX)
      j->rate = rate;
    if (j->state == J_PAUSED)
      j->state = J_RUNNING;
    pthread_cond_broadcast (&mg->cond);
  }
  pthread_mutex_unlock (&mg->lock);
  return j != NULL;
}

struct job *
job_take_finished (struct merge *mg, struct cor_disk *d, const struct job_kind *kind)
{
  struct job *old;

  pthread_mutex_lock (&mg->lock);
  old = find_job_unlocked (mg, d, kind->beside);
  if (!old || old->kind != kind || !finished (old->state) || !old->started) {
    pthread_mutex_unlock (&mg->lock);
    return NULL;
  }
  unlist_unlocked (mg, old);
  pthread_mutex_unlock (&mg->lock);
  pthread_join (old->thread, NULL);
  return old;
}

/* Must be called with mg->lock held.  The job status shows of d's two
 * (one per lane): one that has not ended (an abort first: it is what
 * decides the disk's fate), else the one started last (the list is
 * newest first). */
static struct job *
status_job_unlocked (struct merge *mg, struct cor_disk *d)
{
  struct job *beside = find_job_unlocked (mg, d, true);
  struct job *other = find_job_unlocked (mg, d, false);

  if (beside && !finished (beside->state))
    return beside;
  if (other && !finished (other->state))
    return other;
  for (struct job *j = mg->jobs; j; j = j->next)
    if (j->d == d)
      return j;
  return NULL;
}

void
merge_status (struct merge *mg, struct cor_disk *d, struct merge_status *st)
{
  struct job *j;

  memset (st, 0, sizeof *st);
  st->kind = "none";
  st->state = "";
  pthread_mutex_lock (&mg->lock);
  j = status_job_unlocked (mg, d);
  if (j) {
    st->kind = j->kind->name;
    st->state = state_names[j->state];
    st->done_bytes = j->done;
    st->total_bytes = j->kind->status_total ? j->kind->status_total (j) : j->total;
    st->passes = j->passes;
    st->errors = j->errors;
    st->following = j->following;
    snprintf (st->last_error, sizeof st->last_error, "%s", j->last_error);
  }
  pthread_mutex_unlock (&mg->lock);
}
