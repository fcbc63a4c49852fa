/* corfs: the merge module's own declarations: the job framework (job.c)
 * and the job kinds built on it (merge.c, flatten.c, copy.c,
 * copy-target.c, abort.c).
 *
 * A job kind is a struct job_kind: the framework lists the job, calls
 * the kind's hooks on the starter's thread and on the job's own thread,
 * and answers status; the kind does the work.  A new kind is one more
 * struct job_kind and the command that starts it (job_start); nothing in
 * job.c changes.  The lock rules are in job.c's thread-model note.
 */
#ifndef CORFS_MERGE_INTERNAL_H
#define CORFS_MERGE_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "merge/merge.h"

struct cor_disk;
struct meta_disk;
struct job;

/* J_STARTING: listed (so that no other job starts on the disk) while
 * its starter runs the kind's prepare hook; no thread yet. */
enum jstate { J_RUNNING, J_PAUSED, J_SYNCED, J_CANCELLED, J_FAILED, J_DONE, J_STARTING };

/* What a step hook tells the job's thread: call it again, or stop (the
 * job has ended: job_finish was called, or it was cancelled). */
enum job_step { JOB_MORE, JOB_END };

/* The ops table of a job kind.  Hooks left NULL do nothing. */
struct job_kind {
  const char *name;             /* status "kind", and messages */
  /* Runs in the disk's second lane, beside a merge, flatten or copy
   * (abort: see job.c); one job per lane and disk at a time. */
  bool beside;
  /* Starter's thread, the job listed as starting, no mg->lock held:
   * open what the job needs (may block on a hung filesystem; ctl calls
   * such starters off its own thread).  arg is job_start's.  0, or -1
   * with a message in errbuf (the job is then unlisted and freed). */
  int (*prepare) (struct job *j, const void *arg, char *errbuf, size_t len);
  /* Starter's thread, under mg->lock, just before the thread starts:
   * set j->done and j->total (status reads them from now on). */
  void (*init_progress) (struct job *j);
  /* The job's thread, once, before the first step: false if the job
   * ended there (job_finish called, or cancelled); no step follows. */
  bool (*start) (struct job *j);
  /* The job's thread: the next piece of work (copy the next run), then
   * JOB_MORE to be called again, or JOB_END.  Required.  Pause and
   * cancel are seen where the kind calls job_keep_going. */
  enum job_step (*step) (struct job *j);
  /* The job's thread, last, whatever the outcome (merge re-pins the
   * parent, a copy keeps its durable progress). */
  void (*finish) (struct job *j);
  /* Under mg->lock, from any thread, right after a cancel (by command or
   * at exit) set the state: wake work the job waits on outside mg->cond.
   * Must not block nor take mg->lock. */
  void (*cancel) (struct job *j);
  /* Under mg->lock: the total_bytes status shows (NULL: j->total). */
  uint64_t (*status_total) (struct job *j);
  /* Free j->priv; the thread is joined, or never existed. */
  void (*free) (struct job *j);
};

struct job {
  struct merge *mg;
  struct cor_disk *d;
  const struct job_kind *kind;
  void *priv;                   /* the kind's own state */
  const char *target;           /* what it writes, for messages (NULL: the parent) */
  pthread_t thread;
  bool started;                 /* thread exists (to join) */
  /* the job's thread only: the rate limit's token bucket */
  double tokens;
  uint64_t tokens_ns;
  /* protected by mg->lock */
  enum jstate state;
  uint64_t rate, done, total, passes, errors;
  bool following;
  char last_error[512];
  bool ended;                   /* the thread has run its last hook */
  int waiters;                  /* a held job's starter (job_start_held) */
  bool orphaned;                /* merge_stop let go: the last waiter frees */
  struct job *next;
};

struct merge {
  pthread_mutex_t lock;         /* protects jobs and their state fields */
  pthread_cond_t cond;          /* state or rate changes */
  struct job *jobs;
  char *state_dir;              /* canonical; copies may not go there */
  dev_t state_dev;              /* its device and inode: nor through an alias */
  ino_t state_ino;
  bool closing;                 /* merge_stop/free: jobs end without re-pinning */
};

/* ---- the framework (job.c) ---- */

