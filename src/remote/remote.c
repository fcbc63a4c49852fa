/* corfs: the remote wrappers (see remote.h): contract checks, retries
 * with backoff, parent state, identity pinning.
 *
 * Notes on the thread model: any thread may call the wrappers at any
 * time.  r->lock protects the state, the last error, the identity, the
 * counters and the lost-write times (remote_note_lost_writes, called by a
 * backend's flush); it is never held across a backend call (no_zero is
 * atomic).  r->serialize is held
 * across backend calls for REMOTE_SERIALIZE backends only.  The
 * block-status cache has its own two locks (see struct zcache), taken
 * query before lock, never with r->lock held.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"
#include "remote/remote-internal.h"

#define BACKOFF_MIN_NS (50 * 1000000ULL)
#define BACKOFF_MAX_NS (2 * NS_PER_SEC)
/* Block status is asked for this much at a time and the answer kept: the
 * streamer walks the disk in 2 MiB chunks, and a parent may pay for each
 * question in proportion to the file, not the range (nbdkit's file plugin
 * on tmpfs: SEEK_HOLE scans to the end of the file). */
#define ZCACHE_WINDOW (1ULL << 30)

/* The last block-status answer, for [start, end) of the parent, valid
 * while write_gen is still gen.  lock protects it; query is held across
 * the question so that concurrent misses ask once. */
struct zcache {
  pthread_mutex_t lock, query;
  uint64_t start, end, gen;
  struct remote_extent *v;
  size_t n;
};

struct remote {
  const struct remote_ops *ops;
  void *h;                      /* backend state */
  char *url;                    /* redacted */
  char *disk;
  pthread_mutex_t serialize;    /* held across calls to SERIALIZE backends */
  pthread_mutex_t lock;         /* protects the fields below */
  enum remote_state state;
  char last_error[1280];
  char identity[512];
  bool pinned;
  bool modifying;               /* our writes may change the identity */
  bool size_failed;             /* the last error is a size/identity question's */
  int cancelled;                /* atomic: remote_cancel was called */
  struct remote_stats stats;
  struct log_ratelimit rl;
  uint64_t size;                /* the last size the parent gave, 0 before */
  /* Our own writes to the parent bump this before and after each, so a
   * block-status answer that may predate one is never cached. */
  uint64_t write_gen;           /* atomic */
  /* The latest time before which lost writes returned (see
   * remote_note_lost_writes), and the latest time a loss was found; 0 if
   * none were ever lost. */
  uint64_t lost_writes_ns, lost_found_ns;
  /* atomic: the parent said it cannot zero (EOPNOTSUPP) once; zeros are
   * written as data from then on, without asking again. */
  int no_zero;
  struct zcache zc;
};

static const struct remote_ops *backends[] = { &rfile_ops, &rnbd_ops, &rhttp_ops, &rnfs_ops, NULL };

int
remote_open (const struct remote_config *cfg, struct remote **rp)
{
  struct remote *r;
  const struct remote_ops *ops = NULL;
  int err = 0;

  for (size_t i = 0; backends[i]; i++)
    if (backends[i]->handles (cfg->url)) {
      ops = backends[i];
      break;
    }
  if (!ops) {
    char *u = url_redact (cfg->url);
    log_error ("remote: disk %s: unsupported parent URL %s "
               "(expected file://, nbd://, nbd+unix://, http://, https://, s3://, nfs://)", cfg->disk, u ? u : "?");
    free (u);
    errno = EINVAL;
    return -1;
  }
  r = calloc (1, sizeof *r);
  if (!r)
    return -1;
  r->ops = ops;
  r->url = url_redact (cfg->url);
  r->disk = strdup (cfg->disk);
  if (!r->url || !r->disk) {
    err = ENOMEM;
    goto err_free;
  }
  pthread_mutex_init (&r->lock, NULL);
  pthread_mutex_init (&r->serialize, NULL);
  pthread_mutex_init (&r->zc.lock, NULL);
  pthread_mutex_init (&r->zc.query, NULL);
  if (cfg->pinned_identity && *cfg->pinned_identity) {
    snprintf (r->identity, sizeof r->identity, "%s", cfg->pinned_identity);
    r->pinned = true;
  }
  if (ops->open (r, cfg, &r->h, &err) == -1) {
    assert (err != 0);
    pthread_mutex_destroy (&r->lock);
    pthread_mutex_destroy (&r->serialize);
    pthread_mutex_destroy (&r->zc.lock);
    pthread_mutex_destroy (&r->zc.query);
    goto err_free;
  }
  *rp = r;
  return 0;

 err_free:
  free (r->url);
  free (r->disk);
  free (r);
  errno = err;
  return -1;
}

