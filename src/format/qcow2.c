/* corfs: the qcow2 reader (see qcow2-internal.h for the format).
 *
 * Hand-written, and kept small on purpose: Debian's libqcow reads zlib
 * only, cannot say where a cluster lives or whether it is allocated (no
 * zero extents, no host-order streaming), and reads through file
 * handles of its own, where corfs needs every byte to come through its
 * remote layer (retries, the hold, the pool, identity pinning).  QEMU
 * (qemu-img, qemu-io) is the test oracle.
 *
 * Open reads the header and the L1 table and checks every L1 entry; an
 * L2 entry is checked when first used.  Every read of the virtual disk
 * is a walk over its clusters (qcow2_walk) that yields runs of one kind:
 * data contiguous in the file, zeros (zero clusters), unallocated (from
 * the backing file, else zeros), or one compressed cluster.  Reads
 * (qcow2-read.c), zero extents and the host map (here) are three
 * consumers of the same walk; the backing file is qcow2-backing.c's.
 *
 * Threads: any, concurrently.  The header, the L1 table and the
 * geometry are immutable after open.  Locks, both leaves never held
 * across a remote read: the L2 cache's own, and q->last.lock, which
 * protects the last decompressed cluster (a reader asking 4 KiB at a
 * time decompresses each cluster once).
 */
#include <endian.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/cleanup.h"
#include "format/qcow2-internal.h"

#define OFFSET_MASK 0x00fffffffffffe00ULL       /* of L1 and standard L2 entries */
#define L2_COMPRESSED (1ULL << 62)
#define L2_ZERO 1ULL                            /* standard entries only */
#define SUBCLUSTERS 32
#define WALK_BATCH 256                          /* L2 entries copied out at a time */

int
qcow2_fault (struct format *f, int *err, const char *fmt, ...)
{
  char msg[400];
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  fmt_fault (f, "%s", msg);
  *err = EIO;
  return -1;
}

/* Can a cluster at host offset off be read?  The message's subject is
 * what, e.g. "L2 table of L1 entry 3". */
static int
check_cluster (struct format *f, const struct qcow2 *q, uint64_t off, const char *what,
               uint64_t voff, int *err)
{
  if (off & (q->cluster - 1))
    return qcow2_fault (f, err, "%s (virtual offset 0x%" PRIx64 ") at 0x%" PRIx64 " is not "
                  "cluster-aligned", what, voff, off);
  if (off < q->cluster)
    return qcow2_fault (f, err, "%s (virtual offset 0x%" PRIx64 ") at 0x%" PRIx64 " overlaps "
                  "the header", what, voff, off);
  if (off > f->file_size || q->cluster > f->file_size - off)
    return qcow2_fault (f, err, "%s (virtual offset 0x%" PRIx64 ") at 0x%" PRIx64 " lies past "
                  "the end of the file (%" PRIu64 " bytes)", what, voff, off, f->file_size);
  return 0;
}

/* Open. */

static int
read_header (struct format *f, struct qcow2 *q, uint64_t deadline_ns, int *err)
{
  size_t len = f->file_size < QCOW2_HEADER_PEEK ? f->file_size : QCOW2_HEADER_PEEK;
  CLEANUP_FREE uint8_t *buf = malloc (len > 0 ? len : 1);
  char why[300];
  size_t need;
  int r;

  if (buf == NULL)
    return *err = ENOMEM, -1;
  if (fmt_read (f, buf, len, 0, deadline_ns, err) == -1)
    return -1;
  r = qcow2_parse_header (buf, len, f->file_size, &q->h, &need, why, sizeof why);
  if (r == 0 && need > 0) {
    uint8_t *nb = realloc (buf, need);

    if (nb == NULL)
      return *err = ENOMEM, -1;
    buf = nb;
    if (fmt_read (f, buf, need, 0, deadline_ns, err) == -1)
      return -1;
    r = qcow2_parse_header (buf, need, f->file_size, &q->h, &need, why, sizeof why);
  }
  if (r == -1) {
    *err = errno;
    fmt_fault (f, "%s", why);
    return -1;
  }
  return 0;
}

