/* corfs: the one retry loop of the remote wrappers (remote_retry) and
 * the wrappers built on it: size questions, reads, writes, zeros and
 * flushes (see remote.h).
 *
 * Notes on the thread model: any thread, concurrently; see
 * wrapper-internal.h.  The loop holds no lock across an attempt; r->lock
 * is taken briefly for the counters and the state.  A backoff sleeps
 * with no lock held.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"
#include "remote/wrapper-internal.h"

#define BACKOFF_MIN_NS (50 * 1000000ULL)
#define BACKOFF_MAX_NS (2 * NS_PER_SEC)
/* A next attempt needs at least this much of the deadline (see backoff). */
#define MIN_ATTEMPT_NS (250 * 1000000ULL)

/* What a request is, for the policy below. */
enum retry_kind { RETRY_SIZE, RETRY_READ, RETRY_WRITE };

/* One request for remote_retry: attempt is called until it succeeds, a
 * non-retryable error, or the deadline (less MIN_ATTEMPT_NS). */
struct retry {
  enum retry_kind kind;
  const char *what;             /* "read", "write", "zero", "flush" (messages) */
  size_t count;                 /* bytes (a read counts them on success) */
  uint64_t offset;
  uint64_t deadline_ns;
  /* One attempt: >= 0 (a size, or 0), or -1 with *err. */
  int64_t (*attempt) (struct remote *r, const struct retry *rt, int *err);
  void *arg;
};

static int64_t do_zero (struct remote *r, const struct retry *rt, int *err);

/* Errors that retrying cannot mend: the parent changed or is not one, a
 * request it refuses, a permission, a missing capability. */
static bool
is_retryable (int err)
{
  return err != ESTALE && err != EINVAL && err != ERANGE && err != EROFS &&
    err != EPERM && err != EACCES && err != EOPNOTSUPP;
}

/* Sleep before the next attempt: exponential backoff with jitter, cut
 * short so that the next attempt keeps at least MIN_ATTEMPT_NS.  Returns
 * false, without sleeping, when not even that much is left (or the
 * remote is cancelled): a last attempt with a budget of a few
 * milliseconds can only time out, and its timeout would replace the real
 * error in the log and the status.  (HTTP's Retry-After is waited out by
 * the backend before its attempt returns; the backoff comes on top.) */
static bool
backoff (struct remote *r, uint64_t *delay_ns, uint64_t deadline_ns)
{
  uint64_t now = now_ns (), d;

  if (remote_is_cancelled (r) || r->single_attempt || now + MIN_ATTEMPT_NS > deadline_ns)
    return false;
  d = *delay_ns / 2 + (uint64_t) random () % (*delay_ns / 2 + 1);
  if (d > deadline_ns - now - MIN_ATTEMPT_NS)
    d = deadline_ns - now - MIN_ATTEMPT_NS;
  sleep_ns (d);
  *delay_ns = *delay_ns * 2 > BACKOFF_MAX_NS ? BACKOFF_MAX_NS : *delay_ns * 2;
  return true;
}

/* The policy, one place for every kind.  All kinds share is_retryable
 * and backoff; they differ in what they count and report, as they did
 * before the loops were merged (status and logs read as before):
 *
 *          counters                 state while retrying    on giving up: state,
 *                                                           errno returned, log
 *  size    none                     retrying (before the    down if retryable; the
 *                                   backoff)                error if not retryable, else
 *                                                           ETIMEDOUT, ECONNREFUSED,
 *                                                           ENOENT kept, others EIO; none
 *  read    requests, bytes, errors; retrying (after the     down if retryable and not
 *          retries = attempts       backoff)                cancelled; EIO; an error
 *          after the first                                  (debug if cancelled)
 *  write   errors and retries per   retrying (after every   retrying; EROFS, ENOSPC,
 *          failed attempt           failure)                EOPNOTSUPP kept, others EIO;
 *                                                           an error (debug if cancelled)
 *
 * A zero the parent cannot do (EOPNOTSUPP) is neither counted nor
 * retried: the caller writes zeros instead. */