void
remote_close (struct remote *r)
{
  if (!r)
    return;
  r->ops->close (r->h);
  pthread_mutex_destroy (&r->lock);
  pthread_mutex_destroy (&r->serialize);
  pthread_mutex_destroy (&r->zc.lock);
  pthread_mutex_destroy (&r->zc.query);
  free (r->zc.v);
  free (r->url);
  free (r->disk);
  free (r);
}

const char *remote_url (const struct remote *r) { return r->url; }
const char *remote_disk (const struct remote *r) { return r->disk; }
const char *remote_backend (const struct remote *r) { return r->ops->name; }

const char *
remote_state_name (enum remote_state s)
{
  switch (s) {
  case REMOTE_IDLE: return "idle";
  case REMOTE_CONNECTED: return "connected";
  case REMOTE_RETRYING: return "retrying";
  case REMOTE_DOWN: return "down";
  case REMOTE_CHANGED: return "changed";
  }
  return "?";
}

enum remote_state
remote_status (struct remote *r, char *last_error, size_t len)
{
  enum remote_state s;

  pthread_mutex_lock (&r->lock);
  s = r->state;
  if (last_error)
    snprintf (last_error, len, "%s", r->last_error);
  pthread_mutex_unlock (&r->lock);
  return s;
}

void
remote_get_stats (struct remote *r, struct remote_stats *st)
{
  pthread_mutex_lock (&r->lock);
  *st = r->stats;
  pthread_mutex_unlock (&r->lock);
}

void
remote_identity (struct remote *r, char *buf, size_t len)
{
  pthread_mutex_lock (&r->lock);
  snprintf (buf, len, "%s", r->pinned ? r->identity : "");
  pthread_mutex_unlock (&r->lock);
}

int
remote_check_identity (struct remote *r, const char *identity, int *err)
{
  int ret = 0;

  pthread_mutex_lock (&r->lock);
  if (!r->pinned) {
    snprintf (r->identity, sizeof r->identity, "%s", identity);
    r->pinned = true;
  }
  else if (strcmp (r->identity, identity) != 0 && r->modifying) {
    log_info ("remote: disk %s: parent %s identity moved while it is being written "
              "(a merge, or the source before activation); re-pinned %s",
              r->disk, r->url, identity);
    snprintf (r->identity, sizeof r->identity, "%s", identity);
  }
  else if (strcmp (r->identity, identity) != 0) {
    if (r->state != REMOTE_CHANGED)
      log_error ("remote: disk %s: parent %s changed: pinned identity %s, "
                 "now %s; refusing to mix data from two images",
                 r->disk, r->url, r->identity, identity);
    r->state = REMOTE_CHANGED;
    snprintf (r->last_error, sizeof r->last_error,
              "parent changed (pinned %s, found %s)", r->identity, identity);
    *err = ESTALE;
    ret = -1;
  }
  pthread_mutex_unlock (&r->lock);
  return ret;
}

void
remote_note_connected (struct remote *r, bool reconnect)
{
  pthread_mutex_lock (&r->lock);
  if (r->state != REMOTE_CHANGED)
    r->state = REMOTE_CONNECTED;
  if (reconnect) {
    r->stats.reconnects++;
    log_info ("remote: disk %s: reconnected to %s", r->disk, r->url);
  }
  pthread_mutex_unlock (&r->lock);
}

