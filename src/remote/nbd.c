/* corfs: NBD parents through libnbd.
 *
 * Notes on the thread model: called from any thread concurrently.  A
 * parent's connections are the remote's pool (pool.c) of up to
 * cfg->connections slots (default 4); each request takes one slot for its
 * whole duration (one command in flight per libnbd handle), so
 * concurrent faults run in parallel on separate connections.  Reads are
 * safe on several connections whether or not the server offers
 * multi-conn: multi-conn only matters for cache consistency of writes.
 * A slot's handle and its write marks (struct rnbd_slot) belong to the
 * request that holds it; h->lock protects only h->size and is held for
 * nothing else.  No lock is held across a libnbd call (a block-status
 * question runs under the wrappers' zc.query; see wrapper-internal.h for
 * the module's order).
 *
 * libnbd has no timeouts of its own: every connect and command is issued
 * with the aio calls and driven by nbd_poll with a bounded timeout, in
 * slices of CANCEL_POLL_MS so that remote_cancel ends a connect, a
 * command or a block-status question at once (ECANCELED).  A connection
 * that times out or dies is closed (a libnbd handle cannot be revived)
 * and reconnected by the next request that takes its slot.
 *
 * Identity (docs/design.md rule 9): NBD has none, so each (re)connect reads a
 * few sampled 4 KiB blocks and hashes them with the size; the remote
 * wrapper compares the result with the pinned identity.  A re-pin asks
 * on a connection of its own outside the slots (rnbd_identify,
 * remote_pool_open_own), which no request can hold.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libnbd.h>

#include "common/log.h"
#include "common/util.h"
#include "remote/remote-internal.h"

#define DEFAULT_CONNECTIONS 4
#define SAMPLE_SIZE 4096
#define MAX_REQUEST (32 << 20)  /* nbdkit's and qemu's limit */

/* A slot's write marks (remote_conn.data), kept across reconnects: a
 * connection lost with unflushed writes fails the next flush. */
struct rnbd_slot {
  bool wrote;                   /* written since its last flush */
  bool lost_writes;             /* dropped while holding unflushed writes */
  uint64_t lost_ns;             /* when (now_ns), if lost_writes */
};

/* A slot's libnbd handle and marks (the slot is held by the caller). */
#define NBD(c) ((struct nbd_handle *) (c)->handle)
#define SLOT(c) ((struct rnbd_slot *) (c)->data)

struct rnbd {
  char *uri;
  struct remote_pool *pool;     /* the remote's (remote_pool_of) */
  uint64_t connect_timeout_ns, request_timeout_ns;
  pthread_mutex_t lock;         /* protects size */
  int64_t size;                 /* -1 until the first connect */
};

static bool
rnbd_handles (const char *url)
{
  return strncmp (url, "nbd://", 6) == 0 || strncmp (url, "nbds://", 7) == 0 ||
    strncmp (url, "nbd+unix://", 11) == 0 || strncmp (url, "nbds+unix://", 12) == 0;
}

static int
rnbd_open (struct remote *r, const struct remote_config *cfg, void **hp, int *err)
{
  struct rnbd *h;

  if (strstr (cfg->url, "+unix://") && !strstr (cfg->url, "socket=")) {
    log_error ("rnbd: disk %s: nbd+unix URL needs ?socket=PATH", cfg->disk);
    *err = EINVAL;
    return -1;
  }
  if (strncmp (cfg->url, "nbd://", 6) == 0 && (cfg->url[6] == '\0' || cfg->url[6] == '/')) {
    log_error ("rnbd: disk %s: nbd URL needs a host: nbd://HOST[:PORT]/EXPORT", cfg->disk);
    *err = EINVAL;
    return -1;
  }
  h = calloc (1, sizeof *h);
  if (!h) {
    *err = ENOMEM;
    return -1;
  }
  h->uri = strdup (cfg->url);
  h->pool = remote_pool_of (r);
  if (!h->uri) {
    free (h);
    *err = ENOMEM;
    return -1;
  }
  h->connect_timeout_ns = cfg->connect_timeout_ns;
  h->request_timeout_ns = cfg->request_timeout_ns;
  h->size = -1;
  pthread_mutex_init (&h->lock, NULL);
  *hp = h;
  return 0;
}

