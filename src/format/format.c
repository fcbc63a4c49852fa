/* corfs: the format seam (format.h): the dispatch to a format's reader,
 * the raw passthrough, and the helpers the readers share.
 *
 * Threads: any, concurrently.  f->err_lock protects f->last_error only
 * and is a leaf (nothing is called under it).  f->open_lock serialises
 * a lazy open (the reader's open, which reads the image through the
 * remote, bounded by the caller's deadline); it is taken with no other
 * lock held, and only the reader's own leaf locks and err_lock are
 * taken under it.  Once f->ready is set the reader's state is
 * immutable but for its own locked caches.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"
#include "format/format-internal.h"

int
format_parse (const char *name, enum format_kind *kind)
{
  if (strcmp (name, "raw") == 0)
    *kind = FORMAT_RAW;
  else if (strcmp (name, "qcow2") == 0)
    *kind = FORMAT_QCOW2;
  else {
    errno = EINVAL;
    return -1;
  }
  return 0;
}

const char *
format_name (enum format_kind kind)
{
  return kind == FORMAT_QCOW2 ? "qcow2" : "raw";
}

static const struct format_ops *
ops_of (enum format_kind kind)
{
  return kind == FORMAT_QCOW2 ? &format_qcow2_ops : &format_raw_ops;
}

/* A copy of the settings that backing files are opened with (a lazy
 * format opens them after its caller's configuration is gone). */
struct fmt_remote_copy {
  struct remote_config cfg;
  char *backing_url;
  char **strings;               /* every string copied, to free */
  size_t nr_strings;
  char **headers;
};

static void
remote_copy_free (struct fmt_remote_copy *c)
{
  if (c == NULL)
    return;
  for (size_t i = 0; i < c->nr_strings; i++)
    free (c->strings[i]);
  free (c->strings);
  free (c->headers);
  free (c);
}

/* Copy s into c (NULL stays NULL); false when out of memory. */
static bool
copy_str (struct fmt_remote_copy *c, const char **dst, const char *s)
{
  char **nv;

  *dst = NULL;
  if (s == NULL)
    return true;
  nv = realloc (c->strings, (c->nr_strings + 1) * sizeof *nv);
  if (nv == NULL)
    return false;
  c->strings = nv;
  if ((nv[c->nr_strings] = strdup (s)) == NULL)
    return false;
  *dst = nv[c->nr_strings++];
  return true;
}

static struct fmt_remote_copy *
remote_copy (const struct remote_config *rc, const char *backing_url)
{
  struct fmt_remote_copy *c = calloc (1, sizeof *c);
  size_t nh = 0;
  bool ok;

  if (c == NULL)
    return NULL;
  c->cfg = *rc;
  while (rc->headers && rc->headers[nh])
    nh++;
  c->headers = calloc (nh + 1, sizeof *c->headers);
  ok = c->headers && copy_str (c, &c->cfg.url, rc->url) && copy_str (c, &c->cfg.disk, rc->disk) &&
    copy_str (c, &c->cfg.credentials_file, rc->credentials_file) &&
    copy_str (c, &c->cfg.token_file, rc->token_file) &&
    copy_str (c, &c->cfg.ca_file, rc->ca_file) &&
    copy_str (c, &c->cfg.client_cert, rc->client_cert) &&
    copy_str (c, &c->cfg.client_key, rc->client_key) &&
    copy_str (c, &c->cfg.s3_endpoint, rc->s3_endpoint) &&
    copy_str (c, &c->cfg.s3_region, rc->s3_region) &&
    copy_str (c, (const char **) &c->backing_url, backing_url);
  for (size_t i = 0; ok && i < nh; i++)
    ok = copy_str (c, (const char **) &c->headers[i], rc->headers[i]);
  if (!ok) {
    remote_copy_free (c);
    return NULL;
  }
  c->cfg.headers = (const char *const *) c->headers;
  c->cfg.pinned_identity = NULL;        /* each file pins its own */
  c->cfg.writable = false;
  return c;
}

static struct format *
format_new (const struct format_config *cfg, const char *name)
{
  struct format *f = calloc (1, sizeof *f);

  if (f == NULL || (f->name = strdup (name)) == NULL) {
    free (f);
    return NULL;
  }
  f->kind = cfg->kind;
  f->ops = ops_of (cfg->kind);
  f->cfg = *cfg;
  f->cfg.remote = NULL;
  f->cfg.backing_url = NULL;
  if (cfg->remote && (f->rc = remote_copy (cfg->remote, cfg->backing_url)) == NULL) {
    free (f->name);
    free (f);
    return NULL;
  }
  if (f->rc) {
    f->cfg.remote = &f->rc->cfg;
    f->cfg.backing_url = f->rc->backing_url;
  }
  pthread_mutex_init (&f->err_lock, NULL);
  pthread_mutex_init (&f->open_lock, NULL);
  return f;
}