void
remote_note_error (struct remote *r, const char *fmt, ...)
{
  char msg[512];
  va_list ap;
  bool log;

  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  pthread_mutex_lock (&r->lock);
  snprintf (r->last_error, sizeof r->last_error, "%s", msg);
  log = log_ratelimit_ok (&r->rl);
  pthread_mutex_unlock (&r->lock);
  /* Requests cut short by the shutdown (remote_cancel) are expected:
   * not worth a warning on every unmount with fetches in flight. */
  if (remote_is_cancelled (r))
    log_debug ("remote: disk %s: parent %s: %s", r->disk, r->url, msg);
  else if (log)
    log_warn ("remote: disk %s: parent %s: %s", r->disk, r->url, msg);
}

static bool
is_retryable (int err)
{
  return err != ESTALE && err != EINVAL && err != ERANGE && err != EROFS &&
    err != EPERM && err != EACCES && err != EOPNOTSUPP;
}

/* Sleep before the next attempt: exponential backoff with jitter, cut
 * short so that the next attempt keeps at least MIN_ATTEMPT_NS.  Returns
 * false, without sleeping, when not even that much is left: a last
 * attempt with a budget of a few milliseconds can only time out, and its
 * timeout would replace the real error in the log and the status. */
#define MIN_ATTEMPT_NS (250 * 1000000ULL)
static bool
backoff (struct remote *r, uint64_t *delay_ns, uint64_t deadline_ns)
{
  uint64_t now = now_ns (), d;

  if (remote_is_cancelled (r) || now + MIN_ATTEMPT_NS > deadline_ns)
    return false;
  d = *delay_ns / 2 + (uint64_t) random () % (*delay_ns / 2 + 1);
  if (d > deadline_ns - now - MIN_ATTEMPT_NS)
    d = deadline_ns - now - MIN_ATTEMPT_NS;
  sleep_ns (d);
  *delay_ns = *delay_ns * 2 > BACKOFF_MAX_NS ? BACKOFF_MAX_NS : *delay_ns * 2;
  return true;
}

static void
set_state (struct remote *r, enum remote_state s)
{
  pthread_mutex_lock (&r->lock);
  if (r->state != REMOTE_CHANGED)
    r->state = s;
  pthread_mutex_unlock (&r->lock);
}

int
remote_check_size (struct remote *r, const char *what, uint64_t size, int *err)
{
  if (size <= REMOTE_MAX_SIZE)
    return 0;
  remote_note_error (r, "%s: size %" PRIu64 " bytes is beyond the %llu-byte limit: "
                     "a broken parent", what, size, REMOTE_MAX_SIZE);
  *err = ERANGE;
  return -1;
}

/* One size question: the backend's get_size, or with id non-NULL its
 * identify.  The answer is checked whatever the backend did: a size
 * outside [0, REMOTE_MAX_SIZE] is an error, never an abort.  The size, or
 * -1 with *err. */
static int64_t
ask_size (struct remote *r, char *id, size_t len, uint64_t deadline_ns, int *err)
{
  int64_t size;

  *err = 0;
  if (r->ops->thread_model == REMOTE_SERIALIZE)
    pthread_mutex_lock (&r->serialize);
  size = id ? r->ops->identify (r, r->h, deadline_ns, id, len, err)
    : r->ops->get_size (r, r->h, deadline_ns, err);
  if (r->ops->thread_model == REMOTE_SERIALIZE)
    pthread_mutex_unlock (&r->serialize);
  if (size < 0 && *err == 0) {
    remote_note_error (r, "the %s backend reported size %" PRId64 " without an error",
                       r->ops->name, size);
    *err = EIO;
  }
  if (size < 0 || remote_check_size (r, r->ops->name, size, err) == -1)
    return -1;
  return size;
}

/* The parent answered a size or identity question: retrying or down no
 * longer describes it, nor does the last error if an earlier such
 * question made it (a re-pin that failed, then succeeded).  Errors of
 * reads and writes stay for status.  A changed parent stays changed. */
static void
note_answered (struct remote *r)
{
  pthread_mutex_lock (&r->lock);
  if (r->state == REMOTE_RETRYING || r->state == REMOTE_DOWN)
    r->state = REMOTE_IDLE;
  if (r->size_failed && r->state != REMOTE_CHANGED)
    r->last_error[0] = '\0';
  r->size_failed = false;
  pthread_mutex_unlock (&r->lock);
}