static int
read_l1 (struct format *f, struct qcow2 *q, uint64_t deadline_ns, int *err)
{
  size_t n = q->h.l1_size;
  char what[64];

  q->l1 = malloc (n > 0 ? n * 8 : 1);
  if (q->l1 == NULL)
    return *err = ENOMEM, -1;
  if (n > 0 && fmt_read (f, q->l1, n * 8, q->h.l1_offset, deadline_ns, err) == -1)
    return -1;
  for (size_t i = 0; i < n; i++) {
    uint64_t off = be64toh (q->l1[i]) & OFFSET_MASK;

    snprintf (what, sizeof what, "L2 table of L1 entry %zu", i);
    if (off != 0 && check_cluster (f, q, off, what, (uint64_t) i << (q->h.cluster_bits +
                                                                     q->l2_bits), err) == -1)
      return *err = EINVAL, -1;     /* malformed image, not a failed read */
    q->l1[i] = off;
  }
  return 0;
}

static int
qcow2_open (struct format *f, const struct format_config *cfg, uint64_t deadline_ns, int *err)
{
  struct qcow2 *q = calloc (1, sizeof *q);
  uint64_t cache_bytes = cfg->l2_cache_bytes ? cfg->l2_cache_bytes : FORMAT_L2_CACHE_DEFAULT;

  if (q == NULL)
    return *err = ENOMEM, -1;
  pthread_mutex_init (&q->last.lock, NULL);
  f->priv = q;
  if (f->r != NULL) {
    int64_t size = remote_get_size (f->r, deadline_ns, err);

    if (size == -1)
      return -1;
    f->file_size = size;
  }
  if (read_header (f, q, deadline_ns, err) == -1)
    return -1;
  q->cluster = 1ULL << q->h.cluster_bits;
  q->entry_words = q->h.extended_l2 ? 2 : 1;
  q->l2_bits = q->h.cluster_bits - (q->h.extended_l2 ? 4 : 3);
  q->sc_size = q->h.extended_l2 ? q->cluster / SUBCLUSTERS : q->cluster;
  q->csize_shift = 62 - (q->h.cluster_bits - 8);
  q->csize_mask = (1ULL << (q->h.cluster_bits - 8)) - 1;
  if (read_l1 (f, q, deadline_ns, err) == -1)
    return -1;
  q->cache = qcow2_l2cache_new (q->cluster, cache_bytes);
  q->last.buf = malloc (q->cluster);
  if (q->cache == NULL || q->last.buf == NULL)
    return *err = ENOMEM, -1;
  if (q->h.backing_offset != 0) {
    int64_t bsize;

    if (qcow2_open_backing (f, &q->h, deadline_ns, &q->backing, &bsize, err) == -1)
      return -1;
    q->backing_size = bsize;
  }
  f->size = q->h.size;
  return 0;
}

static void
qcow2_close (struct format *f)
{
  struct qcow2 *q = f->priv;

  if (q == NULL)
    return;
  format_close (q->backing);
  qcow2_l2cache_free (q->cache);
  pthread_mutex_destroy (&q->last.lock);
  free (q->last.buf);
  free (q->l1);
  free (q);
}

/* The walk. */

/* Copy n entries (n * entry_words words) of the L2 table at l2 from
 * entry first into out, reading and caching the table on a miss. */
static int
l2_entries (struct walk *w, uint64_t l2, size_t first, size_t n, uint64_t *out, int *err)
{
  struct qcow2 *q = w->q;
  size_t words = q->cluster / 8;
  CLEANUP_FREE uint64_t *table = NULL;

  if (qcow2_l2cache_get (q->cache, l2, first * q->entry_words, n * q->entry_words, out))
    return 0;
  table = malloc (q->cluster);
  if (table == NULL)
    return *err = ENOMEM, -1;
  if (fmt_read (w->f, table, q->cluster, l2, w->deadline_ns, err) == -1)
    return -1;
  for (size_t i = 0; i < words; i++)
    table[i] = be64toh (table[i]);
  qcow2_l2cache_put (q->cache, l2, table);
  memcpy (out, table + first * q->entry_words, n * q->entry_words * 8);
  return 0;
}

