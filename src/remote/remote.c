/* corfs: the remote wrappers (see remote.h): opening a remote and its
 * pool, the parent's state, last error and counters for status, the
 * first pin and the check on every (re)connect, cancel and release, and
 * the backend's yes/no questions.  The retry loop and the data wrappers
 * are in retry.c, verify and re-pin in pin.c, block status in extents.c.
 *
 * Notes on the thread model: any thread may call the wrappers at any
 * time; see wrapper-internal.h for the locks and their order.
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
#include "remote/sources-internal.h"
#include "remote/wrapper-internal.h"

static const struct remote_ops *backends[] = { &rfile_ops, &rnbd_ops, &rhttp_ops, &rnfs_ops, NULL };

/* The pool of r's connections, from the registry (see remote_pool_key:
 * today every disk gets a pool of its own).  0 or -1 with *err. */
static int
open_pool (struct remote *r, const struct remote_config *cfg, int *err)
{
  char *key = remote_pool_key (cfg, r->ops->name);
  int ret = key ? remote_pool_get (key, r->ops, r->ops->pool_slots (cfg), &r->pool) : -1;

  free (key);
  if (ret == -1)
    *err = ENOMEM;
  return ret;
}

struct remote_pool *
remote_pool_of (const struct remote *r)
{
  return r->pool;
}

static int remote_open_as (const struct remote_config *cfg, const struct remote_ops *ops,
                           struct remote **rp);

int
remote_open (const struct remote_config *cfg, struct remote **rp)
{
  const struct remote_ops *ops = NULL;

  /* A source set takes its URL from its first source (messages, status). */
  if (cfg->nr_sources > 0) {
    struct remote_config c = *cfg;
    c.url = cfg->sources[0].url;
    return remote_open_as (&c, &rsources_ops, rp);
  }
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
  return remote_open_as (cfg, ops, rp);
}

/* remote_open with the backend chosen. */
static int
remote_open_as (const struct remote_config *cfg, const struct remote_ops *ops,
                struct remote **rp)
{
  struct remote *r;
  uint64_t a, b, c;
  int err = 0;

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
  remote_zcache_init (&r->zc);
  /* A set pins only its own kind of identity (see remote_config). */
  if (cfg->pinned_identity && *cfg->pinned_identity &&
      (ops != &rsources_ops || sfp_parse (cfg->pinned_identity, &a, &b, &c) == 0)) {
    snprintf (r->identity, sizeof r->identity, "%s", cfg->pinned_identity);
    r->pinned = true;
  }
  if (ops->conn_open && open_pool (r, cfg, &err) == -1)
    goto err_destroy;
  if (ops->open (r, cfg, &r->h, &err) == -1) {
    assert (err != 0);
    goto err_destroy;
  }
  *rp = r;
  return 0;

 err_destroy:
  remote_pool_put (r->pool);
  pthread_mutex_destroy (&r->lock);
  remote_zcache_destroy (&r->zc);
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
  remote_pool_put (r->pool);
  pthread_mutex_destroy (&r->lock);
  remote_zcache_destroy (&r->zc);
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

bool
remote_is_changed (struct remote *r)
{
  pthread_mutex_lock (&r->lock);
  bool changed = r->state == REMOTE_CHANGED;
  pthread_mutex_unlock (&r->lock);
  return changed;
}

void
remote_note_size_failed (struct remote *r)
{
  pthread_mutex_lock (&r->lock);
  r->size_failed = true;
  pthread_mutex_unlock (&r->lock);
}

void
remote_set_state (struct remote *r, enum remote_state s)
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

void
remote_cancel (struct remote *r)
{
  if (!r || __atomic_exchange_n (&r->cancelled, 1, __ATOMIC_SEQ_CST))
    return;
  if (r->ops->cancel)
    r->ops->cancel (r->h);
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
    r->ops->release (r->h);
  }
  remote_set_state (r, REMOTE_IDLE);
  log_info ("remote: disk %s: released parent %s", r->disk, r->url);
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

/* Ask an optional yes/no question of the backend (NULL op: no); not
 * retried.  1, 0, or -1 with *err. */
static int
ask (struct remote *r, int (*op) (struct remote *, void *, uint64_t, int *),
     uint64_t deadline_ns, int *err)
{
  return op ? op (r, r->h, deadline_ns, err) : 0;
}

int
remote_flush_covers_all (struct remote *r, uint64_t deadline_ns, int *err)
{
  return ask (r, r->ops->flush_covers_all, deadline_ns, err);
}

int
remote_make_writable (struct remote *r, uint64_t deadline_ns, int *err)
{
  if (!r->ops->make_writable) {
    *err = EROFS;
    remote_note_error (r, "%s parents are read-only: they cannot be merged into; use "
                       "flatten to make the disk standalone instead", r->ops->name);
    return -1;
  }
  return r->ops->make_writable (r, r->h, deadline_ns, err);
}

void
remote_set_modifying (struct remote *r, bool modifying)
{
  pthread_mutex_lock (&r->lock);
  r->modifying = modifying;
  pthread_mutex_unlock (&r->lock);
}

int
remote_parent_writable (struct remote *r, uint64_t deadline_ns, int *err)
{
  return ask (r, r->ops->parent_writable, deadline_ns, err);
}

void
remote_set_single_attempt (struct remote *r)
{
  r->single_attempt = true;
}

size_t
remote_nr_sources (struct remote *r)
{
  return r->ops == &rsources_ops ? rsources_count (r->h) : 0;
}

void
remote_source_info (struct remote *r, size_t i, struct remote_source_info *si)
{
  rsources_info (r->h, i, si);
}

bool
remote_identity_is_set (const char *id)
{
  uint64_t a, b, c;

  return id && sfp_parse (id, &a, &b, &c) == 0;
}

int
remote_sources_add (struct remote *r, const struct remote_config *src, uint64_t deadline_ns,
                    char *why, size_t len)
{
  if (r->ops != &rsources_ops) {
    snprintf (why, len, "the disk has one parent, not a source set: remount it with its "
              "sources (--disk NAME=URL given once per source)");
    return -1;
  }
  return rsources_add (r->h, src, deadline_ns, why, len);
}

int
remote_sources_remove (struct remote *r, const char *url, char *why, size_t len)
{
  if (r->ops != &rsources_ops) {
    snprintf (why, len, "the disk has one parent, not a source set");
    return -1;
  }
  return rsources_remove (r->h, url, why, len);
}

void
remote_set_source_notify (struct remote *r,
                          void (*fn) (void *opaque, const char *event, const char *url,
                                      const char *why),
                          void *opaque)
{
  if (r->ops == &rsources_ops)
    rsources_set_notify (r->h, fn, opaque);
}