/* Run the reader's open once; a failed one is undone (and tried again
 * by the next caller).  0 or -1 with *err. */
static int
ensure_open (struct format *f, uint64_t deadline_ns, int *err)
{
  int r = 0;

  if (__atomic_load_n (&f->ready, __ATOMIC_ACQUIRE))
    return 0;
  pthread_mutex_lock (&f->open_lock);
  if (!f->ready) {
    r = f->ops->open (f, &f->cfg, deadline_ns, err);
    if (r == 0)
      __atomic_store_n (&f->ready, true, __ATOMIC_RELEASE);
    else {
      f->ops->close (f);
      f->priv = NULL;
    }
  }
  pthread_mutex_unlock (&f->open_lock);
  return r;
}

static int
format_start (struct format *f, uint64_t deadline_ns, struct format **fp, int *err)
{
  if (!f->cfg.lazy && ensure_open (f, deadline_ns, err) == -1) {
    format_close (f);
    return -1;
  }
  f->opened = true;
  *fp = f;
  return 0;
}

int
format_open (struct remote *r, const struct format_config *cfg, uint64_t deadline_ns,
             struct format **fp, int *err)
{
  struct format *f = format_new (cfg, remote_url (r));

  if (f == NULL) {
    *err = ENOMEM;
    return -1;
  }
  f->r = r;
  return format_start (f, deadline_ns, fp, err);
}

int
format_open_memory (const void *image, size_t len, const char *name,
                    const struct format_config *cfg, struct format **fp, int *err)
{
  struct format *f = format_new (cfg, name);

  if (f == NULL) {
    *err = ENOMEM;
    return -1;
  }
  f->mem = image;
  f->mem_size = len;
  f->file_size = len;
  return format_start (f, 0, fp, err);
}

int
fmt_open_backing (struct format *up, struct remote *r, const struct format_config *cfg,
                  uint64_t deadline_ns, struct format **fp, int *err)
{
  struct format *f = format_new (cfg, remote_url (r));

  if (f == NULL) {
    remote_close (r);
    *err = ENOMEM;
    return -1;
  }
  f->r = r;
  f->owns_remote = true;
  f->up = up;
  f->depth = up->depth + 1;
  return format_start (f, deadline_ns, fp, err);
}

void
format_close (struct format *f)
{
  if (f == NULL)
    return;
  if (f->ready)
    f->ops->close (f);
  if (f->owns_remote)
    remote_close (f->r);
  remote_copy_free (f->rc);
  pthread_mutex_destroy (&f->err_lock);
  pthread_mutex_destroy (&f->open_lock);
  free (f->name);
  free (f);
}

enum format_kind
format_kind (const struct format *f)
{
  return f->kind;
}

int64_t
format_size (struct format *f, uint64_t deadline_ns, int *err)
{
  if (f->kind == FORMAT_RAW) {
    if (f->r == NULL)
      return (int64_t) f->mem_size;
    return remote_get_size (f->r, deadline_ns, err);
  }
  if (ensure_open (f, deadline_ns, err) == -1)
    return -1;
  return (int64_t) f->size;
}

int
format_pread (struct format *f, void *buf, size_t count, uint64_t offset,
              uint64_t deadline_ns, int *err)
{
  if (ensure_open (f, deadline_ns, err) == -1)
    return -1;
  return f->ops->pread (f, buf, count, offset, deadline_ns, err);
}

int
format_zero_extents (struct format *f, uint64_t offset, uint64_t count, uint64_t deadline_ns,
                     struct remote_extent **extents, size_t *nr_extents, int *err)
{
  *extents = NULL;
  *nr_extents = 0;
  if (ensure_open (f, deadline_ns, err) == -1)
    return -1;
  return f->ops->zero_extents (f, offset, count, deadline_ns, extents, nr_extents, err);
}

int
format_map (struct format *f, uint64_t offset, uint64_t count, uint64_t deadline_ns,
            struct format_map **map, size_t *nr_map, int *err)
{
  *map = NULL;
  *nr_map = 0;
  if (ensure_open (f, deadline_ns, err) == -1)
    return -1;
  return f->ops->map (f, offset, count, deadline_ns, map, nr_map, err);
}

/* The backing chain below f, once f is open. */
static struct format *
backing_of (struct format *f)
{
  if (!__atomic_load_n (&f->ready, __ATOMIC_ACQUIRE) || f->ops->backing == NULL)
    return NULL;
  return f->ops->backing (f);
}

void
format_cancel (struct format *f)
{
  for (struct format *b = backing_of (f); b; b = backing_of (b))
    remote_cancel (b->r);
}

