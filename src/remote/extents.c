/* corfs: block status through the remote wrappers: the zero extents a
 * parent promises, with the last large answer kept (see remote.h,
 * remote_zero_extents), and the extent vectors the backends fill.
 *
 * Notes on the thread model: any thread.  The cache has two locks:
 * zc->query is held across a question to the backend so that concurrent
 * misses ask once, zc->lock only while the cache is read or replaced;
 * order query, then lock, never with r->lock held.  write_gen (atomic)
 * tells an answer that may predate one of our writes (see retry.c).
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "remote/wrapper-internal.h"

/* Block status is asked for this much at a time and the answer kept: the
 * streamer walks the disk in 2 MiB chunks, and a parent may pay for each
 * question in proportion to the file, not the range (nbdkit's file plugin
 * on tmpfs: SEEK_HOLE scans to the end of the file). */
#define ZCACHE_WINDOW (1ULL << 30)

void
remote_zcache_init (struct zcache *zc)
{
  pthread_mutex_init (&zc->lock, NULL);
  pthread_mutex_init (&zc->query, NULL);
}

void
remote_zcache_destroy (struct zcache *zc)
{
  pthread_mutex_destroy (&zc->lock);
  pthread_mutex_destroy (&zc->query);
  free (zc->v);
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
  ret = r->ops->zero_extents (r, r->h, offset, count, deadline_ns, v, n, err);
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