static bool
mergeable (const struct seg *a, const struct seg *b)
{
  return a->kind == b->kind && a->kind != QCOW2_COMPRESSED &&
    a->offset + a->length == b->offset &&
    (a->kind != QCOW2_DATA || a->host + a->length == b->host);
}

/* Add a run (clipped to the range asked), growing the pending one or
 * emitting it. */
static int
add (struct walk *w, struct seg s, int *err)
{
  uint64_t end = s.offset + s.length;

  if (s.offset < w->start) {
    if (s.kind == QCOW2_DATA)
      s.host += w->start - s.offset;
    s.offset = w->start;
  }
  if (end > w->end)
    end = w->end;
  if (end <= s.offset)
    return 0;
  s.length = end - s.offset;
  if (w->have && mergeable (&w->pend, &s)) {
    w->pend.length += s.length;
    return 0;
  }
  if (w->have && w->emit (w, &w->pend, err) == -1)
    return -1;
  w->pend = s;
  w->have = true;
  return 0;
}

static int
add_compressed (struct walk *w, uint64_t voff, uint64_t e, const char *what, int *err)
{
  struct qcow2 *q = w->q;
  uint64_t fsize = w->f->file_size;
  uint64_t coff = e & ((1ULL << q->csize_shift) - 1);
  uint64_t csize = (((e >> q->csize_shift) & q->csize_mask) + 1) * 512 - (coff & 511);
  struct seg s = { .offset = voff, .length = q->cluster, .kind = QCOW2_COMPRESSED,
                   .host = coff, .cluster_off = voff };

  if (coff < q->cluster)
    return qcow2_fault (w->f, err, "%s (virtual offset 0x%" PRIx64 "): compressed cluster at 0x%"
                  PRIx64 " overlaps the header", what, voff, coff);
  /* The length is rounded up to sectors, the file perhaps not. */
  if (coff >= fsize || csize > ((fsize + 511) & ~511ULL) - coff)
    return qcow2_fault (w->f, err, "%s (virtual offset 0x%" PRIx64 "): compressed cluster at 0x%"
                  PRIx64 " (%" PRIu64 " bytes) lies past the end of the file (%" PRIu64
                  " bytes)", what, voff, coff, csize, fsize);
  s.host_len = csize < fsize - coff ? csize : fsize - coff;
  return add (w, s, err);
}

/* A run of subclusters [i, j) of one kind in the cluster at voff. */
static int
add_subclusters (struct walk *w, uint64_t voff, uint64_t host, unsigned i, unsigned j,
                 enum qcow2_kind kind, int *err)
{
  uint64_t sc = w->q->sc_size;
  struct seg s = { .offset = voff + i * sc, .length = (j - i) * sc, .kind = kind,
                   .host = host + i * sc };

  return add (w, s, err);
}

/* Extended L2: the bitmap's allocated (low) and zero (high) halves. */
static int
add_extended (struct walk *w, uint64_t voff, uint64_t host, uint64_t bitmap,
              const char *what, int *err)
{
  uint32_t alloc = bitmap, zero = bitmap >> 32;
  unsigned i = 0;

  if (alloc & zero)
    return qcow2_fault (w->f, err, "%s (virtual offset 0x%" PRIx64 "): subcluster bitmap 0x%016"
                  PRIx64 " marks subclusters both allocated and zero", what, voff, bitmap);
  if (host == 0 && alloc != 0)
    return qcow2_fault (w->f, err, "%s (virtual offset 0x%" PRIx64 "): subclusters allocated in "
                  "an unallocated cluster (bitmap 0x%016" PRIx64 ")", what, voff, bitmap);
  while (i < SUBCLUSTERS) {
    enum qcow2_kind k = (alloc >> i & 1) ? QCOW2_DATA
      : (zero >> i & 1) ? QCOW2_ZERO : QCOW2_UNALLOCATED;
    unsigned j = i + 1;

    while (j < SUBCLUSTERS && k == ((alloc >> j & 1) ? QCOW2_DATA
                                    : (zero >> j & 1) ? QCOW2_ZERO : QCOW2_UNALLOCATED))
      j++;
    if (add_subclusters (w, voff, host, i, j, k, err) == -1)
      return -1;
    i = j;
  }
  return 0;
}