static void
note_size_failed (struct remote *r)
{
  pthread_mutex_lock (&r->lock);
  r->size_failed = true;
  pthread_mutex_unlock (&r->lock);
}

/* ask_size, retried with backoff until the deadline. */
static int64_t
size_retrying (struct remote *r, char *id, size_t len, uint64_t deadline_ns, int *err)
{
  uint64_t delay = BACKOFF_MIN_NS;

  for (;;) {
    int64_t size = ask_size (r, id, len, deadline_ns, err);
    if (size >= 0) {
      __atomic_store_n (&r->size, (uint64_t) size, __ATOMIC_RELAXED);
      note_answered (r);
      return size;
    }
    note_size_failed (r);
    if (!is_retryable (*err))
      return -1;
    set_state (r, REMOTE_RETRYING);
    if (!backoff (r, &delay, deadline_ns)) {
      set_state (r, REMOTE_DOWN);
      if (*err != ETIMEDOUT && *err != ECONNREFUSED && *err != ENOENT)
        *err = EIO;
      return -1;
    }
  }
}

int64_t
remote_get_size (struct remote *r, uint64_t deadline_ns, int *err)
{
  return size_retrying (r, NULL, 0, deadline_ns, err);
}

int
remote_pread (struct remote *r, void *buf, size_t count, uint64_t offset,
              uint64_t deadline_ns, int *err)
{
  uint64_t delay = BACKOFF_MIN_NS, start = now_ns ();
  unsigned attempts = 0;

  assert (count > 0);
  /* A changed parent fails closed until it is re-pinned: never a read
   * that happens to succeed against the new image. */
  pthread_mutex_lock (&r->lock);
  bool changed = r->state == REMOTE_CHANGED;
  pthread_mutex_unlock (&r->lock);
  if (changed) {
    *err = EIO;
    return -1;
  }
  for (;;) {
    int ret;
    *err = 0;
    attempts++;
    if (r->ops->thread_model == REMOTE_SERIALIZE)
      pthread_mutex_lock (&r->serialize);
    ret = r->ops->pread (r, r->h, buf, count, offset, deadline_ns, err);
    if (r->ops->thread_model == REMOTE_SERIALIZE)
      pthread_mutex_unlock (&r->serialize);
    pthread_mutex_lock (&r->lock);
    r->stats.requests++;
    if (attempts > 1)
      r->stats.retries++;
    if (ret == 0)
      r->stats.bytes += count;
    else
      r->stats.errors++;
    pthread_mutex_unlock (&r->lock);
    if (ret == 0) {
      set_state (r, REMOTE_CONNECTED);     /* (recovered, if it was down) */
      log_debug ("remote: disk %s: read %zu bytes at %" PRIu64, r->disk, count, offset);
      return 0;
    }
    assert (*err != 0);
    if (!is_retryable (*err) || !backoff (r, &delay, deadline_ns)) {
      int e = *err;
      bool cancelled = remote_is_cancelled (r);
      if (is_retryable (e) && !cancelled)
        set_state (r, REMOTE_DOWN);
      /* Whatever the cause (a timeout, a changed parent), the caller's
       * answer is EIO: the detail is in the log and in the status.  A
       * read cut short by the shutdown is not an error worth logging. */
      *err = EIO;
      log_msg (cancelled ? LOG_LVL_DEBUG : LOG_LVL_ERROR,
               "remote: disk %s: parent %s: read of %zu bytes at offset %"
               PRIu64 " failed after %u attempts in %.1f s: %s",
               r->disk, r->url, count, offset, attempts,
               (now_ns () - start) / 1e9, strerror (e));
      return -1;
    }
    set_state (r, REMOTE_RETRYING);
  }
}