void
format_release (struct format *f)
{
  for (struct format *b = backing_of (f); b; b = backing_of (b))
    remote_release (b->r);
}

void
format_chain_identity (struct format *f, char *buf, size_t len)
{
  char id[1024];
  size_t n = 0;
  uint64_t h = 0xcbf29ce484222325ULL;   /* FNV-1a of every identity */
  bool fits = true;

  buf[0] = '\0';
  for (struct format *b = backing_of (f); b; b = backing_of (b)) {
    remote_identity (b->r, id, sizeof id);
    for (const char *p = id; *p; p++)
      h = (h ^ (unsigned char) *p) * 0x100000001b3ULL;
    h = (h ^ '|') * 0x100000001b3ULL;
    if (fits) {
      int k = snprintf (buf + n, len - n, "%s%s", n ? " | " : "", id);
      fits = k >= 0 && (size_t) k < len - n;
      n += fits ? (size_t) k : 0;
    }
  }
  if (!fits)
    snprintf (buf, len, "chain:%016" PRIx64, h);
}

void
format_last_error (struct format *f, char *buf, size_t len)
{
  pthread_mutex_lock (&f->err_lock);
  snprintf (buf, len, "%s", f->last_error);
  pthread_mutex_unlock (&f->err_lock);
}

/* Helpers of the readers. */

int
fmt_read (struct format *f, void *buf, size_t count, uint64_t offset, uint64_t deadline_ns,
          int *err)
{
  if (f->r != NULL)
    return remote_pread (f->r, buf, count, offset, deadline_ns, err);
  if (offset > f->mem_size || count > f->mem_size - offset) {
    *err = EIO;
    return -1;
  }
  memcpy (buf, f->mem + offset, count);
  return 0;
}

void
fmt_fault (struct format *f, const char *fmt, ...)
{
  char msg[1024];
  size_t n;
  va_list ap;

  n = snprintf (msg, sizeof msg, "%s image %s: ", f->ops->name, f->name);
  if (n < sizeof msg) {
    va_start (ap, fmt);
    vsnprintf (msg + n, sizeof msg - n, fmt, ap);
    va_end (ap);
  }
  fmt_fault_verbatim (f, msg, true);
}

void
fmt_fault_verbatim (struct format *f, const char *msg, bool log)
{
  static struct log_ratelimit rl;
  size_t n;

  n = strnlen (msg, sizeof f->last_error - 1);
  pthread_mutex_lock (&f->err_lock);
  memcpy (f->last_error, msg, n);
  f->last_error[n] = '\0';
  pthread_mutex_unlock (&f->err_lock);
  /* Faults found while reading the disk are rate-limited (a guest may
   * retry a bad sector in a loop); a refusal at open is always logged. */
  if (log && (!f->opened || log_ratelimit_ok (&rl)))
    log_error ("%s", msg);
}

int
fmt_push (void **v, size_t *n, size_t elem, const void *x)
{
  if (*n == 0 || (*n & (*n - 1)) == 0) {
    size_t cap = *n == 0 ? 8 : *n * 2;
    void *nv = *n == 0 || *n >= 8 ? realloc (*v, cap * elem) : *v;

    if (nv == NULL) {
      errno = ENOMEM;
      return -1;
    }
    *v = nv;
  }
  memcpy ((char *) *v + *n * elem, x, elem);
  (*n)++;
  return 0;
}

/* Raw: the remote's bytes are the disk. */

static int
raw_open (struct format *f, const struct format_config *cfg, uint64_t deadline_ns, int *err)
{
  return 0;
}

static void
raw_close (struct format *f)
{
}

static int
raw_pread (struct format *f, void *buf, size_t count, uint64_t offset, uint64_t deadline_ns,
           int *err)
{
  return fmt_read (f, buf, count, offset, deadline_ns, err);
}

static int
raw_zero_extents (struct format *f, uint64_t offset, uint64_t count, uint64_t deadline_ns,
                  struct remote_extent **v, size_t *n, int *err)
{
  if (f->r == NULL)
    return 0;
  return remote_zero_extents (f->r, offset, count, deadline_ns, v, n, err);
}

static int
raw_map (struct format *f, uint64_t offset, uint64_t count, uint64_t deadline_ns,
         struct format_map **v, size_t *n, int *err)
{
  struct format_map m = { .offset = offset, .length = count, .kind = FORMAT_MAP_DATA,
                          .host_offset = offset, .host_length = count };

  if (count > 0 && fmt_push ((void **) v, n, sizeof m, &m) == -1) {
    *err = errno;
    return -1;
  }
  return 0;
}

const struct format_ops format_raw_ops = {
  .name = "raw",
  .open = raw_open,
  .close = raw_close,
  .pread = raw_pread,
  .zero_extents = raw_zero_extents,
  .map = raw_map,
};
