/* corfs: reading a qcow2 image's virtual disk (qcow2_pread), one of the
 * three consumers of the cluster walk (qcow2.c): data runs in the order
 * of the file, coalesced; compressed clusters in batches; unallocated
 * clusters from the backing file, or zeros.
 *
 * Threads: any, concurrently.  Locks: q->last.lock only (a leaf, never
 * held across a read), besides those of the walk's L2 cache.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/cleanup.h"
#include "format/qcow2-internal.h"

/* Reads.  Compressed clusters adjacent in the file (as qemu-img convert
 * -c writes them) are read with one request of up to BATCH_MAX bytes,
 * then decoded one by one: a cluster per request would be one round
 * trip per 64 KiB over HTTP. */

#define BATCH_MAX (4ULL << 20)

struct reader {
  uint8_t *buf;                 /* the caller's, at the walk's start */
  struct seg *batch;            /* compressed clusters to read (fmt_push vector) */
  size_t n;
  uint64_t lo, hi;              /* the file range that holds them */
  struct seg *data;             /* data runs to read (fmt_push vector) */
  size_t nd;
};

/* Data runs are read in the order of the file, and runs adjacent in the
 * file but not on the disk (clusters a guest wrote out of order) with
 * one request of up to DATA_GATHER_MAX bytes, scattered after: the
 * server sees ascending, coalesced ranges. */
#define DATA_GATHER_MAX (8ULL << 20)

static int
by_host (const void *a, const void *b)
{
  const struct seg *x = a, *y = b;

  return x->host < y->host ? -1 : x->host > y->host;
}

static int
flush_data (struct walk *w, struct reader *rd, int *err)
{
  struct seg *d = rd->data;
  size_t n = rd->nd, j;

  rd->nd = 0;
  if (n == 0)
    return 0;
  qsort (d, n, sizeof *d, by_host);
  for (size_t i = 0; i < n; i = j) {
    uint64_t end = d[i].host + d[i].length;
    uint8_t *tmp;

    for (j = i + 1; j < n && d[j].host == end &&
           end + d[j].length - d[i].host <= DATA_GATHER_MAX; j++)
      end += d[j].length;
    if (j == i + 1) {
      if (fmt_read (w->f, rd->buf + (d[i].offset - w->start), d[i].length, d[i].host,
                    w->deadline_ns, err) == -1)
        return -1;
      continue;
    }
    if ((tmp = malloc (end - d[i].host)) == NULL)
      return *err = ENOMEM, -1;
    if (fmt_read (w->f, tmp, end - d[i].host, d[i].host, w->deadline_ns, err) == -1) {
      free (tmp);
      return -1;
    }
    for (size_t k = i; k < j; k++)
      memcpy (rd->buf + (d[k].offset - w->start), tmp + (d[k].host - d[i].host),
              d[k].length);
    free (tmp);
  }
  return 0;
}

/* Is s's cluster the one decoded last?  Then copy its part to dst. */
static bool
from_last (struct qcow2 *q, const struct seg *s, uint8_t *dst)
{
  bool hit;

  pthread_mutex_lock (&q->last.lock);
  hit = q->last.valid && q->last.host == s->host;
  if (hit)
    memcpy (dst, q->last.buf + (s->offset - s->cluster_off), s->length);
  pthread_mutex_unlock (&q->last.lock);
  return hit;
}

static void
keep_last (struct qcow2 *q, uint64_t host, const uint8_t *cluster)
{
  pthread_mutex_lock (&q->last.lock);
  memcpy (q->last.buf, cluster, q->cluster);
  q->last.host = host;
  q->last.valid = true;
  pthread_mutex_unlock (&q->last.lock);
}