int
remote_extent_append (struct remote_extent **v, size_t *n, uint64_t offset,
                      uint64_t length)
{
  struct remote_extent *nv;

  if (length == 0)
    return 0;
  if (*n > 0 && (*v)[*n - 1].offset + (*v)[*n - 1].length == offset) {
    (*v)[*n - 1].length += length;
    return 0;
  }
  /* Grow at powers of two (the capacity is implied by *n), so that a
   * long list costs O(n) copies, not O(n^2). */
  if (*n == 0 || (*n >= 4 && (*n & (*n - 1)) == 0)) {
    nv = realloc (*v, (*n < 4 ? 4 : *n * 2) * sizeof *nv);
    if (!nv)
      return -1;
    *v = nv;
  }
  nv = *v;
  nv[*n].offset = offset;
  nv[*n].length = length;
  (*n)++;
  return 0;
}

static int
ask_zero_extents (struct remote *r, uint64_t offset, uint64_t count, uint64_t deadline_ns,
                  struct remote_extent **v, size_t *n, int *err)
{
  int ret;

  *v = NULL;
  *n = 0;
  if (r->ops->thread_model == REMOTE_SERIALIZE)
    pthread_mutex_lock (&r->serialize);
  ret = r->ops->zero_extents (r, r->h, offset, count, deadline_ns, v, n, err);
  if (r->ops->thread_model == REMOTE_SERIALIZE)
    pthread_mutex_unlock (&r->serialize);
  if (ret == -1) {
    free (*v);
    *v = NULL;
    *n = 0;
  }
  return ret;
}

/* Append the extents of v[0..n) that meet [offset, end), clipped to it.
 * 0 or -1 (ENOMEM). */
static int
clip_extents (const struct remote_extent *v, size_t n, uint64_t offset, uint64_t end,
              struct remote_extent **out, size_t *nout)
{
  for (size_t i = 0; i < n; i++) {
    uint64_t s = v[i].offset, e = s + v[i].length;
    if (e <= offset)
      continue;
    if (s >= end)
      break;
    s = s > offset ? s : offset;
    e = e < end ? e : end;
    if (remote_extent_append (out, nout, s, e - s) == -1)
      return -1;
  }
  return 0;
}

int
remote_zero_extents (struct remote *r, uint64_t offset, uint64_t count,
                     uint64_t deadline_ns, struct remote_extent **extents,
                     size_t *nr_extents, int *err)
{
  struct zcache *zc = &r->zc;
  uint64_t end = offset + count, size, wend, gen;
  struct remote_extent *v;
  size_t n;
  int ret;

  *extents = NULL;
  *nr_extents = 0;
  if (!r->ops->zero_extents || count == 0)
    return 0;

  pthread_mutex_lock (&zc->query);
  pthread_mutex_lock (&zc->lock);
  if (zc->end != 0 && offset >= zc->start && end <= zc->end &&
      zc->gen == __atomic_load_n (&r->write_gen, __ATOMIC_SEQ_CST)) {
    ret = clip_extents (zc->v, zc->n, offset, end, extents, nr_extents);
    pthread_mutex_unlock (&zc->lock);
    pthread_mutex_unlock (&zc->query);
    goto out;
  }
  pthread_mutex_unlock (&zc->lock);

  /* A miss: ask for the whole window (clipped to the parent's size). */
  size = __atomic_load_n (&r->size, __ATOMIC_RELAXED);
  wend = end;
  if (size > end)
    wend = size - offset > ZCACHE_WINDOW ? offset + ZCACHE_WINDOW : size;
  gen = __atomic_load_n (&r->write_gen, __ATOMIC_SEQ_CST);
  if (ask_zero_extents (r, offset, wend - offset, deadline_ns, &v, &n, err) == -1) {
    pthread_mutex_unlock (&zc->query);
    return -1;
  }
  /* If one of our writes raced the question, the cache is stale at once
   * (gen differs), but the answer is as good for this caller as an
   * uncached one: its blocks are claimed and cannot be written. */
  pthread_mutex_lock (&zc->lock);
  free (zc->v);
  zc->v = v;
  zc->n = n;
  zc->start = offset;
  zc->end = wend;
  zc->gen = gen;
  ret = clip_extents (v, n, offset, end, extents, nr_extents);
  pthread_mutex_unlock (&zc->lock);
  pthread_mutex_unlock (&zc->query);

 out:
  if (ret == -1) {
    free (*extents);
    *extents = NULL;
    *nr_extents = 0;
    *err = ENOMEM;
  }
  return ret;
}

