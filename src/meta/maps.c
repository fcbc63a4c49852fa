/* corfs: the index's in-memory bitmaps (format and contract in meta.h).
 *
 * Each disk has META_NR_MAPS bitmaps of one bit per block, in chunks of
 * one 1024-byte page (the unit that LMDB stores), and beside each a
 * "pending" set of one bit per chunk: the chunks changed since the last
 * batch took them.  This file knows no LMDB.
 *
 * Notes on the thread model: the bitmaps are arrays of 64-bit words
 * updated with atomic read-modify-write operations, so that the hot path
 * takes no lock.  Callers: the FUSE worker threads (cor_read, cor_write:
 * test, set), the streamer's and readahead's workers (cor_populate: next,
 * set), a merge job and its writeback helpers (clear dirty), the ctl
 * thread (counts and runs for status and maps), and the committer through
 * batch.c (take pending chunks).  No lock is taken here, so the callers'
 * locks (the engine's d->lock among them) may be held.
 *
 * Ordering that the committer relies on: a writer sets the block bit,
 * *then* the pending bit; a batch clears the pending bit, *then* copies
 * the chunk (meta_bitmap_take_*, then meta_bitmap_copy_chunk).  So a bit
 * set concurrently with a batch is either in that batch's copy or its
 * chunk is pending again for the next one (possibly both: a harmless
 * rewrite).
 *
 * Growing (grow.c, under m->lock): the words are reserved at open for
 * the most blocks a disk may have, so they never move; the new bits are
 * set, then nr_chunks and the disk's nr_blocks grow (atomic stores), so
 * a lock-free reader sees the old count or the new one with its bits.
 *
 * The functions documented "only while the disk is being opened" or
 * "the caller keeps every writer out" use plain loads and stores: no
 * other thread can reach the map then (disk.c's open, the checkpoint).
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "meta/meta-internal.h"

/* The words are reserved for the most blocks a disk may have
 * (META_MAX_BLOCKS: 128 MiB of address space per map), not allocated:
 * the kernel backs only the pages that are touched, and growing a disk
 * (meta_bitmap_grow) then never moves an array that other threads read
 * without a lock.  Where the reservation is refused (strict overcommit),
 * the words are allocated at their size and the map cannot grow past its
 * last chunk. */
#define MAX_CHUNKS (META_MAX_BLOCKS / CHUNK_BITS)

int
meta_bitmap_init (struct bitmap *b, uint64_t nr_blocks)
{
  void *p;

  b->nr_chunks = (nr_blocks + CHUNK_BITS - 1) / CHUNK_BITS;
  if (b->nr_chunks == 0)
    b->nr_chunks = 1;
  b->cap_chunks = b->nr_chunks > MAX_CHUNKS ? b->nr_chunks : MAX_CHUNKS;
  b->mapped_bytes = b->cap_chunks * CHUNK_BYTES;
  p = mmap (NULL, b->mapped_bytes, PROT_READ | PROT_WRITE,
            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    b->mapped_bytes = 0;
    b->cap_chunks = b->nr_chunks;
    p = calloc (b->nr_chunks * CHUNK_WORDS, sizeof (uint64_t));
  }
  b->words = p;
  b->pending = calloc ((b->cap_chunks + 63) / 64, sizeof (uint64_t));
  if (!b->words || !b->pending) {
    meta_bitmap_free (b);
    return -1;
  }
  return 0;
}

void
meta_bitmap_free (struct bitmap *b)
{
  if (b->mapped_bytes)
    munmap (b->words, b->mapped_bytes);
  else
    free (b->words);
  free (b->pending);
  b->words = b->pending = NULL;
  b->mapped_bytes = 0;
}

bool
meta_bitmap_can_grow (const struct bitmap *b, uint64_t nr_blocks)
{
  return (nr_blocks + CHUNK_BITS - 1) / CHUNK_BITS <= b->cap_chunks;
}

void
meta_bitmap_grow (struct bitmap *b, uint64_t nr_blocks)
{
  uint64_t n = (nr_blocks + CHUNK_BITS - 1) / CHUNK_BITS;

  assert (n <= b->cap_chunks);
  if (n > b->nr_chunks)
    __atomic_store_n (&b->nr_chunks, n, __ATOMIC_SEQ_CST);
}