static void
count_attempt (struct remote *r, const struct retry *rt, unsigned attempts, bool ok)
{
  if (rt->kind == RETRY_SIZE || (rt->kind == RETRY_WRITE && ok))
    return;
  pthread_mutex_lock (&r->lock);
  if (rt->kind == RETRY_READ) {
    r->stats.requests++;
    if (attempts > 1)
      r->stats.retries++;
    if (ok)
      r->stats.bytes += rt->count;
    else
      r->stats.errors++;
  }
  else {
    r->stats.errors++;
    r->stats.retries++;
  }
  pthread_mutex_unlock (&r->lock);
}

static void
succeeded (struct remote *r, const struct retry *rt, int64_t ret)
{
  if (rt->kind != RETRY_SIZE) {
    remote_set_state (r, REMOTE_CONNECTED);     /* (recovered, if it was down) */
    if (rt->kind == RETRY_READ)
      log_debug ("remote: disk %s: read %zu bytes at %" PRIu64, r->disk, rt->count,
                 rt->offset);
    return;
  }
  /* The parent answered a size or identity question: retrying or down no
   * longer describes it, nor does the last error if an earlier such
   * question made it (a re-pin that failed, then succeeded).  Errors of
   * reads and writes stay for status.  A changed parent stays changed. */
  __atomic_store_n (&r->size, (uint64_t) ret, __ATOMIC_RELAXED);
  pthread_mutex_lock (&r->lock);
  if (r->state == REMOTE_RETRYING || r->state == REMOTE_DOWN)
    r->state = REMOTE_IDLE;
  if (r->size_failed && r->state != REMOTE_CHANGED)
    r->last_error[0] = '\0';
  r->size_failed = false;
  pthread_mutex_unlock (&r->lock);
}

static void
give_up (struct remote *r, const struct retry *rt, unsigned attempts, uint64_t start,
         int *err)
{
  bool retryable = is_retryable (*err), cancelled = remote_is_cancelled (r);
  int e = *err;

  switch (rt->kind) {
  case RETRY_SIZE:
    if (!retryable)
      return;
    remote_set_state (r, REMOTE_DOWN);
    if (e != ETIMEDOUT && e != ECONNREFUSED && e != ENOENT)
      *err = EIO;
    return;
  case RETRY_READ:
    if (retryable && !cancelled)
      remote_set_state (r, REMOTE_DOWN);
    /* Whatever the cause (a timeout, a changed parent), the caller's
     * answer is EIO: the detail is in the log and in the status.  A
     * read cut short by the shutdown is not an error worth logging. */
    *err = EIO;
    /* A set's source: the set fails over and says so. */
    log_msg (cancelled || r->single_attempt ? LOG_LVL_DEBUG : LOG_LVL_ERROR,
             "remote: disk %s: parent %s: read of %zu bytes at offset %"
             PRIu64 " failed after %u attempts in %.1f s: %s",
             r->disk, r->url, rt->count, rt->offset, attempts,
             (now_ns () - start) / 1e9, strerror (e));
    return;
  case RETRY_WRITE:
    log_msg (cancelled ? LOG_LVL_DEBUG : LOG_LVL_ERROR,
             "remote: disk %s: parent %s: %s at offset %" PRIu64 " failed after "
             "%u attempts: %s", r->disk, r->url, rt->what, rt->offset, attempts,
             strerror (e));
    /* EOPNOTSUPP: a flush the parent cannot do (no NBD FLUSH), for the
     * caller to name. */
    if (e != EROFS && e != ENOSPC && e != EOPNOTSUPP)
      *err = EIO;
    return;
  }
}

/* Run rt until it succeeds or gives up (see the policy above).  The
 * attempt's result (>= 0), or -1 with *err. */
