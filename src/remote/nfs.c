/* corfs: NFS parents through libnfs (nfs://server/export/path/file with
 * libnfs's URL arguments, e.g. ?version=3&nfsport=N&mountport=M or
 * ?version=4&nfsport=N).
 *
 * Notes on the thread model: called from any thread concurrently.
 * libnfs contexts are not thread-safe, so a parent's connections are the
 * remote's pool (pool.c) of NR_CTX contexts, each mounted with the file
 * open, used by one request at a time (the request holds its slot).
 * h->lock protects h->size only; h->writable is atomic.  No lock is held
 * across a libnfs call (the pool lock is a leaf, see pool.c).  Each sync
 * call is bounded by nfs_set_timeout; a context that fails is destroyed
 * and re-created by the next request that takes its slot.
 *
 * Writes (merge into an owned parent) go over NFSv3 only, with the file
 * opened O_SYNC so that every WRITE is FILE_SYNC: Debian 12's libnfs 4.0
 * cannot write over NFSv4 (its compound encode buffer is 4 KiB) and its
 * COMMIT does not compare write verifiers, so unstable writes plus COMMIT
 * could lose data silently across a server restart.
 *
 * Identity: size plus the fileid (st_ino).  docs/design.md asks for the file
 * handle, which libnfs 4.0 does not expose; the fileid names the file
 * within the export, and the size and sampled checks of the wrapper do
 * the rest.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nfsc/libnfs.h>

#include "common/log.h"
#include "common/util.h"
#include "remote/remote-internal.h"

#define NR_CTX 4

/* One connection (remote_conn.handle): a mounted context, the file open. */
struct rnfs_ctx {
  struct nfs_context *nfs;
  struct nfsfh *fh;
  bool writable;                /* fh opened O_RDWR|O_SYNC */
};

#define CTX(c) ((struct rnfs_ctx *) (c)->handle)

struct rnfs {
  char *url;
  bool v4;
  bool writable;                /* atomic: make_writable sets it */
  struct remote_pool *pool;     /* the remote's (remote_pool_of) */
  uint64_t connect_timeout_ns, request_timeout_ns;
  pthread_mutex_t lock;         /* protects size */
  int64_t size;
};

static bool
rnfs_handles (const char *url)
{
  return strncmp (url, "nfs://", 6) == 0;
}

static int
rnfs_open (struct remote *r, const struct remote_config *cfg, void **hp, int *err)
{
  struct rnfs *h;
  const char *p = cfg->url + 6;

  if (!*p || *p == '/' || !strchr (p, '/')) {
    log_error ("rnfs: disk %s: NFS URL must be nfs://SERVER/EXPORT/PATH/FILE", cfg->disk);
    *err = EINVAL;
    return -1;
  }
  h = calloc (1, sizeof *h);
  if (!h || !(h->url = strdup (cfg->url))) {
    free (h);
    *err = ENOMEM;
    return -1;
  }
  h->v4 = strstr (cfg->url, "version=4") != NULL;
  h->writable = cfg->writable && !h->v4;
  h->connect_timeout_ns = cfg->connect_timeout_ns;
  h->request_timeout_ns = cfg->request_timeout_ns;
  h->size = -1;
  h->pool = remote_pool_of (r);
  pthread_mutex_init (&h->lock, NULL);
  *hp = h;
  return 0;
}

static void
drop_ctx (struct rnfs_ctx *c)
{
  if (c->nfs) {
    if (c->fh)
      nfs_close (c->nfs, c->fh);
    nfs_destroy_context (c->nfs);
  }
  c->nfs = NULL;
  c->fh = NULL;
}

/* The pool's conn_close. */
static void
rnfs_conn_close (struct remote_conn *c)
{
  if (c->handle)
    drop_ctx (CTX (c));
  free (c->handle);
  c->handle = NULL;
}

static void
rnfs_close (void *hv)
{
  struct rnfs *h = hv;

  /* (The pool closes the contexts.) */
  pthread_mutex_destroy (&h->lock);
  free (h->url);
  free (h);
}

static int
ms_of (uint64_t ns)
{
  uint64_t ms = ns / 1000000;
  return ms < 100 ? 100 : ms > 600000 ? 600000 : (int) ms;
}

/* Bound the next sync call on c by min(deadline, now + limit).  false
 * if the deadline has passed. */
static bool
bound_call (struct rnfs_ctx *c, uint64_t deadline_ns, uint64_t limit_ns)
{
  uint64_t now = now_ns (), left;

  if (now >= deadline_ns)
    return false;
  left = deadline_ns - now;
  nfs_set_timeout (c->nfs, ms_of (left < limit_ns ? left : limit_ns));
  return true;
}

/* Mount and open on context c, and compute the identity into id.  The
 * size, or -1 with *err (c dropped). */