/* One L2 entry (e[0], and e[1], the bitmap, with extended L2). */
static int
add_entry (struct walk *w, uint64_t voff, const uint64_t *e, uint64_t l2, size_t idx,
           int *err)
{
  struct qcow2 *q = w->q;
  uint64_t host = e[0] & OFFSET_MASK;
  char what[80];

  snprintf (what, sizeof what, "L2 entry %zu of the table at 0x%" PRIx64, idx, l2);
  if (e[0] & L2_COMPRESSED)
    return add_compressed (w, voff, e[0], what, err);
  if (host != 0 && check_cluster (w->f, q, host, what, voff, err) == -1)
    return -1;
  if (q->h.extended_l2)
    return add_extended (w, voff, host, e[1], what, err);
  if (e[0] & L2_ZERO)
    return add_subclusters (w, voff, 0, 0, 1, QCOW2_ZERO, err);
  return add_subclusters (w, voff, host, 0, 1, host ? QCOW2_DATA : QCOW2_UNALLOCATED, err);
}

/* Walk [start, end) (within the virtual size), emitting runs in
 * virtual order. */
int
qcow2_walk (struct walk *w, int *err)
{
  struct qcow2 *q = w->q;
  unsigned cb = q->h.cluster_bits;
  uint64_t per_table = 1ULL << q->l2_bits;
  uint64_t c = w->start >> cb, last = (w->end - 1) >> cb;
  uint64_t e[WALK_BATCH * 2];

  w->have = false;
  if (w->end <= w->start)
    return 0;
  while (c <= last) {
    uint64_t l1i = c >> q->l2_bits, l2 = q->l1[l1i];
    size_t first = c & (per_table - 1);
    uint64_t n = per_table - first;

    if (n > last - c + 1)
      n = last - c + 1;
    if (l2 == 0) {
      struct seg s = { .offset = c << cb, .length = n << cb, .kind = QCOW2_UNALLOCATED };

      if (add (w, s, err) == -1)
        return -1;
      c += n;
      continue;
    }
    if (n > WALK_BATCH)
      n = WALK_BATCH;
    if (l2_entries (w, l2, first, n, e, err) == -1)
      return -1;
    for (size_t i = 0; i < n; i++)
      if (add_entry (w, (c + i) << cb, e + i * q->entry_words, l2, first + i, err) == -1)
        return -1;
    c += n;
  }
  return w->have ? w->emit (w, &w->pend, err) : 0;
}

int
qcow2_range_ok (struct format *f, uint64_t offset, uint64_t count, int *err)
{
  if (offset > f->size || count > f->size - offset)
    return *err = EINVAL, -1;
  return 0;
}

/* Zero extents and the map. */

struct vec {
  void *v;
  size_t n;
};

/* Add [offset, offset + length) to the sorted zero extents in out. */
static int
push_zero (struct vec *out, uint64_t offset, uint64_t length, int *err)
{
  struct remote_extent *v = out->v, x = { offset, length };

  if (out->n > 0 && v[out->n - 1].offset + v[out->n - 1].length == offset) {
    v[out->n - 1].length += length;
    return 0;
  }
  if (fmt_push (&out->v, &out->n, sizeof x, &x) == -1)
    return *err = ENOMEM, -1;
  return 0;
}

/* Unallocated clusters over a backing file are zeros where it says so,
 * and past its end. */