static void
rnbd_close (void *hv)
{
  struct rnbd *h = hv;

  /* (The pool closes the connections.) */
  pthread_mutex_destroy (&h->lock);
  free (h->uri);
  free (h);
}

static uint64_t
min_u64 (uint64_t a, uint64_t b)
{
  return a < b ? a : b;
}

/* Milliseconds until deadline, at least 1, at most INT_MAX-ish. */
static int
ms_until (uint64_t deadline_ns)
{
  uint64_t now = now_ns ();
  if (now >= deadline_ns)
    return 0;
  uint64_t ms = (deadline_ns - now + 999999) / 1000000;
  return ms > 1000000 ? 1000000 : (int) ms;
}

/* Close the connection of held slot c (the pool's conn_close). */
static void
drop_conn (struct remote_conn *c)
{
  struct rnbd_slot *s = SLOT (c);

  if (s->wrote) {
    s->lost_writes = true;      /* the next flush must fail */
    s->lost_ns = now_ns ();     /* every lost write returned before this */
    s->wrote = false;
  }
  if (c->handle) {
    nbd_close (NBD (c));
    c->handle = NULL;
  }
}

#define CANCEL_POLL_MS 100

/* Wait for cookie on c, bounded.  0 or -1 with *err (conn dropped on a
 * timeout or a dead connection). */
static int
conn_wait (struct remote *r, struct remote_conn *c, int64_t cookie, uint64_t deadline_ns,
           const char *what, uint64_t offset, int *err)
{
  for (;;) {
    int done = nbd_aio_command_completed (NBD (c), cookie);
    if (done == 1)
      return 0;
    if (done == -1) {
      *err = nbd_get_errno () ? nbd_get_errno () : EIO;
      remote_note_error (r, "%s at offset %" PRIu64 ": %s", what, offset, nbd_get_error ());
      if (nbd_aio_is_dead (NBD (c)) || nbd_aio_is_closed (NBD (c)))
        drop_conn (c);
      return -1;
    }
    int ms = ms_until (deadline_ns);
    if (remote_is_cancelled (r)) {
      *err = ECANCELED;
      remote_note_error (r, "%s at offset %" PRIu64 ": cancelled (shutting down)",
                         what, offset);
      drop_conn (c);
      return -1;
    }
    /* In slices, so that remote_cancel is noticed soon. */
    if (ms == 0 || nbd_poll (NBD (c), ms > CANCEL_POLL_MS ? CANCEL_POLL_MS : ms) == -1) {
      *err = ms == 0 ? ETIMEDOUT : EIO;
      remote_note_error (r, "%s at offset %" PRIu64 ": %s", what, offset,
                         ms == 0 ? "timed out" : nbd_get_error ());
      drop_conn (c);
      return -1;
    }
  }
}

/* Finish a command just issued on c (cookie from nbd_aio_*, -1 if it
 * could not be issued), bounded by deadline_ns.  0 or -1 with *err. */
static int
conn_finish (struct remote *r, struct remote_conn *c, int64_t cookie, uint64_t deadline_ns,
             const char *what, uint64_t offset, int *err)
{
  if (cookie == -1) {
    *err = nbd_get_errno () ? nbd_get_errno () : EIO;
    remote_note_error (r, "%s at offset %" PRIu64 ": %s", what, offset, nbd_get_error ());
    if (nbd_aio_is_dead (NBD (c)) || nbd_aio_is_closed (NBD (c)))
      drop_conn (c);
    return -1;
  }
  return conn_wait (r, c, cookie, deadline_ns, what, offset, err);
}

/* Run one read on connection c, bounded by deadline_ns.  On a timeout or a
 * dead connection, the connection is dropped.  0 or -1 with *err. */
static int
conn_pread (struct remote *r, struct remote_conn *c, void *buf, size_t count,
            uint64_t offset, uint64_t deadline_ns, int *err)
{
  return conn_finish (r, c, nbd_aio_pread (NBD (c), buf, count, offset, NBD_NULL_COMPLETION, 0),
                      deadline_ns, "read", offset, err);
}