void
remote_cancel (struct remote *r)
{
  if (!r || __atomic_exchange_n (&r->cancelled, 1, __ATOMIC_SEQ_CST))
    return;
  log_debug ("remote: disk %s: cancelling requests to parent %s", r->disk, r->url);
}

bool
remote_is_cancelled (const struct remote *r)
{
  return __atomic_load_n (&r->cancelled, __ATOMIC_SEQ_CST) != 0;
}

void
remote_release (struct remote *r)
{
  if (r->ops->release) {
    if (r->ops->thread_model == REMOTE_SERIALIZE)
      pthread_mutex_lock (&r->serialize);
    r->ops->release (r->h);
    if (r->ops->thread_model == REMOTE_SERIALIZE)
      pthread_mutex_unlock (&r->serialize);
  }
  set_state (r, REMOTE_IDLE);
  log_info ("remote: disk %s: released parent %s", r->disk, r->url);
}

static int
call_serialized (struct remote *r, int (*fn) (struct remote *, void *, void *), void *arg)
{
  int ret;

  if (r->ops->thread_model == REMOTE_SERIALIZE)
    pthread_mutex_lock (&r->serialize);
  ret = fn (r, r->h, arg);
  if (r->ops->thread_model == REMOTE_SERIALIZE)
    pthread_mutex_unlock (&r->serialize);
  return ret;
}

struct write_args {
  const void *buf;
  size_t count;
  uint64_t offset, deadline_ns;
  int *err;
  bool all;                     /* flush: remote_flush_all */
};

static int
do_pwrite (struct remote *r, void *h, void *argp)
{
  struct write_args *a = argp;
  return r->ops->pwrite (r, h, a->buf, a->count, a->offset, a->deadline_ns, a->err);
}

static int
do_flush (struct remote *r, void *h, void *argp)
{
  struct write_args *a = argp;
  return r->ops->flush (r, h, a->all, a->deadline_ns, a->err);
}

static int
do_zero (struct remote *r, void *h, void *argp)
{
  struct write_args *a = argp;
  return r->ops->zero (r, h, a->offset, a->count, a->deadline_ns, a->err);
}

static int
do_make_writable (struct remote *r, void *h, void *argp)
{
  struct write_args *a = argp;
  return r->ops->make_writable (r, h, a->deadline_ns, a->err);
}

/* Retry fn with backoff until the deadline (the policy of remote_pread). */
static int
retry_write (struct remote *r, int (*fn) (struct remote *, void *, void *),
             struct write_args *a, const char *what)
{
  uint64_t delay = BACKOFF_MIN_NS;
  unsigned attempts = 0;

  if (!r->ops->pwrite) {
    *a->err = EROFS;
    log_error ("remote: disk %s: parent %s (%s) cannot be written", r->disk, r->url,
               r->ops->name);
    return -1;
  }
  /* A changed parent is not ours to write (as reads fail closed). */
  if (remote_status (r, NULL, 0) == REMOTE_CHANGED) {
    *a->err = ESTALE;
    return -1;
  }
  for (;;) {
    *a->err = 0;
    attempts++;
    if (call_serialized (r, fn, a) == 0) {
      set_state (r, REMOTE_CONNECTED);
      return 0;
    }
    assert (*a->err != 0);
    /* Not an error, and nothing to retry: the caller writes zeros. */
    if (fn == do_zero && *a->err == EOPNOTSUPP) {
      __atomic_store_n (&r->no_zero, 1, __ATOMIC_SEQ_CST);
      return -1;
    }
    pthread_mutex_lock (&r->lock);
    r->stats.errors++;
    r->stats.retries++;
    pthread_mutex_unlock (&r->lock);
    set_state (r, REMOTE_RETRYING);
    if (!is_retryable (*a->err) || !backoff (r, &delay, a->deadline_ns)) {
      log_msg (remote_is_cancelled (r) ? LOG_LVL_DEBUG : LOG_LVL_ERROR,
               "remote: disk %s: parent %s: %s at offset %" PRIu64 " failed after "
               "%u attempts: %s", r->disk, r->url, what, a->offset, attempts,
               strerror (*a->err));
      /* EOPNOTSUPP: a flush the parent cannot do (no NBD FLUSH), for the
       * caller to name. */
      if (*a->err != EROFS && *a->err != ENOSPC && *a->err != EOPNOTSUPP)
        *a->err = EIO;
      return -1;
    }
  }
}

