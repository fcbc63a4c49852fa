/* corfs: NFS parents through libnfs (nfs://server/export/path/file with
 * libnfs's URL arguments, e.g. ?version=3&nfsport=N&mountport=M or
 * ?version=4&nfsport=N).
 *
 * Notes on the thread model: REMOTE_PARALLEL.  libnfs contexts are not
 * thread-safe, so a parent has a pool of contexts, each mounted with the
 * file open, used by one request at a time (h->lock guards the pool).
 * Each sync call is bounded by nfs_set_timeout; a context that fails is
 * destroyed and re-created by the next request that takes its slot.
 *
 * Writes (merge into an owned parent) go over NFSv3 only, with the file
 * opened O_SYNC so that every WRITE is FILE_SYNC: Debian 12's libnfs 4.0
 * cannot write over NFSv4 (its compound encode buffer is 4 KiB) and its
 * COMMIT does not compare write verifiers, so unstable writes plus COMMIT
 * could lose data silently across a server restart.
 *
 * Identity: size plus the fileid (st_ino).  DESIGN.md asks for the file
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

struct rnfs_ctx {
  struct nfs_context *nfs;      /* NULL when not connected */
  struct nfsfh *fh;
  bool busy;                    /* protected by h->lock */
  bool writable;                /* fh opened O_RDWR|O_SYNC */
};