static int64_t
remote_retry (struct remote *r, const struct retry *rt, int *err)
{
  uint64_t delay = BACKOFF_MIN_NS, start = now_ns ();
  unsigned attempts = 0;

  for (;;) {
    int64_t ret;

    *err = 0;
    attempts++;
    ret = rt->attempt (r, rt, err);
    assert (ret >= 0 || *err != 0);
    /* Not an error, and nothing to retry: the caller writes zeros. */
    if (ret < 0 && rt->attempt == do_zero && *err == EOPNOTSUPP) {
      __atomic_store_n (&r->no_zero, 1, __ATOMIC_SEQ_CST);
      return -1;
    }
    count_attempt (r, rt, attempts, ret >= 0);
    if (ret >= 0) {
      succeeded (r, rt, ret);
      return ret;
    }
    if (rt->kind == RETRY_SIZE)
      remote_note_size_failed (r);
    if (rt->kind == RETRY_WRITE || (rt->kind == RETRY_SIZE && is_retryable (*err)))
      remote_set_state (r, REMOTE_RETRYING);
    if (!is_retryable (*err) || !backoff (r, &delay, rt->deadline_ns)) {
      give_up (r, rt, attempts, start, err);
      return -1;
    }
    if (rt->kind == RETRY_READ)
      remote_set_state (r, REMOTE_RETRYING);
  }
}

/* ---- size questions ---- */

/* One size question: the backend's get_size, or with arg (the id
 * buffer) non-NULL its identify.  The answer is checked whatever the
 * backend did: a size outside [0, REMOTE_MAX_SIZE] is an error, never an
 * abort. */
struct size_args {
  char *id;
  size_t len;
};

static int64_t
ask_size (struct remote *r, const struct retry *rt, int *err)
{
  const struct size_args *a = rt->arg;
  int64_t size = a->id ? r->ops->identify (r, r->h, rt->deadline_ns, a->id, a->len, err)
    : r->ops->get_size (r, r->h, rt->deadline_ns, err);

  if (size < 0 && *err == 0) {
    remote_note_error (r, "the %s backend reported size %" PRId64 " without an error",
                       r->ops->name, size);
    *err = EIO;
  }
  if (size < 0 || remote_check_size (r, r->ops->name, size, err) == -1)
    return -1;
  return size;
}

int64_t
remote_size_retrying (struct remote *r, char *id, size_t len, uint64_t deadline_ns, int *err)
{
  struct size_args a = { id, len };
  struct retry rt = { .kind = RETRY_SIZE, .what = "size", .deadline_ns = deadline_ns,
                      .attempt = ask_size, .arg = &a };

  return remote_retry (r, &rt, err);
}

int64_t
remote_get_size (struct remote *r, uint64_t deadline_ns, int *err)
{
  return remote_size_retrying (r, NULL, 0, deadline_ns, err);
}

/* ---- reads ---- */

static int64_t
do_pread (struct remote *r, const struct retry *rt, int *err)
{
  return r->ops->pread (r, r->h, rt->arg, rt->count, rt->offset, rt->deadline_ns, err);
}

int
remote_pread (struct remote *r, void *buf, size_t count, uint64_t offset,
              uint64_t deadline_ns, int *err)
{
  struct retry rt = { .kind = RETRY_READ, .what = "read", .count = count, .offset = offset,
                      .deadline_ns = deadline_ns, .attempt = do_pread, .arg = buf };

  assert (count > 0);
  /* A changed parent fails closed until it is re-pinned: never a read
   * that happens to succeed against the new image. */
  if (remote_is_changed (r)) {
    *err = EIO;
    return -1;
  }
  return remote_retry (r, &rt, err) < 0 ? -1 : 0;
}

/* ---- writes, zeros, flushes ---- */

static int64_t
do_pwrite (struct remote *r, const struct retry *rt, int *err)
{
  return r->ops->pwrite (r, r->h, rt->arg, rt->count, rt->offset, rt->deadline_ns, err);
}

static int64_t
do_zero (struct remote *r, const struct retry *rt, int *err)
{
  return r->ops->zero (r, r->h, rt->offset, rt->count, rt->deadline_ns, err);
}

static int64_t
do_flush (struct remote *r, const struct retry *rt, int *err)
{
  return r->ops->flush (r, r->h, *(const bool *) rt->arg, rt->deadline_ns, err);
}

/* remote_retry for a write-kind request, after the checks every write
 * shares.  0 or -1 with *err. */
static int
retry_write (struct remote *r, struct retry *rt, int *err)
{
  rt->kind = RETRY_WRITE;
  if (!r->ops->pwrite) {
    *err = EROFS;
    log_error ("remote: disk %s: parent %s (%s) cannot be written", r->disk, r->url,
               r->ops->name);
    return -1;
  }
  /* A changed parent is not ours to write (as reads fail closed). */
  if (remote_is_changed (r)) {
    *err = ESTALE;
    return -1;
  }
  return remote_retry (r, rt, err) < 0 ? -1 : 0;
}

