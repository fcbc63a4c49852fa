/* corfs: the index's own declarations, shared by its files only (other
 * modules use meta.h).
 *
 * The index, one job per file:
 *
 *   maps.c         the in-memory chunked bitmaps and their pending sets:
 *                  the hot path, lock-free, and no LMDB
 *   store.c        the LMDB environment: open, write transactions that
 *                  grow the map, errno mapping, the keys of the maps
 *                  database and its pages
 *   batch.c        group commit of the pending chunks (meta_batch_*)
 *   records.c      disk records: the key=value encoding, the state names,
 *                  reading, updating, mode and owner
 *   disk.c         a disk's lifetime: open (load, widen, mark open), close,
 *                  seal
 *   grow.c         growing a disk: its size and the new blocks' bits
 *   generations.c  change generations: checkpoint, changed extents, and
 *                  the pages of a generation that a checkpoint closed
 *
 * The first half of this header needs no LMDB (maps.c uses it and does
 * not include <lmdb.h>); the second half is seen only by the files that
 * include <lmdb.h> before this header.
 */
#ifndef CORFS_META_INTERNAL_H
#define CORFS_META_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "meta/meta.h"

/* A bitmap is stored in chunks of one 1024-byte page (8192 blocks), below
 * LMDB's overflow threshold; the pending set has one bit per chunk. */
#define CHUNK_BYTES 1024
#define CHUNK_WORDS (CHUNK_BYTES / 8)
#define CHUNK_BITS (CHUNK_BYTES * 8)

struct bitmap {
  uint64_t *words;              /* atomic; nr_chunks * CHUNK_WORDS words in use,
                                 * cap_chunks * CHUNK_WORDS reserved */
  uint64_t *pending;            /* atomic; one bit per chunk, cap_chunks bits */
  uint64_t nr_chunks;           /* grows (atomic store) under m->lock, never shrinks */
  uint64_t cap_chunks;          /* reserved: the words never move */
  size_t mapped_bytes;          /* of words, if mmap'd (else calloc'd) */
  uint64_t count;               /* atomic; bits set, kept by the updates */
};

/* A chunk taken by a batch: a copy of its page, and the generation it
 * belonged to when taken (META_CHANGED). */
struct batch_chunk {
  struct meta_disk *d;
  enum meta_map map;
  uint32_t gen;
  uint64_t chunk;
  uint64_t words[CHUNK_WORDS];
};

struct meta_disk {
  struct meta *m;
  char name[65];
  uint32_t id;                  /* the disk's number in the maps' keys */
  uint64_t nr_blocks;           /* grows (atomic store) under m->lock */
  struct meta_record rec;       /* protected by m->lock */
  struct bitmap maps[META_NR_MAPS];
  struct meta_disk *next;       /* protected by m->lock */
  /* META_CHANGED chunks of an earlier generation whose batch failed after
   * a checkpoint (see meta_batch_drop); protected by m->lock. */
  struct batch_chunk *orphans;
  size_t nr_orphans;
  int slot;                     /* in the supervisor's state (shared.c); -1 */
};

/* ---- maps.c: the bitmaps (any thread, no lock; see its thread model) ---- */

/* Allocate an all-zero map of nr_blocks bits (at least one chunk).  0, or
 * -1 (out of memory: nothing allocated). */
int meta_bitmap_init (struct bitmap *b, uint64_t nr_blocks);
void meta_bitmap_free (struct bitmap *b);

/* Growing a disk (meta_disk_grow, with m->lock held).  can_grow: whether
 * the reserved words hold nr_blocks bits.  grow: put chunks up to
 * nr_blocks in use (the words past the old end are zero: nothing sets a
 * bit past nr_blocks but set_tail).  set_tail: set or clear bits
 * [first, end) with the count kept, without the nr_blocks check nor
 * marking chunks pending: the grow writes the pages itself. */
bool meta_bitmap_can_grow (const struct bitmap *b, uint64_t nr_blocks);
void meta_bitmap_grow (struct bitmap *b, uint64_t nr_blocks);
void meta_bitmap_set_tail (struct bitmap *b, uint64_t first, uint64_t end, bool set);

/* Recompute the count after writing words directly (loading, widening). */
void meta_bitmap_recount (struct bitmap *b);

/* Copy page (LMDB's memory: memcpy, as it has no alignment guarantee)
 * into chunk c.  Only while the disk is being opened. */
void meta_bitmap_load_chunk (struct bitmap *b, uint64_t c, const void *page);

/* Clear the trailing bits beyond nr_blocks in every map (a resized
 * record, a stray bit).  Only while the disk is being opened. */
void meta_bitmap_clamp_tail (struct meta_disk *d);

/* dst |= src, with every chunk marked pending and dst recounted: the
 * widening after an unclean shutdown.  Only while the disk is being
 * opened. */
void meta_bitmap_widen (struct bitmap *dst, const struct bitmap *src);

/* Empty the map and its pending set (a checkpoint's new generation).
 * The caller keeps every writer out. */
void meta_bitmap_reset (struct bitmap *b);

/* The pending protocol (maps.c's thread model): take a chunk's pending
 * bit *before* copying its page with meta_bitmap_copy_chunk. */
