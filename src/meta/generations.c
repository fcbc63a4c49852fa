/* corfs: change generations (docs/design.md rule 4): checkpoint, changed
 * extents, and the changed pages of a generation that a checkpoint has
 * closed.
 *
 * The current generation's changed map lives in memory (maps.c) and
 * reaches the index through batches like the other maps, keyed by its
 * generation number (meta.h).  A checkpoint writes whatever of it is not
 * yet durable under the old number, bumps the record's generation and
 * starts an empty map, in one commit.  Older generations are read only
 * from the index.
 *
 * Notes on the thread model: meta_checkpoint runs on a ctl job thread
 * (the checkpoint command) or a merge job's thread, through
 * cor_checkpoint, which keeps every writer out meanwhile (the engine's
 * gate) but not the committer: a batch may have taken changed chunks of
 * the old generation before the switch and commit them after it (see
 * meta_put_old_changed).  meta_changed_extents runs on the ctl thread
 * (the dirty command) and merge job threads.  Both hold m->lock
 * (store.c: a leaf) for their LMDB work; the extents' callback is called
 * after it is released, so it may call back into meta.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <lmdb.h>

#include "meta/meta-internal.h"

/* ---- checkpoint ---- */

static int
ckpt_txn (struct meta *m, MDB_txn *txn, void *argp)
{
  struct meta_disk *d = argp;
  struct bitmap *b = &d->maps[META_CHANGED];
  struct disk_value v = { .rec = d->rec, .id = d->id, .open = true };
  uint64_t words[CHUNK_WORDS];
  int rc;

  /* Every chunk of the old generation that is not yet durable, under the
   * old generation's number (d->rec changes only after the commit). */
  for (uint64_t c = 0; c < b->nr_chunks; c++) {
    if (!meta_bitmap_is_pending (b, c))
      continue;
    meta_bitmap_copy_chunk (b, c, words);
    rc = meta_put_chunk (m, txn, d, META_CHANGED, d->rec.generation, c, words);
    if (rc)
      return rc;
  }
  v.rec.generation++;
  return meta_put_record (m, txn, d->name, &v);
}

uint32_t
meta_checkpoint (struct meta_disk *d)
{
  struct meta *m = d->m;
  uint32_t gen = 0;
  int rc;

  pthread_mutex_lock (&m->lock);
  rc = meta_write_txn (m, "checkpoint", ckpt_txn, d);
  if (rc == 0) {
    /* Committed: now switch the in-memory map to the new generation. */
    d->rec.generation++;
    meta_bitmap_reset (&d->maps[META_CHANGED]);
    gen = d->rec.generation;
  }
  pthread_mutex_unlock (&m->lock);
  if (rc)
    errno = rc;
  return gen;
}

/* ---- pages of closed generations ---- */

bool
meta_chunk_is_old (const struct batch_chunk *bc)
{
  return bc->map == META_CHANGED && bc->gen != bc->d->rec.generation;
}

/* A META_CHANGED chunk taken before a checkpoint and committed after it.
 * The checkpoint wrote the chunk under the old generation too if bits
 * were set in it after the take (they made it pending again), and that
 * copy is newer than the batch's: merge, never overwrite, or those bits
 * would vanish from the old generation and an incremental backup from
 * it would miss their blocks. */
int
meta_put_old_changed (struct meta *m, MDB_txn *txn, const struct batch_chunk *bc)
{
  uint64_t words[CHUNK_WORDS], old[CHUNK_WORDS];
  int rc;

  memcpy (words, bc->words, sizeof words);
  rc = meta_get_chunk (m, txn, bc->d, META_CHANGED, bc->gen, bc->chunk, old);
  if (rc == 0)
    for (size_t i = 0; i < CHUNK_WORDS; i++)
      words[i] |= old[i];
  else if (rc != MDB_NOTFOUND)
    return rc;
  return meta_put_chunk (m, txn, bc->d, META_CHANGED, bc->gen, bc->chunk, words);
}

/* ---- changed extents ---- */

struct union_arg { uint64_t *u; uint64_t nr_chunks; };

/* OR one stored page into the union (pages outside the disk or malformed
 * are skipped, as loading skips them). */
static int
or_chunk (void *opaque, uint64_t chunk, const void *page, size_t len)
{
  struct union_arg *o = opaque;
  uint64_t w[CHUNK_WORDS];

  if (chunk >= o->nr_chunks || len != CHUNK_BYTES)
    return 0;
  memcpy (w, page, sizeof w);   /* LMDB data may be unaligned */
  for (size_t i = 0; i < CHUNK_WORDS; i++)
    o->u[chunk * CHUNK_WORDS + i] |= w[i];
  return 0;
}

/* Must be called with m->lock held.  OR into u the changed maps of
 * generations since to current - 1 from the index.  0 or an LMDB
 * error. */
static int
union_old_generations (struct meta_disk *d, uint32_t since, uint32_t current, uint64_t *u)
{
  struct union_arg o = { u, d->maps[META_CHANGED].nr_chunks };
  MDB_txn *txn = NULL;
  int rc = mdb_txn_begin (d->m->env, NULL, MDB_RDONLY, &txn);

  for (uint32_t g = since; rc == 0 && g < current; g++)
    rc = meta_for_each_chunk (d->m, txn, d, META_CHANGED, g, or_chunk, &o);
  if (txn)
    mdb_txn_abort (txn);
  return rc;
}

int
meta_changed_extents (struct meta_disk *d, uint32_t since, bool *widened,
                      int (*fn) (void *opaque, uint64_t first_blk, uint64_t nr_blks),
                      void *opaque)
{
  struct meta *m = d->m;
  uint64_t *u = calloc (d->maps[META_CHANGED].nr_chunks * CHUNK_WORDS, sizeof *u);
  uint32_t current;
  int rc;

  if (!u)
    return -1;
  pthread_mutex_lock (&m->lock);
  current = d->rec.generation;
  if (since == 0 || since > current) {
    pthread_mutex_unlock (&m->lock);
    free (u);
    errno = EINVAL;
    return -1;
  }
  *widened = d->rec.widened_generation >= since;
  /* Older generations from the index; the current one from memory (its
   * durable chunks are a subset of what memory holds). */
  rc = union_old_generations (d, since, current, u);
  meta_bitmap_or_into (&d->maps[META_CHANGED], u);
  pthread_mutex_unlock (&m->lock);
  if (rc) {
    free (u);
    errno = meta_mdb_errno ("read changed maps", rc);
    return -1;
  }
  meta_bits_for_each_run (u, d->nr_blocks, fn, opaque);
  free (u);
  return 0;
}
