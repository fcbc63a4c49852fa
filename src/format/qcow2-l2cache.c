/* corfs: the qcow2 reader's cache of L2 tables, in bounded memory.
 *
 * A 1 TiB image of 64 KiB clusters has 2048 L2 tables of 64 KiB: read
 * each once per pass at most, and keep as many as the setting allows
 * (the least recently used goes first).  Slots are a hash table chained
 * by index, with a doubly linked LRU list; a slot's table is allocated
 * when the slot is first filled, so the memory follows the image's use.
 * Callers copy the entries they need out under the lock, so an eviction
 * never pulls a table from under a reader.
 *
 * Threads: any.  c->lock protects everything and is a leaf: no call is
 * made under it other than malloc.  Two threads missing the same table
 * both read it; the second put finds it cached and keeps the first.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "format/qcow2-internal.h"

#define NIL UINT32_MAX
#define MAX_SLOTS (1U << 20)

struct slot {
  uint64_t offset;
  uint64_t *table;              /* words, host order; NULL until first filled */
  uint32_t hnext;               /* in its bucket */
  uint32_t prev, next;          /* LRU: prev is more recent */
};

struct qcow2_l2cache {
  pthread_mutex_t lock;
  size_t words;                 /* per table */
  uint32_t max, used;           /* slots */
  uint32_t nbuckets;            /* a power of two */
  uint32_t *buckets;
  struct slot *slots;
  uint32_t head, tail;          /* most and least recently used */
};

static uint32_t
bucket_of (const struct qcow2_l2cache *c, uint64_t offset)
{
  return (uint32_t) ((offset >> 9) * 0x9e3779b97f4a7c15ULL >> 32) & (c->nbuckets - 1);
}

struct qcow2_l2cache *
qcow2_l2cache_new (size_t table_bytes, uint64_t max_bytes)
{
  struct qcow2_l2cache *c = calloc (1, sizeof *c);
  uint64_t max = max_bytes / table_bytes;

  if (c == NULL)
    return NULL;
  if (max < 1)
    max = 1;
  if (max > MAX_SLOTS)
    max = MAX_SLOTS;
  c->max = max;
  c->words = table_bytes / 8;
  c->nbuckets = 1;
  while (c->nbuckets < 2 * c->max)
    c->nbuckets *= 2;
  c->buckets = malloc (c->nbuckets * sizeof *c->buckets);
  c->slots = calloc (c->max, sizeof *c->slots);
  if (c->buckets == NULL || c->slots == NULL) {
    free (c->buckets);
    free (c->slots);
    free (c);
    return NULL;
  }
  memset (c->buckets, 0xff, c->nbuckets * sizeof *c->buckets);
  c->head = c->tail = NIL;
  pthread_mutex_init (&c->lock, NULL);
  return c;
}

void
qcow2_l2cache_free (struct qcow2_l2cache *c)
{
  if (c == NULL)
    return;
  for (uint32_t i = 0; i < c->used; i++)
    free (c->slots[i].table);
  pthread_mutex_destroy (&c->lock);
  free (c->buckets);
  free (c->slots);
  free (c);
}

static void
lru_unlink (struct qcow2_l2cache *c, uint32_t i)
{
  struct slot *s = &c->slots[i];

  if (s->prev != NIL)
    c->slots[s->prev].next = s->next;
  else
    c->head = s->next;
  if (s->next != NIL)
    c->slots[s->next].prev = s->prev;
  else
    c->tail = s->prev;
}

static void
lru_push_head (struct qcow2_l2cache *c, uint32_t i)
{
  struct slot *s = &c->slots[i];

  s->prev = NIL;
  s->next = c->head;
  if (c->head != NIL)
    c->slots[c->head].prev = i;
  c->head = i;
  if (c->tail == NIL)
    c->tail = i;
}

static uint32_t
find (const struct qcow2_l2cache *c, uint64_t offset)
{
  uint32_t i = c->buckets[bucket_of (c, offset)];

  while (i != NIL && c->slots[i].offset != offset)
    i = c->slots[i].hnext;
  return i;
}

bool
qcow2_l2cache_get (struct qcow2_l2cache *c, uint64_t offset, size_t first, size_t n,
                   uint64_t *out)
{
  uint32_t i;

  pthread_mutex_lock (&c->lock);
  i = find (c, offset);
  if (i != NIL) {
    memcpy (out, c->slots[i].table + first, n * 8);
    lru_unlink (c, i);
    lru_push_head (c, i);
  }
  pthread_mutex_unlock (&c->lock);
  return i != NIL;
}

/* Take the least recently used slot out of its bucket and the list. */
static uint32_t
evict (struct qcow2_l2cache *c)
{
  uint32_t i = c->tail;
  uint32_t *p = &c->buckets[bucket_of (c, c->slots[i].offset)];

  while (*p != i)
    p = &c->slots[*p].hnext;
  *p = c->slots[i].hnext;
  lru_unlink (c, i);
  return i;
}

void
qcow2_l2cache_put (struct qcow2_l2cache *c, uint64_t offset, const uint64_t *table)
{
  uint32_t i, b;

  pthread_mutex_lock (&c->lock);
  if (find (c, offset) != NIL)
    goto out;
  i = c->used < c->max ? c->used : evict (c);
  if (i == c->used) {
    /* A new slot (an evicted one keeps its table).  Out of memory: not
     * cached, the next read asks the image again. */
    c->slots[i].table = malloc (c->words * 8);
    if (c->slots[i].table == NULL)
      goto out;
    c->used++;
  }
  memcpy (c->slots[i].table, table, c->words * 8);
  c->slots[i].offset = offset;
  b = bucket_of (c, offset);
  c->slots[i].hnext = c->buckets[b];
  c->buckets[b] = i;
  lru_push_head (c, i);
out:
  pthread_mutex_unlock (&c->lock);
}