/* Read the batch's file range and decode each cluster into the buffer. */
static int
flush_batch (struct walk *w, struct reader *rd, int *err)
{
  struct qcow2 *q = w->q;
  CLEANUP_FREE uint8_t *in = NULL, *out = NULL;
  char why[200];
  int r = 0;

  if (rd->n == 0)
    return 0;
  in = malloc (rd->hi - rd->lo);
  out = malloc (q->cluster);
  if (in == NULL || out == NULL)
    r = (*err = ENOMEM, -1);
  else
    r = fmt_read (w->f, in, rd->hi - rd->lo, rd->lo, w->deadline_ns, err);
  for (size_t i = 0; r == 0 && i < rd->n; i++) {
    const struct seg *s = &rd->batch[i];

    if (qcow2_decompress (q->h.compression, in + (s->host - rd->lo), s->host_len, out,
                          q->cluster, why, sizeof why) == -1)
      r = qcow2_fault (w->f, err, "compressed cluster at 0x%" PRIx64 " (%" PRIu64 " bytes, for "
                 "virtual offset 0x%" PRIx64 "): %s", s->host, s->host_len,
                 s->cluster_off, why);
    else
      memcpy (rd->buf + (s->offset - w->start), out + (s->offset - s->cluster_off),
              s->length);
  }
  if (r == 0)
    keep_last (q, rd->batch[rd->n - 1].host, out);
  rd->n = 0;
  return r;
}

static int
add_compressed_read (struct walk *w, struct reader *rd, const struct seg *s, int *err)
{
  if (from_last (w->q, s, rd->buf + (s->offset - w->start)))
    return 0;
  if (rd->n > 0 && (s->host < rd->lo || s->host > rd->hi ||
                    s->host + s->host_len - rd->lo > BATCH_MAX) &&
      flush_batch (w, rd, err) == -1)
    return -1;
  if (rd->n == 0)
    rd->lo = rd->hi = s->host;
  if (fmt_push ((void **) &rd->batch, &rd->n, sizeof *s, s) == -1)
    return *err = ENOMEM, -1;
  if (s->host + s->host_len > rd->hi)
    rd->hi = s->host + s->host_len;
  return 0;
}

/* Unallocated clusters over a backing file: its bytes at the same
 * offsets, zeros past its end. */
static int
read_backing (struct walk *w, const struct seg *s, uint8_t *dst, int *err)
{
  struct qcow2 *q = w->q;
  uint64_t n = 0;

  if (s->offset < q->backing_size) {
    n = q->backing_size - s->offset < s->length ? q->backing_size - s->offset : s->length;
    if (format_pread (q->backing, dst, n, s->offset, w->deadline_ns, err) == -1)
      return -1;
  }
  memset (dst + n, 0, s->length - n);
  return 0;
}

static int
emit_read (struct walk *w, const struct seg *s, int *err)
{
  struct reader *rd = w->opaque;
  uint8_t *dst = rd->buf + (s->offset - w->start);

  switch (s->kind) {
  case QCOW2_DATA:
    if (fmt_push ((void **) &rd->data, &rd->nd, sizeof *s, s) == -1)
      return *err = ENOMEM, -1;
    return 0;
  case QCOW2_COMPRESSED:
    return add_compressed_read (w, rd, s, err);
  case QCOW2_UNALLOCATED:
    if (w->q->backing)
      return read_backing (w, s, dst, err);
    /* fall through */
  default:
    memset (dst, 0, s->length);
    return 0;
  }
}

int
qcow2_pread (struct format *f, void *buf, size_t count, uint64_t offset, uint64_t deadline_ns,
             int *err)
{
  struct reader rd = { .buf = buf };
  struct walk w = { .f = f, .q = f->priv, .start = offset, .end = offset + count,
                    .deadline_ns = deadline_ns, .emit = emit_read, .opaque = &rd };
  int r;

  if (qcow2_range_ok (f, offset, count, err) == -1)
    return -1;
  r = qcow2_walk (&w, err);
  if (r == 0)
    r = flush_data (&w, &rd, err);
  if (r == 0)
    r = flush_batch (&w, &rd, err);
  free (rd.data);
  free (rd.batch);
  return r;
}