int
remote_pwrite (struct remote *r, const void *buf, size_t count, uint64_t offset,
               uint64_t deadline_ns, int *err)
{
  struct write_args a = { buf, count, offset, deadline_ns, err, false };
  int ret;

  assert (count > 0);
  /* Before and after: a block-status question asked in between may
   * have seen either state (see struct zcache). */
  __atomic_fetch_add (&r->write_gen, 1, __ATOMIC_SEQ_CST);
  ret = retry_write (r, do_pwrite, &a, "write");
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
  struct write_args a = { NULL, count, offset, deadline_ns, err, false };
  bool can_zero = r->ops->zero && !__atomic_load_n (&r->no_zero, __ATOMIC_SEQ_CST);
  int ret = -1;

  assert (count > 0);
  __atomic_fetch_add (&r->write_gen, 1, __ATOMIC_SEQ_CST);
  if (can_zero)
    ret = retry_write (r, do_zero, &a, "zero");
  if (ret == -1 && (!can_zero || *err == EOPNOTSUPP)) {
    ret = 0;
    while (count > 0 && ret == 0) {
      size_t n = count > ZERO_PIECE ? ZERO_PIECE : count;
      a = (struct write_args) { zero_piece, n, offset, deadline_ns, err, false };
      ret = retry_write (r, do_pwrite, &a, "write");
      offset += n;
      count -= n;
    }
  }
  __atomic_fetch_add (&r->write_gen, 1, __ATOMIC_SEQ_CST);
  return ret;
}

void
remote_note_lost_writes (struct remote *r, uint64_t lost_ns)
{
  pthread_mutex_lock (&r->lock);
  if (lost_ns > r->lost_writes_ns)
    r->lost_writes_ns = lost_ns;
  r->lost_found_ns = now_ns ();
  pthread_mutex_unlock (&r->lock);
}

/* The backend reports a lost connection to one flush only (it clears its
 * mark), maybe not the one whose caller's writes were on it.  So a flush
 * also fails when a loss found by anyone may include writes issued since
 * since_ns, or, with since_ns UINT64_MAX (the caller cannot tell), when a
 * loss was found while this flush ran. */