void
meta_bitmap_set_tail (struct bitmap *b, uint64_t first, uint64_t end, bool set)
{
  for (uint64_t blk = first; blk < end; ) {
    uint64_t w = blk / 64, bit = blk % 64;
    uint64_t n = 64 - bit < end - blk ? 64 - bit : end - blk;
    uint64_t mask = (n == 64 ? ~0ULL : ((1ULL << n) - 1)) << bit, old;
    if (set) {
      old = __atomic_fetch_or (&b->words[w], mask, __ATOMIC_SEQ_CST);
      __atomic_fetch_add (&b->count, __builtin_popcountll (mask & ~old), __ATOMIC_SEQ_CST);
    }
    else {
      old = __atomic_fetch_and (&b->words[w], ~mask, __ATOMIC_SEQ_CST);
      __atomic_fetch_sub (&b->count, __builtin_popcountll (mask & old), __ATOMIC_SEQ_CST);
    }
    blk += n;
  }
}

void
meta_bitmap_recount (struct bitmap *b)
{
  uint64_t n = 0;

  for (uint64_t i = 0; i < b->nr_chunks * CHUNK_WORDS; i++)
    n += __builtin_popcountll (b->words[i]);
  b->count = n;
}

void
meta_bitmap_load_chunk (struct bitmap *b, uint64_t c, const void *page)
{
  assert (c < b->nr_chunks);
  memcpy (&b->words[c * CHUNK_WORDS], page, CHUNK_BYTES);
}

void
meta_bitmap_clamp_tail (struct meta_disk *d)
{
  for (int map = 0; map < META_NR_MAPS; map++) {
    struct bitmap *b = &d->maps[map];
    uint64_t total = b->nr_chunks * CHUNK_BITS;
    for (uint64_t blk = d->nr_blocks; blk < total; blk++)
      b->words[blk / 64] &= ~(1ULL << (blk % 64));
  }
}

void
meta_bitmap_widen (struct bitmap *dst, const struct bitmap *src)
{
  assert (dst->nr_chunks == src->nr_chunks);
  for (uint64_t i = 0; i < src->nr_chunks * CHUNK_WORDS; i++)
    dst->words[i] |= src->words[i];
  for (uint64_t c = 0; c < src->nr_chunks; c++)
    dst->pending[c / 64] |= 1ULL << (c % 64);
  meta_bitmap_recount (dst);
}

void
meta_bitmap_reset (struct bitmap *b)
{
  memset (b->words, 0, b->nr_chunks * CHUNK_WORDS * sizeof (uint64_t));
  memset (b->pending, 0, (b->nr_chunks + 63) / 64 * sizeof (uint64_t));
  b->count = 0;
}

/* ---- the pending sets ---- */

static void
mark_pending (struct bitmap *b, uint64_t blk)
{
  uint64_t chunk = blk / CHUNK_BITS;
  __atomic_fetch_or (&b->pending[chunk / 64], 1ULL << (chunk % 64), __ATOMIC_SEQ_CST);
}

bool
meta_bitmap_is_pending (struct bitmap *b, uint64_t c)
{
  return __atomic_load_n (&b->pending[c / 64], __ATOMIC_SEQ_CST) & 1ULL << (c % 64);
}

bool
meta_bitmap_take_chunk (struct bitmap *b, uint64_t c)
{
  uint64_t bit = 1ULL << (c % 64);
  return __atomic_fetch_and (&b->pending[c / 64], ~bit, __ATOMIC_SEQ_CST) & bit;
}

uint64_t
meta_bitmap_take_word (struct bitmap *b, uint64_t pw)
{
  /* A plain look first: most words are clear, and an exchange would
   * write every one of them. */
  if (!__atomic_load_n (&b->pending[pw], __ATOMIC_RELAXED))
    return 0;
  return __atomic_exchange_n (&b->pending[pw], 0, __ATOMIC_SEQ_CST);
}

void
meta_bitmap_put_back (struct bitmap *b, uint64_t pw, uint64_t bits)
{
  __atomic_fetch_or (&b->pending[pw], bits, __ATOMIC_SEQ_CST);
}

void
meta_bitmap_copy_chunk (struct bitmap *b, uint64_t c, uint64_t words[CHUNK_WORDS])
{
  for (size_t i = 0; i < CHUNK_WORDS; i++)
    words[i] = __atomic_load_n (&b->words[c * CHUNK_WORDS + i], __ATOMIC_SEQ_CST);
}

/* ---- the hot path ---- */