static int64_t
ctx_open (struct remote *r, struct rnfs *h, struct rnfs_ctx *c, uint64_t deadline_ns,
          char *id, size_t idlen, int *err)
{
  struct nfs_url *u;
  struct nfs_stat_64 st;
  int rc;

  c->nfs = nfs_init_context ();
  if (!c->nfs) {
    *err = ENOMEM;
    return -1;
  }
  if (!bound_call (c, deadline_ns, h->connect_timeout_ns)) {
    *err = ETIMEDOUT;
    drop_ctx (c);
    return -1;
  }
  {
    /* libnfs 4.0 names every NFSv4 client "Libnfs pid:PID TIME": two
     * contexts opened in the same second look like one client rebooting,
     * and the server expires the first one's state (NFS4ERR_EXPIRED).
     * Give each context its own name and verifier. */
    static uint64_t serial;
    uint64_t n = __atomic_add_fetch (&serial, 1, __ATOMIC_SEQ_CST);
    char name[128], verf[9];
    snprintf (name, sizeof name, "corfs pid:%d ctx:%" PRIu64 " t:%" PRIu64,
              (int) getpid (), n, now_ns ());
    snprintf (verf, sizeof verf, "%08" PRIx64, (uint64_t) ((n * 0x9e3779b97f4a7c15ULL) >> 32));
    nfs4_set_client_name (c->nfs, name);
    nfs4_set_verifier (c->nfs, verf);
  }
  u = nfs_parse_url_full (c->nfs, h->url);
  if (!u) {
    *err = EINVAL;
    remote_note_error (r, "bad NFS URL: %s", nfs_get_error (c->nfs));
    drop_ctx (c);
    return -1;
  }
  rc = nfs_mount (c->nfs, u->server, u->path);
  if (rc == 0) {
    c->writable = __atomic_load_n (&h->writable, __ATOMIC_SEQ_CST);
    rc = nfs_open (c->nfs, u->file, c->writable ? O_RDWR | O_SYNC : O_RDONLY, &c->fh);
  }
  if (rc == 0)
    rc = nfs_fstat64 (c->nfs, c->fh, &st);
  if (rc < 0) {
    *err = -rc == ETIMEDOUT ? ETIMEDOUT : -rc == EACCES || -rc == ENOENT ? -rc : ECONNREFUSED;
    remote_note_error (r, "mount/open: %s", nfs_get_error (c->nfs));
    nfs_destroy_url (u);
    drop_ctx (c);
    return -1;
  }
  nfs_destroy_url (u);
  /* The size is a uint64 on the wire: one above REMOTE_MAX_SIZE would be
   * negative as an int64. */
  if (remote_check_size (r, "NFS GETATTR", st.nfs_size, err) == -1) {
    drop_ctx (c);
    return -1;
  }
  snprintf (id, idlen, "nfs:size=%" PRIu64 ",fileid=%" PRIu64, (uint64_t) st.nfs_size,
            (uint64_t) st.nfs_ino);
  return st.nfs_size;
}

/* The pool's conn_open: mount and open a new context into c->handle;
 * with id NULL, check its identity against the pin.  The size, or -1
 * with *err. */
static int64_t
rnfs_conn_open (struct remote *r, void *hv, struct remote_conn *c, char *id, size_t len,
                uint64_t deadline_ns, int *err)
{
  struct rnfs *h = hv;
  struct rnfs_ctx *ctx = calloc (1, sizeof *ctx);
  char own[256];
  int64_t size;

  if (!ctx) {
    *err = ENOMEM;
    return -1;
  }
  size = ctx_open (r, h, ctx, deadline_ns, id ? id : own, id ? len : sizeof own, err);
  if (size < 0) {
    free (ctx);
    return -1;
  }
  c->handle = ctx;
  if (id)
    return size;
  if (remote_check_identity (r, own, err) == -1) {
    rnfs_conn_close (c);
    return -1;
  }
  pthread_mutex_lock (&h->lock);
  h->size = size;
  pthread_mutex_unlock (&h->lock);
  remote_note_connected (r, false);
  return size;
}

static unsigned
rnfs_pool_slots (const struct remote_config *cfg)
{
  return NR_CTX;
}

/* A slot with a context open for the access the parent needs now (one
 * opened read-only is reopened for writing after make_writable), or NULL
 * with *err (nothing held). */
static struct remote_conn *
acquire (struct remote *r, struct rnfs *h, uint64_t deadline_ns, int *err)
{
  struct remote_conn *c = remote_pool_take (h->pool, r, h, deadline_ns, err);

  if (c && __atomic_load_n (&h->writable, __ATOMIC_SEQ_CST) && !CTX (c)->writable) {
    rnfs_conn_close (c);
    if (remote_pool_open (h->pool, r, h, c, deadline_ns, err) == -1) {
      remote_pool_return (h->pool, c);
      return NULL;
    }
  }
  return c;
}

static void
release (struct rnfs *h, struct remote_conn *c)
{
  remote_pool_return (h->pool, c);
}

static int64_t
rnfs_get_size (struct remote *r, void *hv, uint64_t deadline_ns, int *err)
{
  struct rnfs *h = hv;
  struct remote_conn *c = acquire (r, h, deadline_ns, err);
  int64_t size;

  if (!c)
    return -1;
  release (h, c);
  pthread_mutex_lock (&h->lock);
  size = h->size;
  pthread_mutex_unlock (&h->lock);
  return size;
}

