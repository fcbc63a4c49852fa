/* corfs: the control socket's job runner.  A long command (the command
 * table in ctl-dispatch.c says which) runs on a job thread of its own,
 * so that the ctl thread never does long work: status, metrics and
 * events keep being answered meanwhile.
 *
 * Notes on the thread model:
 *  1. The ctl thread starts the job (ctl_start_job) and marks its client
 *     pending: it reads nothing more from that client until the reply,
 *     so each client's replies stay in the order of its requests.
 *  2. The job thread runs the handler, stores the reply and done under
 *     qlock, and writes to the wake-up pipe.
 *  3. The ctl thread, woken, finds the done jobs (ctl_finish_jobs), joins
 *     them, sends their replies and goes on with what their clients sent
 *     meanwhile.  A client dropped meanwhile has j->cl NULL: the reply
 *     is dropped.
 * One long command per disk at a time: a second one is refused.
 * ctl_stop_jobs (after the ctl thread has ended) joins the jobs, which
 * the engine bounds (cor_engine_quiesce makes them give up at shutdown);
 * only a flatten --to target on a filesystem that hangs is not (a FIFO or
 * a device there is refused at once): ctl_stop waits for those until its
 * deadline, then leaves them running (the daemon exits without freeing
 * what they use; they touch only their job, qlock and the wake-up pipe,
 * none of which is freed then).
 *
 * Locks: qlock (a leaf) protects each job's done and reply; the job
 * list is the ctl thread's (ctl_stop's once it has ended).
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "cor/cor.h"
#include "ctl/ctl-internal.h"

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

json_t *
ctl_start_job (struct ctl *c, struct cor_disk *d, const char *cmd, ctl_handler_fn *fn,
               json_t *req, json_t *id, struct client *cl)
{
  struct job *j;

  for (j = c->jobs; j; j = j->next)
    if (j->d == d)
      return ctl_error_reply (id, "disk %s: %s refused: %s is still running on this disk; "
                              "try again once it has answered", cor_disk_name (d), cmd, j->cmd);
  if (!(j = calloc (1, sizeof *j)))
    return ctl_error_reply (id, "out of memory");
  *j = (struct job) { .c = c, .cl = cl, .d = d, .cmd = cmd, .fn = fn,
                      .req = json_incref (req) };
  if (thread_create_nosig (&j->thread, job_thread, j) == -1) {
    log_error ("ctl: starting a thread for %s: %m", j->cmd);
    json_decref (j->req);
    free (j);
    return ctl_error_reply (id, "disk %s: %s: cannot start a thread: %s", cor_disk_name (d),
                            cmd, strerror (errno));
  }
  j->next = c->jobs;
  c->jobs = j;
  cl->pending = j;
  return NULL;
}

/* ctl_reap_job for a job whose thread is joined. */
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

json_t *
ctl_reap_job (struct ctl *c, struct job *j)
{
  pthread_join (j->thread, NULL);
  return reap_joined (c, j);
}

void
ctl_finish_jobs (struct ctl *c)
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
    json_t *reply = ctl_reap_job (c, j);
    if (!cl) {
      json_decref (reply);
      continue;
    }
    int i = 0;
    while (c->clients[i] != cl)
      i++;
    cl->pending = NULL;
    int s = reply ? ctl_send_reply (cl->fd, reply) : -1;
    json_decref (reply);
    if (s == -1 || ctl_serve_lines (c, i) == -1)
      ctl_drop_client (c, i);
    next = c->jobs;             /* ctl_serve_lines may have started one */
  }
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
    json_t *reply = ctl_error_reply (json_object_get (j->req, "id"), "%s", msg);
    if (reply)
      ctl_send_reply (j->cl->fd, reply);
    json_decref (reply);
  }
}

size_t
ctl_stop_jobs (struct ctl *c, uint64_t deadline_ns)
{
  size_t left = 0;

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
      ctl_send_reply (cl->fd, reply);
    if (cl)
      cl->pending = NULL;
    json_decref (reply);
  }
  return left;
}