static int
backing_zeros (struct walk *w, const struct seg *s, struct vec *out, int *err)
{
  struct qcow2 *q = w->q;
  uint64_t end = s->offset + s->length, bend = end < q->backing_size ? end : q->backing_size;
  struct remote_extent *z = NULL;
  size_t nz = 0;
  int r = 0;

  if (s->offset < bend &&
      format_zero_extents (q->backing, s->offset, bend - s->offset, w->deadline_ns, &z, &nz,
                           err) == -1)
    return -1;
  for (size_t i = 0; r == 0 && i < nz; i++)
    r = push_zero (out, z[i].offset, z[i].length, err);
  free (z);
  if (r == 0 && bend < end)
    r = push_zero (out, s->offset > bend ? s->offset : bend,
                   end - (s->offset > bend ? s->offset : bend), err);
  return r;
}

static int
emit_zero (struct walk *w, const struct seg *s, int *err)
{
  struct vec *out = w->opaque;

  if (s->kind == QCOW2_UNALLOCATED && w->q->backing)
    return backing_zeros (w, s, out, err);
  if (s->kind != QCOW2_ZERO && s->kind != QCOW2_UNALLOCATED)
    return 0;
  return push_zero (out, s->offset, s->length, err);
}

static int
emit_map (struct walk *w, const struct seg *s, int *err)
{
  struct vec *out = w->opaque;
  struct format_map m = { .offset = s->offset, .length = s->length };

  switch (s->kind) {
  case QCOW2_DATA:
    m.kind = FORMAT_MAP_DATA, m.host_offset = s->host, m.host_length = s->length;
    break;
  case QCOW2_COMPRESSED:
    m.kind = FORMAT_MAP_COMPRESSED, m.host_offset = s->host, m.host_length = s->host_len;
    break;
  case QCOW2_UNALLOCATED:
    if (w->q->backing) {
      m.kind = FORMAT_MAP_BACKING, m.host_offset = s->offset, m.host_length = s->length;
      break;
    }
    /* fall through */
  default:
    m.kind = FORMAT_MAP_ZERO;
  }
  if (out->n > 0 && m.kind == FORMAT_MAP_ZERO) {
    struct format_map *p = (struct format_map *) out->v + out->n - 1;

    if (p->kind == FORMAT_MAP_ZERO && p->offset + p->length == m.offset) {
      p->length += m.length;
      return 0;
    }
  }
  if (fmt_push (&out->v, &out->n, sizeof m, &m) == -1)
    return *err = ENOMEM, -1;
  return 0;
}

static int
collect (struct format *f, uint64_t offset, uint64_t count, uint64_t deadline_ns, emit_fn fn,
         void **v, size_t *n, int *err)
{
  struct vec out = { NULL, 0 };
  struct walk w = { .f = f, .q = f->priv, .start = offset, .end = offset + count,
                    .deadline_ns = deadline_ns, .emit = fn, .opaque = &out };

  if (qcow2_range_ok (f, offset, count, err) == -1)
    return -1;
  if (qcow2_walk (&w, err) == -1) {
    free (out.v);
    return -1;
  }
  *v = out.v;
  *n = out.n;
  return 0;
}

static int
qcow2_zero_extents (struct format *f, uint64_t offset, uint64_t count, uint64_t deadline_ns,
                    struct remote_extent **v, size_t *n, int *err)
{
  return collect (f, offset, count, deadline_ns, emit_zero, (void **) v, n, err);
}

static int
qcow2_map (struct format *f, uint64_t offset, uint64_t count, uint64_t deadline_ns,
           struct format_map **v, size_t *n, int *err)
{
  return collect (f, offset, count, deadline_ns, emit_map, (void **) v, n, err);
}

static struct format *
qcow2_backing (struct format *f)
{
  struct qcow2 *q = f->priv;

  return q ? q->backing : NULL;
}

const struct format_ops format_qcow2_ops = {
  .backing = qcow2_backing,
  .name = "qcow2",
  .open = qcow2_open,
  .close = qcow2_close,
  .pread = qcow2_pread,
  .zero_extents = qcow2_zero_extents,
  .map = qcow2_map,
};