/* On a context of its own: the pool's may all be busy, and one that
 * stayed open would tell nothing about the file now. */
static int64_t
rnfs_identify (struct remote *r, void *hv, uint64_t deadline_ns, char *id, size_t len,
               int *err)
{
  struct rnfs *h = hv;
  struct remote_conn c;
  int64_t size = remote_pool_open_own (h->pool, r, h, &c, id, len, deadline_ns, err);

  remote_pool_close_own (h->pool, &c);
  return size;
}

static int
rnfs_pread (struct remote *r, void *hv, void *buf, size_t count, uint64_t offset,
            uint64_t deadline_ns, int *err)
{
  struct rnfs *h = hv;
  struct remote_conn *c = acquire (r, h, deadline_ns, err);

  if (!c)
    return -1;
  while (count > 0) {
    if (!bound_call (CTX (c), deadline_ns, h->request_timeout_ns)) {
      *err = ETIMEDOUT;
      remote_note_error (r, "read at offset %" PRIu64 ": timed out", offset);
      release (h, c);
      return -1;
    }
    int n = nfs_pread (CTX (c)->nfs, CTX (c)->fh, offset, count > (1 << 20) ? (1 << 20) : count, buf);
    if (n <= 0) {
      *err = n == 0 ? EIO : -n;
      remote_note_error (r, "read at offset %" PRIu64 ": %s", offset,
                         n == 0 ? "unexpected end of file" : nfs_get_error (CTX (c)->nfs));
      /* A timed-out context is in an unknown state. */
      remote_pool_discard (h->pool, c);
      return -1;
    }
    buf = (char *) buf + n;
    offset += n;
    count -= n;
  }
  release (h, c);
  return 0;
}

static int
rnfs_pwrite (struct remote *r, void *hv, const void *buf, size_t count, uint64_t offset,
             uint64_t deadline_ns, int *err)
{
  struct rnfs *h = hv;
  struct remote_conn *c;

  if (!__atomic_load_n (&h->writable, __ATOMIC_SEQ_CST)) {
    *err = EROFS;
    return -1;
  }
  if (!(c = acquire (r, h, deadline_ns, err)))
    return -1;
  while (count > 0) {
    if (!bound_call (CTX (c), deadline_ns, h->request_timeout_ns)) {
      *err = ETIMEDOUT;
      remote_note_error (r, "write at offset %" PRIu64 ": timed out", offset);
      release (h, c);
      return -1;
    }
    /* O_SYNC: FILE_SYNC writes, stable when they return. */
    int n = nfs_pwrite (CTX (c)->nfs, CTX (c)->fh, offset, count > (1 << 20) ? (1 << 20) : count,
                        (void *) buf);
    if (n <= 0) {
      *err = n == 0 ? EIO : -n;
      remote_note_error (r, "write at offset %" PRIu64 ": %s", offset,
                         n == 0 ? "short write" : nfs_get_error (CTX (c)->nfs));
      remote_pool_discard (h->pool, c);
      return -1;
    }
    buf = (const char *) buf + n;
    offset += n;
    count -= n;
  }
  release (h, c);
  return 0;
}

static int
rnfs_flush (struct remote *r, void *hv, bool all, uint64_t deadline_ns, int *err)
{
  /* Every write was FILE_SYNC: nothing is pending on the server, from
   * this daemon or from an earlier one. */
  return 0;
}

static int
rnfs_flush_covers_all (struct remote *r, void *hv, uint64_t deadline_ns, int *err)
{
  return 1;
}

static int
rnfs_make_writable (struct remote *r, void *hv, uint64_t deadline_ns, int *err)
{
  struct rnfs *h = hv;
  struct remote_conn *c;

  if (h->v4) {
    *err = EROFS;
    remote_note_error (r, "NFSv4 parents are read-only here (libnfs 4.0 cannot write "
                       "over NFSv4): use version=3 in the URL to merge");
    return -1;
  }
  __atomic_store_n (&h->writable, true, __ATOMIC_SEQ_CST);
  if (!(c = acquire (r, h, deadline_ns, err)))
    return -1;
  release (h, c);
  return 0;
}

static void
rnfs_release (void *hv)
{
  struct rnfs *h = hv;

  remote_pool_close_idle (h->pool);
}

static int
rnfs_parent_writable (struct remote *r, void *hv, uint64_t deadline_ns, int *err)
{
  struct rnfs *h = hv;
  return !h->v4;
}

const struct remote_ops rnfs_ops = {
  .parent_writable = rnfs_parent_writable,
  .name = "nfs",
  .handles = rnfs_handles,
  .open = rnfs_open,
  .close = rnfs_close,
  .get_size = rnfs_get_size,
  .identify = rnfs_identify,
  .pread = rnfs_pread,
  .pwrite = rnfs_pwrite,
  .flush = rnfs_flush,
  .flush_covers_all = rnfs_flush_covers_all,
  .make_writable = rnfs_make_writable,
  .release = rnfs_release,
  .pool_slots = rnfs_pool_slots,
  .conn_open = rnfs_conn_open,
  .conn_close = rnfs_conn_close,
};