/* FNV-1a: not for security, only to notice a different image. */
static uint64_t
fnv1a (uint64_t h, const void *data, size_t len)
{
  const unsigned char *p = data;
  for (size_t i = 0; i < len; i++) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

/* Connect c, bounded by the connect timeout and the deadline, and compute
 * the identity into id (size plus a hash of sampled blocks).  The size,
 * or -1 with *err (c dropped). */
static int64_t
conn_handshake (struct remote *r, struct rnbd *h, struct remote_conn *c, uint64_t deadline_ns,
                char *id, size_t idlen, int *err)
{
  uint64_t cdeadline = min_u64 (deadline_ns, now_ns () + h->connect_timeout_ns);
  unsigned char *sample;
  uint64_t hash = 0xcbf29ce484222325ULL;
  int64_t size;

  c->handle = nbd_create ();
  if (!c->handle) {
    *err = nbd_get_errno () ? nbd_get_errno () : ENOMEM;
    remote_note_error (r, "connect: %s", nbd_get_error ());
    return -1;
  }
  nbd_set_uri_allow_local_file (NBD (c), false);
  /* libnbd zeroes every read buffer first unless told not to: a memset
   * of each fetched byte (5% of a cold sequential read).  A buffer is
   * used only after its read succeeded, when libnbd has filled all of it
   * (holes in structured replies included). */
  nbd_set_pread_initialize (NBD (c), false);
  /* base:allocation lets the streamer skip zero extents. */
  nbd_add_meta_context (NBD (c), LIBNBD_CONTEXT_BASE_ALLOCATION);
  if (nbd_aio_connect_uri (NBD (c), h->uri) == -1)
    goto err;
  while (nbd_aio_is_connecting (NBD (c))) {
    int ms = ms_until (cdeadline);
    if (ms == 0 || remote_is_cancelled (r)) {
      *err = ms == 0 ? ETIMEDOUT : ECANCELED;
      remote_note_error (r, "connect: %s", ms == 0 ? "timed out" : "cancelled (shutting down)");
      drop_conn (c);
      return -1;
    }
    /* In slices, so that remote_cancel is noticed soon. */
    if (nbd_poll (NBD (c), ms > CANCEL_POLL_MS ? CANCEL_POLL_MS : ms) == -1)
      goto err;
  }
  if (!nbd_aio_is_ready (NBD (c))) {
    *err = ECONNREFUSED;
    remote_note_error (r, "connect: %s", nbd_get_error () ? nbd_get_error () : "handshake failed");
    drop_conn (c);
    return -1;
  }
  size = nbd_get_size (NBD (c));
  if (size < 0)
    goto err;
  if (remote_check_size (r, "NBD handshake", size, err) == -1) {
    drop_conn (c);
    return -1;
  }

  /* Identity: size plus a hash of sampled blocks. */
  sample = malloc (SAMPLE_SIZE);
  if (!sample) {
    *err = ENOMEM;
    drop_conn (c);
    return -1;
  }
  {
    uint64_t offs[3] = { 0, (size / 2) & ~(uint64_t) (SAMPLE_SIZE - 1),
                         size > SAMPLE_SIZE ? (size - SAMPLE_SIZE) & ~(uint64_t) (SAMPLE_SIZE - 1) : 0 };
    for (int i = 0; i < 3 && size > 0; i++) {
      size_t n = min_u64 (SAMPLE_SIZE, size - offs[i]);
      if (conn_pread (r, c, sample, n, offs[i], cdeadline, err) == -1) {
        free (sample);
        drop_conn (c);
        return -1;
      }
      hash = fnv1a (hash, sample, n);
    }
  }
  free (sample);
  snprintf (id, idlen, "nbd:size=%" PRId64 ",sample=%016" PRIx64, size, hash);
  return size;

 err:
  *err = nbd_get_errno () ? nbd_get_errno () : ECONNREFUSED;
  remote_note_error (r, "connect: %s", nbd_get_error ());
  drop_conn (c);
  return -1;
}

/* The pool's conn_open: connect c (conn_handshake); with id NULL, check
 * its identity against the pin.  The size, or -1 with *err. */
static int64_t
rnbd_conn_open (struct remote *r, void *hv, struct remote_conn *c, char *id, size_t len,
                uint64_t deadline_ns, int *err)
{
  struct rnbd *h = hv;
  char own[128];
  int64_t size = conn_handshake (r, h, c, deadline_ns, id ? id : own,
                                 id ? len : sizeof own, err);

  if (size < 0 || id)
    return size;
  if (remote_check_identity (r, own, err) == -1) {
    drop_conn (c);
    return -1;
  }
  pthread_mutex_lock (&h->lock);
  h->size = size;
  pthread_mutex_unlock (&h->lock);
  remote_note_connected (r, c->ever_connected);
  return size;
}

static unsigned
rnbd_pool_slots (const struct remote_config *cfg)
{
  return cfg->connections ? cfg->connections : DEFAULT_CONNECTIONS;
}

/* A connected slot, or NULL with *err (nothing held). */
static struct remote_conn *
acquire_connected (struct remote *r, struct rnbd *h, uint64_t deadline_ns, int *err)
{
  return remote_pool_take (h->pool, r, h, deadline_ns, err);
}

static void
release (struct rnbd *h, struct remote_conn *c)
{
  remote_pool_return (h->pool, c);
}

static int64_t
rnbd_get_size (struct remote *r, void *hv, uint64_t deadline_ns, int *err)
{
  struct rnbd *h = hv;
  struct remote_conn *c = acquire_connected (r, h, deadline_ns, err);
  int64_t size;

  if (!c)
    return -1;
  release (h, c);
  pthread_mutex_lock (&h->lock);
  size = h->size;
  pthread_mutex_unlock (&h->lock);
  return size;
}

static int
rnbd_pread (struct remote *r, void *hv, void *buf, size_t count,
            uint64_t offset, uint64_t deadline_ns, int *err)
{
  struct rnbd *h = hv;
  struct remote_conn *c = acquire_connected (r, h, deadline_ns, err);
  int ret = 0;

  if (!c)
    return -1;
  /* One request may not exceed the server's maximum. */
  while (count > 0 && ret == 0) {
    size_t n = count > MAX_REQUEST ? MAX_REQUEST : count;
    ret = conn_pread (r, c, buf, n, offset,
                      min_u64 (deadline_ns, now_ns () + h->request_timeout_ns), err);
    buf = (char *) buf + n;
    offset += n;
    count -= n;
  }
  release (h, c);
  return ret;
}

struct bs_ctx {
  struct remote_extent **v;
  size_t *n;
  uint64_t end;                 /* of what was covered so far */
  int err;
};

static int
bs_extent (void *user_data, const char *metacontext, uint64_t offset,
           uint32_t *entries, size_t nr_entries, int *error)
{
  struct bs_ctx *ctx = user_data;

  if (strcmp (metacontext, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0)
    return 0;
  for (size_t i = 0; i + 1 < nr_entries; i += 2) {
    /* Only STATE_ZERO promises zeros; a hole alone does not (rule 6). */
    if ((entries[i + 1] & LIBNBD_STATE_ZERO) &&
        remote_extent_append (ctx->v, ctx->n, offset, entries[i]) == -1)
      ctx->err = ENOMEM;
    offset += entries[i];
  }
  if (offset > ctx->end)
    ctx->end = offset;
  return 0;
}

/* Block status, looping because a reply may cover less than asked. */
static int
rnbd_zero_extents (struct remote *r, void *hv, uint64_t offset, uint64_t count,
                   uint64_t deadline_ns, struct remote_extent **v, size_t *n,
                   int *err)
{
  struct rnbd *h = hv;
  struct remote_conn *c = acquire_connected (r, h, deadline_ns, err);
  uint64_t end = offset + count;
  int ret = 0;

  if (!c)
    return -1;
  if (nbd_can_meta_context (NBD (c), LIBNBD_CONTEXT_BASE_ALLOCATION) != 1)
    goto out;                   /* the server cannot tell */
  while (offset < end && ret == 0) {
    struct bs_ctx ctx = { v, n, offset, 0 };
    uint64_t len = end - offset > (1U << 30) ? (1U << 30) : end - offset;
    int64_t cookie = nbd_aio_block_status (NBD (c), len, offset,
                                           (nbd_extent_callback) { .callback = bs_extent,
                                                                   .user_data = &ctx },
                                           NBD_NULL_COMPLETION, 0);
    if (cookie == -1) {
      *err = nbd_get_errno () ? nbd_get_errno () : EIO;
      ret = -1;
      break;
    }
    /* The request's own deadline, once: recomputed after each poll it
     * would move on and the request timeout would never apply. */
    uint64_t rdeadline = min_u64 (deadline_ns, now_ns () + h->request_timeout_ns);
    for (;;) {
      int done = nbd_aio_command_completed (NBD (c), cookie);
      if (done == 1)
        break;
      if (done == -1) {
        *err = nbd_get_errno () ? nbd_get_errno () : EIO;
        ret = -1;
        break;
      }
      if (remote_is_cancelled (r)) {
        *err = ECANCELED;
        drop_conn (c);
        ret = -1;
        break;
      }
      /* In slices, so that remote_cancel is noticed soon. */
      int ms = ms_until (rdeadline);
      if (ms == 0 || nbd_poll (NBD (c), ms > CANCEL_POLL_MS ? CANCEL_POLL_MS : ms) == -1) {
        *err = ms == 0 ? ETIMEDOUT : EIO;
        drop_conn (c);
        ret = -1;
        break;
      }
    }
    if (ret == 0 && ctx.err) {
      *err = ctx.err;
      ret = -1;
    }
    if (ret == 0 && ctx.end <= offset) {
      *err = EPROTO;            /* no progress: a broken server */
      ret = -1;
    }
    offset = ctx.end;
  }
  if (ret == -1)
    remote_note_error (r, "block status at offset %" PRIu64 ": %s", offset, strerror (*err));
 out:
  if (NBD (c) && (nbd_aio_is_dead (NBD (c)) || nbd_aio_is_closed (NBD (c))))
    drop_conn (c);
  release (h, c);
  return ret;
}

/* Close idle connections (remote_release, remote_repin). */
static void
rnbd_release (void *hv)
{
  struct rnbd *h = hv;

  remote_pool_close_idle (h->pool);
}

static int
rnbd_pwrite (struct remote *r, void *hv, const void *buf, size_t count,
             uint64_t offset, uint64_t deadline_ns, int *err)
{
  struct rnbd *h = hv;
  /* Any free connection: writes in parallel (merge copies several pieces
   * at once), and the flush goes to every connection that wrote, so it
   * covers them whether or not the server offers multi-conn. */
  struct remote_conn *c = acquire_connected (r, h, deadline_ns, err);
  int ret = 0;

  if (!c)
    return -1;
  if (nbd_is_read_only (NBD (c)) == 1) {
    *err = EROFS;
    remote_note_error (r, "write: the NBD export is read-only");
    release (h, c);
    return -1;
  }
  while (count > 0 && ret == 0) {
    size_t n = count > MAX_REQUEST ? MAX_REQUEST : count;
    ret = conn_finish (r, c, nbd_aio_pwrite (NBD (c), buf, n, offset, NBD_NULL_COMPLETION, 0),
                       min_u64 (deadline_ns, now_ns () + h->request_timeout_ns),
                       "write", offset, err);
    buf = (const char *) buf + n;
    offset += n;
    count -= n;
  }
  /* A write on a dropped connection may or may not have landed: the next
   * flush must not vouch for it, so report the error (the caller keeps
   * the block dirty and writes it again). */
  if (ret == 0)
    SLOT (c)->wrote = true;
  release (h, c);
  return ret;
}

/* WRITE_ZEROES, in pieces the server accepts (the protocol's length is
 * 32 bits); the server may punch holes.  EOPNOTSUPP where it offers no
 * zeroing (the wrapper then writes zeros). */
#define MAX_ZERO (1ULL << 30)

static int
rnbd_zero (struct remote *r, void *hv, uint64_t offset, uint64_t count,
           uint64_t deadline_ns, int *err)
{
  struct rnbd *h = hv;
  struct remote_conn *c = acquire_connected (r, h, deadline_ns, err);
  int ret = 0;

  if (!c)
    return -1;
  if (nbd_is_read_only (NBD (c)) == 1 || nbd_can_zero (NBD (c)) != 1) {
    *err = nbd_is_read_only (NBD (c)) == 1 ? EROFS : EOPNOTSUPP;
    release (h, c);
    return -1;
  }
  while (count > 0 && ret == 0) {
    uint64_t n = count > MAX_ZERO ? MAX_ZERO : count;
    ret = conn_finish (r, c, nbd_aio_zero (NBD (c), n, offset, NBD_NULL_COMPLETION, 0),
                       min_u64 (deadline_ns, now_ns () + h->request_timeout_ns),
                       "zero", offset, err);
    offset += n;
    count -= n;
  }
  if (ret == 0)
    SLOT (c)->wrote = true;            /* as a write: only a flush makes it stable */
  release (h, c);
  return ret;
}

/* One FLUSH on connected connection c.  0 or -1 with *err. */
static int
conn_flush (struct remote *r, struct rnbd *h, struct remote_conn *c, uint64_t deadline_ns,
            int *err)
{
  if (conn_finish (r, c, nbd_aio_flush (NBD (c), NBD_NULL_COMPLETION, 0),
                   min_u64 (deadline_ns, now_ns () + h->request_timeout_ns),
                   "flush", 0, err) == 0)
    return 0;
  if (!*err)
    *err = EIO;
  return -1;
}

/* Flush every connection that wrote since its last flush.  One whose
 * connection dropped with unflushed writes fails the flush (ESTALE, not
 * retried): what it wrote may not be stable, and the caller must write
 * those blocks again.  Every connection is visited even after a failure,
 * so that a lost connection fails one flush, not every later one; and
 * ESTALE wins over any other error, because the lost connection is
 * reported only here: a retried flush would no longer see it.  The flag
 * is cleared by the flush that finds it, but the loss is passed to the
 * wrapper with the time of the drop (remote_note_lost_writes), which
 * fails every flush whose caller wrote since before then, whoever found
 * it (a concurrent flusher's writes may have been on that connection
 * too).  A connection that wrote on a server that offers no flush fails every
 * flush (EOPNOTSUPP, not retried) and stays marked: nothing can make
 * those writes stable.  With all, success means at least one flush was
 * sent, on a connection opened for it if none is (with multi-conn, see
 * rnbd_flush_covers_all, that one covers every connection's writes,
 * earlier daemons' included); a server that offers no flush fails it
 * (EOPNOTSUPP). */
static int
rnbd_flush (struct remote *r, void *hv, bool all, uint64_t deadline_ns, int *err)
{
  struct rnbd *h = hv;
  int first_err = 0;
  bool lost = false, sent = false;

  for (unsigned i = 0; i < remote_pool_slots (h->pool); i++) {
    int e = 0;
    struct remote_conn *c = remote_pool_take_slot (h->pool, i, deadline_ns, &e);

    if (!c) {
      if (!first_err)
        first_err = e;          /* ETIMEDOUT: busy until the deadline */
      continue;
    }
    if (SLOT (c)->lost_writes) {
      SLOT (c)->lost_writes = false;
      remote_note_error (r, "flush: a connection that wrote was lost before its flush");
      remote_note_lost_writes (r, SLOT (c)->lost_ns);
      lost = true;
    }
    else if (SLOT (c)->wrote && NBD (c) && nbd_can_flush (NBD (c)) != 1) {
      /* Nothing can make these writes stable: fail, and keep c->wrote
       * so that every later flush fails too (the caller keeps its blocks
       * dirty), rather than vouch for them. */
      remote_note_error (r, "flush: the NBD server offers no flush: what was written "
                         "cannot be made durable");
      e = EOPNOTSUPP;
    }
    else if ((SLOT (c)->wrote || (all && !sent)) && NBD (c) && nbd_can_flush (NBD (c)) == 1) {
      if (conn_flush (r, h, c, deadline_ns, &e) == 0) {
        SLOT (c)->wrote = false;
        sent = true;
      }
    }
    release (h, c);
    if (e && !first_err)
      first_err = e;
  }
  if (all && !sent && !lost && !first_err) {
    int e = 0;
    struct remote_conn *c = acquire_connected (r, h, deadline_ns, &e);
    if (c) {
      if (nbd_can_flush (NBD (c)) != 1) {
        /* Nothing can make the parent's data stable: say so, rather
         * than vouch for it. */
        remote_note_error (r, "flush: the NBD server offers no flush");
        e = EOPNOTSUPP;
      }
      else
        conn_flush (r, h, c, deadline_ns, &e);
      release (h, c);
    }
    first_err = e;
  }
  if (!lost && !first_err)
    return 0;
  *err = lost ? ESTALE : first_err;
  return -1;
}

static int
rnbd_make_writable (struct remote *r, void *hv, uint64_t deadline_ns, int *err)
{
  struct rnbd *h = hv;
  struct remote_conn *c = remote_pool_take_slot (h->pool, 0, deadline_ns, err);
  int ret = 0;

  if (!c)
    return -1;
  if (remote_pool_open (h->pool, r, h, c, deadline_ns, err) == -1)
    ret = -1;
  else if (nbd_is_read_only (NBD (c)) == 1) {
    *err = EROFS;
    remote_note_error (r, "the NBD export is read-only: it cannot be merged into");
    ret = -1;
  }
  release (h, c);
  return ret;
}

/* Ask on a new connection: a pooled one may belong to a server that has
 * since been restarted (read-only or not), and nothing has noticed yet. */
static int
rnbd_parent_writable (struct remote *r, void *hv, uint64_t deadline_ns, int *err)
{
  struct rnbd *h = hv;
  struct remote_conn c;
  int ret = -1;

  if (remote_pool_open_own (h->pool, r, h, &c, NULL, 0, deadline_ns, err) >= 0)
    ret = nbd_is_read_only (NBD (&c)) == 0;
  remote_pool_close_own (h->pool, &c);
  return ret;
}

/* On a connection of its own: the pool's may all be busy, and one that
 * stayed connected would tell nothing about the server now. */
static int64_t
rnbd_identify (struct remote *r, void *hv, uint64_t deadline_ns, char *id, size_t len,
               int *err)
{
  struct rnbd *h = hv;
  struct remote_conn c;
  int64_t size = remote_pool_open_own (h->pool, r, h, &c, id, len, deadline_ns, err);

  remote_pool_close_own (h->pool, &c);
  return size;
}

/* A flush on one connection covers the writes of every connection only
 * when the server advertises multi-conn (NBD protocol); without flush
 * support there is no way to make anything stable. */
static int
rnbd_flush_covers_all (struct remote *r, void *hv, uint64_t deadline_ns, int *err)
{
  struct rnbd *h = hv;
  struct remote_conn *c = acquire_connected (r, h, deadline_ns, err);
  int ret;

  if (!c)
    return -1;
  ret = nbd_can_multi_conn (NBD (c)) == 1 && nbd_can_flush (NBD (c)) == 1;
  release (h, c);
  return ret;
}

const struct remote_ops rnbd_ops = {
  .parent_writable = rnbd_parent_writable,
  .pwrite = rnbd_pwrite,
  .zero = rnbd_zero,
  .flush = rnbd_flush,
  .flush_covers_all = rnbd_flush_covers_all,
  .make_writable = rnbd_make_writable,
  .zero_extents = rnbd_zero_extents,
  .release = rnbd_release,
  .name = "nbd",
  .handles = rnbd_handles,
  .open = rnbd_open,
  .close = rnbd_close,
  .get_size = rnbd_get_size,
  .identify = rnbd_identify,
  .pread = rnbd_pread,
  .pool_slots = rnbd_pool_slots,
  .conn_data_size = sizeof (struct rnbd_slot),
  .conn_open = rnbd_conn_open,
  .conn_close = drop_conn,
};
