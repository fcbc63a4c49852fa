/* corfs: group commit of the index (meta_batch_*; protocol in meta.h).
 *
 * A batch takes every open disk's pending chunks (copies of their pages),
 * the committer fdatasyncs the overlays they describe, and the batch
 * commits them in one LMDB transaction: data before pointer (docs/design.md
 * rules 1 and 2).  Chunks that cannot be committed go back to the pending
 * sets, so later batches are cumulative.
 *
 * Notes on the thread model: meta.h asks for a single committer, one
 * batch at a time: two batches interleaved could commit an older copy of
 * a chunk after a newer one.  The engine's committer thread (src/cor
 * commit.c) runs them; when it is not running (before the engine starts,
 * and from the final commit of cor_engine_stop on) cor_commit_once runs
 * on the thread that flushes or stops instead.  Taking,
 * dropping and committing each hold m->lock (store.c: a leaf); between
 * begin and commit the committer syncs overlays without it, so that
 * record updates and other disks' opens go on meanwhile.  The writers
 * that set bits concurrently take no lock: maps.c's thread model says
 * why a bit set during a take is never lost.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <lmdb.h>

#include "common/log.h"
#include "meta/meta-internal.h"

struct meta_batch {
  struct meta *m;
  struct batch_chunk *v;
  size_t n, cap;
};

/* Must be called with m->lock held.  Move every disk's orphans (see
 * meta_batch_drop) into b first; a disk whose orphans cannot be moved
 * (out of memory) keeps them for the next batch. */
static void
take_orphans (struct meta_batch *b)
{
  for (struct meta_disk *d = b->m->disks; d; d = d->next) {
    struct batch_chunk *nv;
    if (!d->nr_orphans ||
        !(nv = realloc (b->v, (b->n + d->nr_orphans) * sizeof *nv)))
      continue;
    memcpy (nv + b->n, d->orphans, d->nr_orphans * sizeof *nv);
    b->v = nv;
    b->n = b->cap = b->n + d->nr_orphans;
    free (d->orphans);
    d->orphans = NULL;
    d->nr_orphans = 0;
  }
}

/* Room for one more chunk in b.  0, or -1 when out of memory. */
static int
reserve_one (struct meta_batch *b)
{
  size_t cap;
  struct batch_chunk *nv;

  if (b->n < b->cap)
    return 0;
  cap = b->cap ? b->cap * 2 : 64;
  if (!(nv = realloc (b->v, cap * sizeof *nv)))
    return -1;
  b->v = nv;
  b->cap = cap;
  return 0;
}

/* Must be called with m->lock held (reads d->rec.generation).  Take the
 * pending chunks of d's map into b.  0, or -1 when out of memory: the
 * chunks not taken are pending again. */
static int
take_map (struct meta_batch *b, struct meta_disk *d, enum meta_map map)
{
  struct bitmap *bm = &d->maps[map];

  for (uint64_t pw = 0; pw < (bm->nr_chunks + 63) / 64; pw++) {
    /* Clear pending, then copy: see maps.c's thread model. */
    uint64_t bits = meta_bitmap_take_word (bm, pw);
    while (bits) {
      uint64_t c = pw * 64 + __builtin_ctzll (bits);
      if (reserve_one (b) == -1) {
        meta_bitmap_put_back (bm, pw, bits);
        return -1;
      }
      bits &= bits - 1;
      struct batch_chunk *bc = &b->v[b->n++];
      bc->d = d;
      bc->map = map;
      bc->gen = d->rec.generation;
      bc->chunk = c;
      meta_bitmap_copy_chunk (bm, c, bc->words);
    }
  }
  return 0;
}

struct meta_batch *
meta_batch_begin (struct meta *m)
{
  struct meta_batch *b = calloc (1, sizeof *b);

  if (!b)
    return NULL;
  b->m = m;
  pthread_mutex_lock (&m->lock);
  take_orphans (b);
  for (struct meta_disk *d = m->disks; d; d = d->next)
    for (int map = 0; map < META_NR_MAPS; map++)
      if (take_map (b, d, map) == -1) {
        /* Put back what was taken, then give up. */
        pthread_mutex_unlock (&m->lock);
        meta_batch_drop (b, NULL);
        free (b->v);
        free (b);
        errno = ENOMEM;
        return NULL;
      }
  pthread_mutex_unlock (&m->lock);
  return b;
}

bool
meta_batch_has (const struct meta_batch *b, const struct meta_disk *d)
{
  for (size_t i = 0; i < b->n; i++)
    if (b->v[i].d == d)
      return true;
  return false;
}

/* Must be called with m->lock held.  Keep bc, a chunk of a closed
 * generation, in its disk's orphans. */
static void
keep_orphan (const struct batch_chunk *bc)
{
  struct meta_disk *od = bc->d;
  struct batch_chunk *nv = realloc (od->orphans, (od->nr_orphans + 1) * sizeof *nv);

  if (!nv) {
    log_error ("meta: disk %s: out of memory keeping changed blocks of generation %"
               PRIu32 " (chunk %" PRIu64 "): an incremental backup from it may miss "
               "them", od->name, bc->gen, bc->chunk);
    return;
  }
  od->orphans = nv;
  od->orphans[od->nr_orphans++] = *bc;
}

/* Remove d's chunks from the batch (all chunks if d is NULL) and put them
 * back in the pending sets.  A META_CHANGED chunk of a generation that a
 * checkpoint has closed since it was taken cannot go back there (the
 * pending set and the in-memory map are the new generation's): it waits
 * in the disk's orphans for the next batch, which commits it under its
 * own generation (merged, see meta_put_old_changed).  A disk whose
 * overlay failed to sync is read-only from then on: its chunks are
 * dropped from every batch and never committed, which is what rule 7
 * wants. */
void
meta_batch_drop (struct meta_batch *b, struct meta_disk *d)
{
  size_t j = 0;

  pthread_mutex_lock (&b->m->lock);
  for (size_t i = 0; i < b->n; i++) {
    struct batch_chunk *bc = &b->v[i];
    if (d != NULL && bc->d != d)
      b->v[j++] = *bc;
    else if (meta_chunk_is_old (bc))
      keep_orphan (bc);
    else
      meta_bitmap_put_back (&bc->d->maps[bc->map], bc->chunk / 64, 1ULL << (bc->chunk % 64));
  }
  b->n = j;
  pthread_mutex_unlock (&b->m->lock);
}

static int
batch_txn (struct meta *m, MDB_txn *txn, void *argp)
{
  struct meta_batch *b = argp;

  for (size_t i = 0; i < b->n; i++) {
    struct batch_chunk *bc = &b->v[i];
    int rc = meta_chunk_is_old (bc)
      ? meta_put_old_changed (m, txn, bc)
      : meta_put_chunk (m, txn, bc->d, bc->map, bc->gen, bc->chunk, bc->words);
    if (rc)
      return rc;
  }
  return 0;
}

int
meta_batch_commit (struct meta_batch *b)
{
  struct meta *m = b->m;
  int rc = 0;

  if (b->n > 0) {
    pthread_mutex_lock (&m->lock);
    rc = meta_write_txn (m, "commit", batch_txn, b);
    pthread_mutex_unlock (&m->lock);
    if (rc)
      meta_batch_drop (b, NULL);
  }
  free (b->v);
  free (b);
  if (rc) {
    errno = rc;
    return -1;
  }
  return 0;
}