bool meta_bitmap_is_pending (struct bitmap *b, uint64_t c);
/* Clear chunk c's pending bit; whether it was set. */
bool meta_bitmap_take_chunk (struct bitmap *b, uint64_t c);
/* Clear and return the pending word pw (chunks pw * 64 to pw * 64 + 63). */
uint64_t meta_bitmap_take_word (struct bitmap *b, uint64_t pw);
/* Mark chunks pending again: the bits of word pw (taken, but not
 * committed). */
void meta_bitmap_put_back (struct bitmap *b, uint64_t pw, uint64_t bits);
/* Copy chunk c's page out, word by word (atomic loads). */
void meta_bitmap_copy_chunk (struct bitmap *b, uint64_t c, uint64_t words[CHUNK_WORDS]);

/* u[i] |= word i of the map, for every word (atomic loads). */
void meta_bitmap_or_into (struct bitmap *b, uint64_t *u);

/* Call fn for each maximal run of set bits in u[] below nr_bits, in
 * order; stop early (without error) when fn returns -1. */
void meta_bits_for_each_run (const uint64_t *u, uint64_t nr_bits,
                             int (*fn) (void *opaque, uint64_t first, uint64_t nr),
                             void *opaque);

/* ---- the LMDB side: only for the files that include <lmdb.h> ---- */
#ifdef MDB_VERSION_MAJOR
#include <pthread.h>

struct meta {
  MDB_env *env;
  MDB_dbi info_dbi, disks_dbi, maps_dbi;
  /* Serialises every LMDB transaction and guards the list of open disks
   * and their records.  A leaf: taken after the engine's owner_lock and
   * attr_lock, never under its other locks; nothing is called out of the
   * module with it held (store.c). */
  pthread_mutex_t lock;
  size_t map_size;              /* protected by lock */
  struct meta_disk *disks;      /* protected by lock */
  int shm_fd;                   /* the supervisor's memfd (meta_share); -1 */
  void *shm_base;               /* its header and slot table, mapped; NULL */
};

/* shared.c */

/* Must be called with m->lock held, after d's open committed and before
 * it joins m->disks.  Supervised: move d's maps into its slot of the
 * supervisor's state, adopting (OR, every chunk pending) what a dead
 * worker left there (*adopted).  Unsupervised: nothing.  0 or errno. */
int meta_shared_adopt (struct meta *m, struct meta_disk *d, bool *adopted);

/* Must be called with m->lock held, after a clean close committed: free
 * d's slot. */
void meta_shared_release (struct meta *m, struct meta_disk *d);

/* A record as stored: the public record plus what only the index sees. */
struct disk_value {
  struct meta_record rec;
  uint32_t id;
  bool open;                    /* set while a daemon has the disk open */
};

/* store.c */

/* Map an LMDB return code (or an errno from the module's own code) to
 * errno, logging LMDB's message with op. */
int meta_mdb_errno (const char *op, int rc);

/* Must be called with m->lock held.  Run fn in a write transaction and
 * commit it; on MDB_MAP_FULL grow the map and run fn again from the
 * start (fn must be safe to rerun).  0, or an errno (logged). */
int meta_write_txn (struct meta *m, const char *op,
                    int (*fn) (struct meta *m, MDB_txn *txn, void *arg), void *arg);

/* Must be called with m->lock held.  Store chunk c of d's map (under
 * generation gen for META_CHANGED), or delete it if the page is all
 * zero.  0 or an LMDB error. */
int meta_put_chunk (struct meta *m, MDB_txn *txn, const struct meta_disk *d,
                    enum meta_map map, uint32_t gen, uint64_t c,
                    const uint64_t words[CHUNK_WORDS]);

/* Must be called with m->lock held.  Read chunk c of d's map (of
 * generation gen) into words[] (copied out).  0, MDB_NOTFOUND if there is
 * none or it is malformed (ignored, as loading ignores it), or an LMDB
 * error. */
int meta_get_chunk (struct meta *m, MDB_txn *txn, const struct meta_disk *d,
                    enum meta_map map, uint32_t gen, uint64_t c,
                    uint64_t words[CHUNK_WORDS]);

/* Must be called with m->lock held.  Call fn for each page stored for d's
 * map (of generation gen, for META_CHANGED), in chunk order.  The page is
 * LMDB's memory: valid only until txn ends, and with no alignment
 * guarantee (copy it out with memcpy).  Stops at the first non-zero
 * return of fn and returns it; else 0, or an LMDB error. */
int meta_for_each_chunk (struct meta *m, MDB_txn *txn, const struct meta_disk *d,
                         enum meta_map map, uint32_t gen,
                         int (*fn) (void *opaque, uint64_t c, const void *page, size_t len),
                         void *opaque);

/* records.c */

/* Must be called with m->lock held.  Store or read a disk's record.
 * 0, or an LMDB error (ENOMEM). */
int meta_put_record (struct meta *m, MDB_txn *txn, const char *name,
                     const struct disk_value *v);
int meta_get_record (struct meta *m, MDB_txn *txn, const char *name,
                     struct disk_value *v);

/* generations.c */

/* Must be called with m->lock held.  Commit a META_CHANGED chunk taken
 * before a checkpoint into its own, closed generation, merged with what
 * that generation already holds.  0 or an LMDB error. */
int meta_put_old_changed (struct meta *m, MDB_txn *txn, const struct batch_chunk *bc);

/* Must be called with m->lock held.  Whether a META_CHANGED chunk was
 * taken in a generation that a checkpoint has closed since. */
bool meta_chunk_is_old (const struct batch_chunk *bc);

#endif /* MDB_VERSION_MAJOR */

#endif