static int
flush_checked (struct remote *r, bool all, uint64_t since_ns, uint64_t deadline_ns, int *err)
{
  struct write_args a = { NULL, 0, 0, deadline_ns, err, all };
  uint64_t start = now_ns (), lost_ns, found_ns;
  int ret = retry_write (r, do_flush, &a, "flush");

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

/* Ask an optional yes/no question of the backend (NULL op: no), under
 * the serialize lock where the backend needs it.  1, 0, or -1 with
 * *err. */
static int
ask (struct remote *r, int (*op) (struct remote *, void *, uint64_t, int *),
     uint64_t deadline_ns, int *err)
{
  int ret;

  if (!op)
    return 0;
  if (r->ops->thread_model == REMOTE_SERIALIZE)
    pthread_mutex_lock (&r->serialize);
  ret = op (r, r->h, deadline_ns, err);
  if (r->ops->thread_model == REMOTE_SERIALIZE)
    pthread_mutex_unlock (&r->serialize);
  return ret;
}

int
remote_flush_covers_all (struct remote *r, uint64_t deadline_ns, int *err)
{
  return ask (r, r->ops->flush_covers_all, deadline_ns, err);
}

int
remote_make_writable (struct remote *r, uint64_t deadline_ns, int *err)
{
  struct write_args a = { NULL, 0, 0, deadline_ns, err, false };
  if (!r->ops->make_writable) {
    *err = EROFS;
    remote_note_error (r, "%s parents are read-only: they cannot be merged into; use "
                       "flatten to make the disk standalone instead", r->ops->name);
    return -1;
  }
  return call_serialized (r, do_make_writable, &a);
}

void
remote_set_modifying (struct remote *r, bool modifying)
{
  pthread_mutex_lock (&r->lock);
  r->modifying = modifying;
  pthread_mutex_unlock (&r->lock);
}

/* Identify the parent on a connection of its own (never one a request is
 * using), retried until the deadline.  The size, or -1 with *err. */
static int64_t
identify_fresh (struct remote *r, const char *what, char *id, size_t len,
                uint64_t deadline_ns, int *err)
{
  int64_t size = size_retrying (r, id, len, deadline_ns, err);

  if (size >= 0 && !*id) {
    remote_note_error (r, "%s: the %s backend told no identity", what, r->ops->name);
    note_size_failed (r);
    *err = EPROTO;
    return -1;
  }
  return size;
}

static bool
is_changed (struct remote *r)
{
  pthread_mutex_lock (&r->lock);
  bool changed = r->state == REMOTE_CHANGED;
  pthread_mutex_unlock (&r->lock);
  return changed;
}

int
remote_verify (struct remote *r, const char *expected, uint64_t deadline_ns, int *err)
{
  char id[sizeof r->identity] = "";
  int ret = 0;

  if (is_changed (r)) {
    *err = ESTALE;
    return -1;
  }
  if (identify_fresh (r, "verify", id, sizeof id, deadline_ns, err) < 0)
    return -1;
  pthread_mutex_lock (&r->lock);
  if (expected && *expected) {
    /* The recorded identity is the pin from now on, whatever was pinned. */
    snprintf (r->identity, sizeof r->identity, "%s", expected);
    r->pinned = true;
  }
  if (!r->pinned) {
    snprintf (r->identity, sizeof r->identity, "%s", id);
    r->pinned = true;
  }
  else if (strcmp (r->identity, id) != 0) {
    log_error ("remote: disk %s: parent %s changed: pinned identity %s, now %s; "
               "refusing to mix data from two images", r->disk, r->url, r->identity, id);
    r->state = REMOTE_CHANGED;
    snprintf (r->last_error, sizeof r->last_error,
              "parent changed (pinned %s, found %s)", r->identity, id);
    *err = ESTALE;
    ret = -1;
  }
  pthread_mutex_unlock (&r->lock);
  return ret;
}

int
remote_repin (struct remote *r, bool accept_changed, uint64_t expect_size, char *identity,
              size_t len, uint64_t deadline_ns, int *err)
{
  char id[sizeof r->identity] = "";
  int64_t size;

  /* A parent found changed stays refused unless the caller means to take
   * a new one (activation, abort): a merge must not adopt a foreign
   * image that it would then write into. */
  if (!accept_changed && is_changed (r)) {
    *err = ESTALE;
    return -1;
  }
  /* Pooled connections are checked against the new pin when they next
   * reconnect: close the idle ones now.  The identity itself comes from
   * a connection of the backend's own, never from one that stayed open
   * (busy when we asked), which would tell no identity at all. */
  if (r->ops->release)
    r->ops->release (r->h);
  __atomic_fetch_add (&r->write_gen, 1, __ATOMIC_SEQ_CST);
  size = identify_fresh (r, "re-pin", id, sizeof id, deadline_ns, err);
  if (size < 0)
    return -1;
  if ((uint64_t) size != expect_size) {
    remote_note_error (r, "re-pin: the parent has %" PRId64 " bytes but the disk has %"
                       PRIu64 "; refusing a parent of another size", size, expect_size);
    *err = EMEDIUMTYPE;
    note_size_failed (r);
    return -1;
  }
  pthread_mutex_lock (&r->lock);
  snprintf (r->identity, sizeof r->identity, "%s", id);
  r->pinned = true;
  if (r->state == REMOTE_CHANGED) {
    r->state = REMOTE_IDLE;
    r->last_error[0] = '\0';
  }
  pthread_mutex_unlock (&r->lock);
  log_info ("remote: disk %s: parent %s pinned as %s", r->disk, r->url, id);
  snprintf (identity, len, "%s", id);
  return 0;
}

int
remote_parent_writable (struct remote *r, uint64_t deadline_ns, int *err)
{
  return ask (r, r->ops->parent_writable, deadline_ns, err);
}