struct rnfs {
  char *url;
  bool v4;
  bool writable;
  uint64_t connect_timeout_ns, request_timeout_ns;
  pthread_mutex_t lock;         /* protects the pool and size */
  pthread_cond_t cond;
  int64_t size;
  struct rnfs_ctx ctx[NR_CTX];
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
  pthread_mutex_init (&h->lock, NULL);
  cond_init_monotonic (&h->cond);
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

static void
rnfs_close (void *hv)
{
  struct rnfs *h = hv;

  for (int i = 0; i < NR_CTX; i++)
    drop_ctx (&h->ctx[i]);
  pthread_mutex_destroy (&h->lock);
  pthread_cond_destroy (&h->cond);
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
    c->writable = h->writable;
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

/* Mount, open and check identity on context c.  0 or -1 with *err. */
static int
ctx_connect (struct remote *r, struct rnfs *h, struct rnfs_ctx *c, uint64_t deadline_ns,
             int *err)
{
  char id[256];
  int64_t size = ctx_open (r, h, c, deadline_ns, id, sizeof id, err);

  if (size < 0)
    return -1;
  if (remote_check_identity (r, id, err) == -1) {
    drop_ctx (c);
    return -1;
  }
  pthread_mutex_lock (&h->lock);
  h->size = size;
  pthread_mutex_unlock (&h->lock);
  remote_note_connected (r, false);
  return 0;
}

static struct rnfs_ctx *
acquire (struct remote *r, struct rnfs *h, uint64_t deadline_ns, int *err)
{
  struct timespec ts = { deadline_ns / NS_PER_SEC, deadline_ns % NS_PER_SEC };
  struct rnfs_ctx *c = NULL;

  pthread_mutex_lock (&h->lock);
  for (;;) {
    for (int i = 0; i < NR_CTX; i++)
      if (!h->ctx[i].busy && (h->ctx[i].nfs || !c))
        c = &h->ctx[i];
    if (c) {
      c->busy = true;
      break;
    }
    if (pthread_cond_timedwait (&h->cond, &h->lock, &ts) == ETIMEDOUT) {
      *err = ETIMEDOUT;
      pthread_mutex_unlock (&h->lock);
      return NULL;
    }
  }
  pthread_mutex_unlock (&h->lock);
  /* A context opened read-only is reopened for writing when needed. */
  if (c->nfs && h->writable && !c->writable)
    drop_ctx (c);
  if (!c->nfs && ctx_connect (r, h, c, deadline_ns, err) == -1) {
    pthread_mutex_lock (&h->lock);
    c->busy = false;
    pthread_cond_signal (&h->cond);
    pthread_mutex_unlock (&h->lock);
    return NULL;
  }
  return c;
}

static void
release (struct rnfs *h, struct rnfs_ctx *c)
{
  pthread_mutex_lock (&h->lock);
  c->busy = false;
  pthread_cond_signal (&h->cond);
  pthread_mutex_unlock (&h->lock);
}

static int64_t
rnfs_get_size (struct remote *r, void *hv, uint64_t deadline_ns, int *err)
{
  struct rnfs *h = hv;
  struct rnfs_ctx *c = acquire (r, h, deadline_ns, err);

  if (!c)
    return -1;
  release (h, c);
  return h->size;
}

/* On a context of its own: the pool's may all be busy, and one that
 * stayed open would tell nothing about the file now. */
static int64_t
rnfs_identify (struct remote *r, void *hv, uint64_t deadline_ns, char *id, size_t len,
               int *err)
{
  struct rnfs_ctx c = { 0 };
  int64_t size = ctx_open (r, hv, &c, deadline_ns, id, len, err);

  drop_ctx (&c);
  return size;
}

static int
rnfs_pread (struct remote *r, void *hv, void *buf, size_t count, uint64_t offset,
            uint64_t deadline_ns, int *err)
{
  struct rnfs *h = hv;
  struct rnfs_ctx *c = acquire (r, h, deadline_ns, err);

  if (!c)
    return -1;
  while (count > 0) {
    if (!bound_call (c, deadline_ns, h->request_timeout_ns)) {
      *err = ETIMEDOUT;
      remote_note_error (r, "read at offset %" PRIu64 ": timed out", offset);
      release (h, c);
      return -1;
    }
    int n = nfs_pread (c->nfs, c->fh, offset, count > (1 << 20) ? (1 << 20) : count, buf);
    if (n <= 0) {
      *err = n == 0 ? EIO : -n;
      remote_note_error (r, "read at offset %" PRIu64 ": %s", offset,
                         n == 0 ? "unexpected end of file" : nfs_get_error (c->nfs));
      drop_ctx (c);             /* a timed-out context is in an unknown state */
      release (h, c);
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
  struct rnfs_ctx *c;

  if (!h->writable) {
    *err = EROFS;
    return -1;
  }
  if (!(c = acquire (r, h, deadline_ns, err)))
    return -1;
  while (count > 0) {
    if (!bound_call (c, deadline_ns, h->request_timeout_ns)) {
      *err = ETIMEDOUT;
      remote_note_error (r, "write at offset %" PRIu64 ": timed out", offset);
      release (h, c);
      return -1;
    }
    /* O_SYNC: FILE_SYNC writes, stable when they return. */
    int n = nfs_pwrite (c->nfs, c->fh, offset, count > (1 << 20) ? (1 << 20) : count,
                        (void *) buf);
    if (n <= 0) {
      *err = n == 0 ? EIO : -n;
      remote_note_error (r, "write at offset %" PRIu64 ": %s", offset,
                         n == 0 ? "short write" : nfs_get_error (c->nfs));
      drop_ctx (c);
      release (h, c);
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
  struct rnfs_ctx *c;

  if (h->v4) {
    *err = EROFS;
    remote_note_error (r, "NFSv4 parents are read-only here (libnfs 4.0 cannot write "
                       "over NFSv4): use version=3 in the URL to merge");
    return -1;
  }
  h->writable = true;
  if (!(c = acquire (r, h, deadline_ns, err)))
    return -1;
  release (h, c);
  return 0;
}

static void
rnfs_release (void *hv)
{
  struct rnfs *h = hv;

  pthread_mutex_lock (&h->lock);
  for (int i = 0; i < NR_CTX; i++)
    if (!h->ctx[i].busy)
      drop_ctx (&h->ctx[i]);
  pthread_mutex_unlock (&h->lock);
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
  .thread_model = REMOTE_PARALLEL,
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
};