int
remote_pwrite (struct remote *r, const void *buf, size_t count, uint64_t offset,
               uint64_t deadline_ns, int *err)
{
  struct retry rt = { .what = "write", .count = count, .offset = offset,
                      .deadline_ns = deadline_ns, .attempt = do_pwrite, .arg = (void *) buf };
  int ret;

  assert (count > 0);
  /* Before and after: a block-status question asked in between may
   * have seen either state (see struct zcache). */
  __atomic_fetch_add (&r->write_gen, 1, __ATOMIC_SEQ_CST);
  ret = retry_write (r, &rt, err);
  __atomic_fetch_add (&r->write_gen, 1, __ATOMIC_SEQ_CST);
  return ret;
}

/* Zeros are written from this, a piece at a time, where the parent has
 * no zeroing of its own. */
#define ZERO_PIECE (1 << 20)
static const char zero_piece[ZERO_PIECE];

int
remote_pwrite_zeros (struct remote *r, uint64_t offset, uint64_t count,
                     uint64_t deadline_ns, int *err)
{
  struct retry rt = { .what = "zero", .count = count, .offset = offset,
                      .deadline_ns = deadline_ns, .attempt = do_zero };
  bool can_zero = r->ops->zero && !__atomic_load_n (&r->no_zero, __ATOMIC_SEQ_CST);
  int ret = -1;

  assert (count > 0);
  __atomic_fetch_add (&r->write_gen, 1, __ATOMIC_SEQ_CST);
  if (can_zero)
    ret = retry_write (r, &rt, err);
  if (ret == -1 && (!can_zero || *err == EOPNOTSUPP)) {
    ret = 0;
    while (count > 0 && ret == 0) {
      size_t n = count > ZERO_PIECE ? ZERO_PIECE : count;
      rt = (struct retry) { .what = "write", .count = n, .offset = offset,
                            .deadline_ns = deadline_ns, .attempt = do_pwrite,
                            .arg = (void *) zero_piece };
      ret = retry_write (r, &rt, err);
      offset += n;
      count -= n;
    }
  }
  __atomic_fetch_add (&r->write_gen, 1, __ATOMIC_SEQ_CST);
  return ret;
}

/* The backend reports a lost connection to one flush only (it clears its
 * mark), maybe not the one whose caller's writes were on it.  So a flush
 * also fails when a loss found by anyone may include writes issued since
 * since_ns, or, with since_ns UINT64_MAX (the caller cannot tell), when a
 * loss was found while this flush ran. */
static int
flush_checked (struct remote *r, bool all, uint64_t since_ns, uint64_t deadline_ns, int *err)
{
  struct retry rt = { .what = "flush", .deadline_ns = deadline_ns, .attempt = do_flush,
                      .arg = &all };
  uint64_t start = now_ns (), lost_ns, found_ns;
  int ret = retry_write (r, &rt, err);

  pthread_mutex_lock (&r->lock);
  lost_ns = r->lost_writes_ns;
  found_ns = r->lost_found_ns;
  pthread_mutex_unlock (&r->lock);
  /* A loss at since_ns itself may include writes issued then (0: none
   * was ever lost). */
  if (ret == 0 && (since_ns == UINT64_MAX ? found_ns >= start
                   : lost_ns != 0 && lost_ns >= since_ns)) {
    log_error ("remote: disk %s: parent %s: flush: writes this flush must cover may "
               "have been lost (with a connection, or in a write-back error that "
               "another flush found)", r->disk, r->url);
    *err = EIO;
    ret = -1;
  }
  return ret;
}

int
remote_flush_since (struct remote *r, bool all, uint64_t since_ns, uint64_t deadline_ns,
                    int *err)
{
  return flush_checked (r, all, since_ns, deadline_ns, err);
}

int
remote_flush (struct remote *r, uint64_t deadline_ns, int *err)
{
  return flush_checked (r, false, UINT64_MAX, deadline_ns, err);
}

int
remote_flush_all (struct remote *r, uint64_t deadline_ns, int *err)
{
  return flush_checked (r, true, UINT64_MAX, deadline_ns, err);
}