bool
meta_test (struct meta_disk *d, enum meta_map map, uint64_t blk)
{
  assert (blk < __atomic_load_n (&d->nr_blocks, __ATOMIC_RELAXED));
  return (__atomic_load_n (&d->maps[map].words[blk / 64], __ATOMIC_ACQUIRE)
          >> (blk % 64)) & 1;
}

static void
update_range (struct meta_disk *d, enum meta_map map, uint64_t blk,
              uint64_t nr, bool set)
{
  struct bitmap *b = &d->maps[map];
  uint64_t end = blk + nr;

  assert (end <= __atomic_load_n (&d->nr_blocks, __ATOMIC_RELAXED) && end >= blk);
  while (blk < end) {
    uint64_t w = blk / 64, bit = blk % 64;
    uint64_t n = 64 - bit < end - blk ? 64 - bit : end - blk;
    uint64_t mask = (n == 64 ? ~0ULL : ((1ULL << n) - 1)) << bit;
    uint64_t old;
    if (set) {
      old = __atomic_fetch_or (&b->words[w], mask, __ATOMIC_SEQ_CST);
      __atomic_fetch_add (&b->count, __builtin_popcountll (mask & ~old), __ATOMIC_SEQ_CST);
    }
    else {
      old = __atomic_fetch_and (&b->words[w], ~mask, __ATOMIC_SEQ_CST);
      __atomic_fetch_sub (&b->count, __builtin_popcountll (mask & old), __ATOMIC_SEQ_CST);
    }
    /* Pending after the bit: see the thread-model note. */
    mark_pending (b, blk);
    blk += n;
  }
}

void
meta_set (struct meta_disk *d, enum meta_map map, uint64_t blk, uint64_t nr)
{
  update_range (d, map, blk, nr, true);
}

void
meta_clear (struct meta_disk *d, enum meta_map map, uint64_t blk, uint64_t nr)
{
  update_range (d, map, blk, nr, false);
}

uint64_t
meta_count (struct meta_disk *d, enum meta_map map)
{
  return __atomic_load_n (&d->maps[map].count, __ATOMIC_SEQ_CST);
}

uint64_t
meta_count_union (struct meta_disk *d, enum meta_map a, enum meta_map b)
{
  uint64_t n = 0, nw = __atomic_load_n (&d->maps[a].nr_chunks, __ATOMIC_ACQUIRE) * CHUNK_WORDS;

  for (uint64_t i = 0; i < nw; i++)
    n += __builtin_popcountll (__atomic_load_n (&d->maps[a].words[i], __ATOMIC_RELAXED) |
                               __atomic_load_n (&d->maps[b].words[i], __ATOMIC_RELAXED));
  return n;
}

uint64_t
meta_next (struct meta_disk *d, enum meta_map map, bool value, uint64_t from)
{
  struct bitmap *b = &d->maps[map];
  uint64_t nr = __atomic_load_n (&d->nr_blocks, __ATOMIC_ACQUIRE);

  while (from < nr) {
    uint64_t w = __atomic_load_n (&b->words[from / 64], __ATOMIC_ACQUIRE);
    if (!value)
      w = ~w;
    w &= ~0ULL << (from % 64);
    if (w) {
      uint64_t r = (from & ~63ULL) + __builtin_ctzll (w);
      return r < nr ? r : nr;
    }
    from = (from & ~63ULL) + 64;
  }
  return nr;
}

uint64_t
meta_nr_blocks (const struct meta_disk *d)
{
  return __atomic_load_n (&d->nr_blocks, __ATOMIC_ACQUIRE);
}

const char *
meta_disk_name (const struct meta_disk *d)
{
  return d->name;
}

/* ---- word arrays (a union of maps, built by generations.c) ---- */

void
meta_bitmap_or_into (struct bitmap *b, uint64_t *u)
{
  for (uint64_t i = 0; i < b->nr_chunks * CHUNK_WORDS; i++)
    u[i] |= __atomic_load_n (&b->words[i], __ATOMIC_SEQ_CST);
}

void
meta_bits_for_each_run (const uint64_t *u, uint64_t nr_bits,
                        int (*fn) (void *opaque, uint64_t first, uint64_t nr),
                        void *opaque)
{
  for (uint64_t blk = 0; blk < nr_bits; ) {
    if (!(u[blk / 64] >> (blk % 64) & 1)) {
      blk++;
      continue;
    }
    uint64_t end = blk + 1;
    while (end < nr_bits && (u[end / 64] >> (end % 64) & 1))
      end++;
    if (fn (opaque, blk, end - blk) == -1)
      break;
    blk = end;
  }
}
