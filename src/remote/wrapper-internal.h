/* corfs: the remote wrappers' own state, shared by their files
 * (remote.c: open, state, identity notes; retry.c: the retry loop and
 * the data wrappers; pin.c: verify and re-pin; extents.c: block status).
 * Backends never include this: they see a remote only through
 * remote-internal.h.
 *
 * Notes on the thread model: any thread may call the wrappers at any
 * time.  r->lock protects the state, the last error, the identity, the
 * counters and the lost-write times; it is held only briefly, never
 * across a backend call, and nothing is taken under it (backends call
 * remote_note_error and remote_check_identity with their own locks held,
 * so it must stay a leaf).  The block-status cache has its own two locks
 * (struct zcache): zc.query is held across the block-status question to
 * the backend so that concurrent misses ask once; zc.lock only while the
 * cache is read or replaced.
 *
 * Lock order in the module, outermost first (the engine calls in holding
 * at most d->owner_lock, see remote.h):
 *   zc.query -> zc.lock
 *   zc.query -> a backend's locks (file: fd_lock -> lock; nbd, nfs,
 *               http: h->lock) or the pool lock -> r->lock
 * The pool lock and the backends' h->lock never nest in each other.
 */
#ifndef CORFS_WRAPPER_INTERNAL_H
#define CORFS_WRAPPER_INTERNAL_H

#include <pthread.h>

#include "common/log.h"
#include "remote/remote-internal.h"

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
  struct remote_pool *pool;     /* connections (NULL: the backend has none) */
  char *url;                    /* redacted */
  char *disk;
  pthread_mutex_t lock;         /* protects the fields below */
  enum remote_state state;
  char last_error[1280];
  char identity[512];
  bool pinned;
  bool modifying;               /* our writes may change the identity */
  bool size_failed;             /* the last error is a size/identity question's */
  int cancelled;                /* atomic: remote_cancel was called */
  bool single_attempt;          /* a set's source: never retried (set once,
                                   before any request) */
  struct remote_stats stats;
  struct log_ratelimit rl;
  uint64_t size;                /* atomic: the last size the parent gave, 0 before */
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

/* Set the state, unless the parent was found changed (remote.c). */
void remote_set_state (struct remote *r, enum remote_state s);
bool remote_is_changed (struct remote *r);

/* Size questions (retry.c): the backend's get_size, or with id non-NULL
 * its identify, retried with backoff until deadline_ns; the answer is
 * kept in r->size.  The size, or -1 with *err. */
int64_t remote_size_retrying (struct remote *r, char *id, size_t len, uint64_t deadline_ns,
                              int *err);
/* A size question failed: the last error is its (cleared by the next
 * answer). */
void remote_note_size_failed (struct remote *r);

/* extents.c */
void remote_zcache_init (struct zcache *zc);
void remote_zcache_destroy (struct zcache *zc);

#endif