/* Start a job of kind on d (replacing a finished one): list it as
 * starting, run kind->prepare (arg), then start its thread with rate
 * (UINT64_MAX: 0).  0 or -1 (errbuf). */
int job_start (struct merge *mg, struct cor_disk *d, const struct job_kind *kind,
               uint64_t rate, const void *arg, char *errbuf, size_t len);
/* job_start, keeping the job for the starter (*jp): it must call
 * job_unhold when done with it, after job_wait if it wants its outcome
 * (the kind's priv, read after job_wait). */
int job_start_held (struct merge *mg, struct cor_disk *d, const struct job_kind *kind,
                    uint64_t rate, const void *arg, struct job **jp, char *errbuf,
                    size_t len);
/* Wait until the job's thread has run its finish hook. */
void job_wait (struct job *j);
void job_unhold (struct job *j);
/* Steer d's running job of kind: action "pause", "resume", "cancel" or
 * "rate"; rate (UINT64_MAX: unchanged) is set too.  0, or -1 (errbuf:
 * "disk D: cannot ACTION the KIND: why"). */
int job_control (struct merge *mg, struct cor_disk *d, const struct job_kind *kind,
                 const char *action, uint64_t rate, char *errbuf, size_t len);
/* If d has a running or paused job of kind: resume it, set rate
 * (UINT64_MAX: unchanged), true. */
bool job_resume (struct merge *mg, struct cor_disk *d, const struct job_kind *kind,
                 uint64_t rate);
/* d's finished job of kind whose thread ran, unlisted and joined (the
 * caller reads it, then job_free), or NULL. */
struct job *job_take_finished (struct merge *mg, struct cor_disk *d,
                               const struct job_kind *kind);
void job_free (struct job *j);

/* For the kinds, on the job's thread. */
/* Wait while paused; false if the job was cancelled (or ended). */
bool job_keep_going (struct job *j);
/* Wait until the rate allows the next piece (token bucket). */
void job_throttle (struct job *j);
/* bytes copied: charged to the rate and added to done. */
void job_charge (struct job *j, uint64_t bytes);
void job_set_done (struct job *j, uint64_t done);
/* Sleep ns, or until a state or rate change. */
void job_sleep (struct job *j, uint64_t ns);
/* Record an error (status last_error, errors + 1). */
void job_set_error (struct job *j, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));
/* End in state s (J_FAILED always; others only if not cancelled). */
void job_finish (struct job *j, enum jstate s);

/* ---- the job kinds ---- */

extern const struct job_kind merge_kind;   /* merge.c */
extern const struct job_kind flatten_kind; /* flatten.c: in place */
extern const struct job_kind copy_kind;    /* copy.c: --to FILE; arg: the name */
extern const struct job_kind abort_kind;   /* abort.c: a mirror's abort (beside) */

/* merge.c: the bytes of the blocks the parent may lack (dirty or
 * suspect), what a merge or an abort has left to copy. */
uint64_t merge_remaining_bytes (struct cor_disk *d);

/* ---- the copy kind's shared parts (copy.c, copy-target.c) ---- */

/* A copy's partial file carries this user xattr (see copy_cookie_get). */
#define COOKIE_XATTR "user.corfs.copy"

struct copy_job {
  char *to;                     /* the final name (canonical) */
  char *partial;                /* to + ".partial", open as fd */
  const char *base, *pbase;     /* their names in dirfd */
  int dirfd;                    /* their directory */
  char *record;                 /* STATE/NAME.copy */
  int fd;
  uint64_t start;               /* bytes already durable in partial */
  uint32_t gen;                 /* [0, start) is current as of it (0: unknown) */
  char cookie[40];              /* the partial file's (copy_cookie_set) */
  /* the job's thread only */
  char *buf;                    /* COPY_PIECE bytes */
  uint64_t off, checkpoint;     /* copied so far; durable and recorded so far */
};

/* copy-target.c */
/* The prepare hook: resolve, check and open the target `to` (arg) and
 * its partial file, new or continued. */
int copy_open (struct job *j, const void *to, char *errbuf, size_t len);
/* Record the partial file (st) and its durable progress done; a failure
 * is logged only. */
void copy_record (struct job *j, const struct stat *st, uint64_t done);
/* Drop what the partial file holds from `from` on.  0 or -1 (errno). */
int copy_truncate (struct job *j, uint64_t from);

#endif
