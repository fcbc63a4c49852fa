/* corfs: growing a disk (meta_disk_grow): the record's disk_size and the
 * new blocks' bits, in one commit.
 *
 * The blocks past the old end are marked present (they read as zeros
 * from the extended overlay and are never fetched: the parent has no such
 * blocks), dirty (the parent lacks them: a merge must not think it
 * current) and changed (a backup must copy them).  The size and those
 * bits become durable together: a crash leaves either the old size, or
 * the new one with the new blocks present.
 *
 * The pages written are built from what is stored, not from memory: the
 * boundary page (the one holding the old last block) may hold bits of
 * old blocks that no batch has committed yet, whose data the committer
 * has not synced (data before pointer, docs/design.md rules 1 and 2).  The
 * in-memory pages get the same new bits, so the next batch that writes
 * the boundary page keeps them.  A batch taken before the grow and
 * committed after it would drop them from the boundary page: the caller
 * commits first (cor_flush, with every block owned, so nothing is
 * pending), and the page is marked pending again besides.
 *
 * Notes on the thread model: called from a FUSE worker thread (setattr
 * size, through cor_disk_grow, which holds owner_lock and owns every
 * block: no writer and no fetch runs).  Takes m->lock (store.c: a leaf)
 * for its whole run.  The committer may take a batch meanwhile: it waits
 * for m->lock, and a batch's copy of the boundary page either predates
 * the new bits or carries them (harmless: the commit that writes them is
 * this one or later).  Lock-free readers (meta_next, meta_test) see
 * nr_blocks grow only after the commit and after the new bits are set,
 * so they never find a new block missing.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include <lmdb.h>

#include "common/log.h"
#include "meta/meta-internal.h"

/* The maps the new blocks are set in (not META_SUSPECT: zeros past the
 * parent's end are exactly what the disk holds). */
static const enum meta_map grow_maps[] = { META_PRESENT, META_DIRTY, META_CHANGED };
#define NR_GROW_MAPS (sizeof grow_maps / sizeof grow_maps[0])

struct grow_arg {
  struct meta_disk *d;
  const struct meta_record *rec;        /* with the new disk_size */
  uint64_t old_nr, new_nr;
};

/* Set bits [first, end) of page c (blocks c * CHUNK_BITS on), clearing
 * what lies from first on (stray bits past the old end). */
static void
page_set_tail (uint64_t words[CHUNK_WORDS], uint64_t c, uint64_t first, uint64_t end)
{
  uint64_t base = c * CHUNK_BITS;

  for (uint64_t b = base; b < base + CHUNK_BITS; b++) {
    uint64_t *w = &words[(b - base) / 64], bit = 1ULL << (b % 64);
    if (b >= first && b < end)
      *w |= bit;
    else if (b >= first)
      *w &= ~bit;
  }
}

/* Must be called with m->lock held: meta_write_txn's fn, safe to rerun. */
static int
grow_txn (struct meta *m, MDB_txn *txn, void *argp)
{
  struct grow_arg *a = argp;
  struct meta_disk *d = a->d;
  struct disk_value v = { .rec = *a->rec, .id = d->id, .open = true };
  uint64_t c0 = a->old_nr / CHUNK_BITS, c1 = (a->new_nr + CHUNK_BITS - 1) / CHUNK_BITS;
  int rc;

  for (size_t i = 0; i < NR_GROW_MAPS; i++)
    for (uint64_t c = c0; c < c1; c++) {
      uint64_t words[CHUNK_WORDS];
      rc = meta_get_chunk (m, txn, d, grow_maps[i], d->rec.generation, c, words);
      if (rc == MDB_NOTFOUND)
        memset (words, 0, sizeof words);
      else if (rc)
        return rc;
      page_set_tail (words, c, a->old_nr, a->new_nr);
      rc = meta_put_chunk (m, txn, d, grow_maps[i], d->rec.generation, c, words);
      if (rc)
        return rc;
    }
  return meta_put_record (m, txn, d->name, &v);
}

/* Must be called with m->lock held.  0 or an errno. */
static int
grow_locked (struct meta_disk *d, uint64_t new_size)
{
  struct meta_record r = d->rec;
  uint64_t bs = r.block_size, new_nr = new_size / bs + (new_size % bs != 0);
  struct grow_arg a = { d, &r, d->nr_blocks, new_nr };
  int rc;

  if (new_size < r.disk_size)
    return EINVAL;
  if (new_size == r.disk_size)
    return 0;
  if (new_nr > META_MAX_BLOCKS)
    return EFBIG;
  for (int map = 0; map < META_NR_MAPS; map++)
    if (!meta_bitmap_can_grow (&d->maps[map], new_nr))
      return EFBIG;
  r.disk_size = new_size;
  /* The bits first (past nr_blocks: no reader looks there yet), so that
   * a batch that copies the boundary page after the commit keeps them. */
  for (size_t i = 0; i < NR_GROW_MAPS; i++)
    meta_bitmap_set_tail (&d->maps[grow_maps[i]], a.old_nr, new_nr, true);
  rc = meta_write_txn (d->m, "grow disk", grow_txn, &a);
  if (rc) {
    for (size_t i = 0; i < NR_GROW_MAPS; i++)
      meta_bitmap_set_tail (&d->maps[grow_maps[i]], a.old_nr, new_nr, false);
    return rc;
  }
  d->rec = r;
  for (int map = 0; map < META_NR_MAPS; map++)
    meta_bitmap_grow (&d->maps[map], new_nr);
  /* A batch taken before this commit and committed after it would store
   * the boundary page without the new bits: the caller flushed first
   * (meta.h), and the page is pending again all the same. */
  for (size_t i = 0; i < NR_GROW_MAPS; i++)
    meta_bitmap_put_back (&d->maps[grow_maps[i]], a.old_nr / CHUNK_BITS / 64,
                          1ULL << (a.old_nr / CHUNK_BITS % 64));
  __atomic_store_n (&d->nr_blocks, new_nr, __ATOMIC_RELEASE);
  return 0;
}

int
meta_disk_grow (struct meta_disk *d, uint64_t new_size, struct meta_record *out)
{
  int rc;

  pthread_mutex_lock (&d->m->lock);
  rc = grow_locked (d, new_size);
  if (out)
    *out = d->rec;
  pthread_mutex_unlock (&d->m->lock);
  if (rc) {
    errno = rc;
    return -1;
  }
  return 0;
}
