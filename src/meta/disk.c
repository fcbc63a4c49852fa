/* corfs: a disk's lifetime in the index: open (create the record, load
 * the maps, widen after an unclean shutdown, mark open), close and seal.
 *
 * Unclean shutdown (docs/design.md rule 4): the record's "open" mark is set
 * durably before meta_disk_open returns and cleared only by a clean
 * close.  An open that finds it set (the previous daemon died) ORs every
 * present block into the current generation's changed map and into the
 * suspect map, in the same commit that sets the mark again.
 *
 * Notes on the thread model: the daemon's main thread opens disks (at
 * attach, and the probe that opens and closes one at once) and closes
 * them (the engine's disk_free, at exit once the engine's threads have
 * stopped, or when attaching fails); cor_engine_finish seals them on the
 * thread that unmounts, while threads that still use the disk may be left
 * running.  Every step takes m->lock (store.c: a leaf).  A disk being
 * opened is not yet on m->disks, so no other thread can reach its maps
 * and open_txn writes them with plain stores; it joins the list in the
 * same critical section as its commit.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lmdb.h>

#include "common/log.h"
#include "meta/meta-internal.h"

/* ---- loading ---- */

struct load_arg { struct meta_disk *d; enum meta_map map; };

static int
load_chunk (void *opaque, uint64_t chunk, const void *page, size_t len)
{
  struct load_arg *a = opaque;
  struct meta_disk *d = a->d;

  if (chunk >= d->maps[a->map].nr_chunks || len != CHUNK_BYTES) {
    log_warn ("meta: disk %s: ignoring bitmap chunk %" PRIu64 " of map %d"
              " (outside the disk or malformed)", d->name, chunk, a->map);
    return 0;
  }
  /* Copied out: the page is valid only until the transaction ends. */
  meta_bitmap_load_chunk (&d->maps[a->map], chunk, page);
  return 0;
}

/* Must be called with m->lock held.  (Re)allocate d's maps for the
 * record in v and load them (the current generation's changed map). */
static int
load_maps (struct meta *m, MDB_txn *txn, struct meta_disk *d)
{
  int rc;

  for (int map = 0; map < META_NR_MAPS; map++) {
    struct load_arg a = { d, map };
    meta_bitmap_free (&d->maps[map]);
    if (meta_bitmap_init (&d->maps[map], d->nr_blocks) == -1)
      return ENOMEM;
    rc = meta_for_each_chunk (m, txn, d, map, d->rec.generation, load_chunk, &a);
    if (rc)
      return rc;
  }
  meta_bitmap_clamp_tail (d);
  for (int map = 0; map < META_NR_MAPS; map++)
    meta_bitmap_recount (&d->maps[map]);
  return 0;
}

/* Must be called with m->lock held.  Write every pending chunk of d into
 * txn (used by open-widening and by close).  With clear, clear the pending
 * bits as it goes: open-widening may, because a failed attempt reruns
 * open_txn from scratch, bitmaps and all.  Close must not: meta_write_txn
 * reruns close_txn after MDB_MAP_FULL, and the chunks written into the
 * aborted attempt would otherwise be lost (d is freed afterwards anyway). */
static int
put_pending (struct meta *m, MDB_txn *txn, struct meta_disk *d, bool clear)
{
  for (int map = 0; map < META_NR_MAPS; map++) {
    struct bitmap *b = &d->maps[map];
    for (uint64_t c = 0; c < b->nr_chunks; c++) {
      uint64_t words[CHUNK_WORDS];
      bool was = clear ? meta_bitmap_take_chunk (b, c) : meta_bitmap_is_pending (b, c);
      if (!was)
        continue;
      meta_bitmap_copy_chunk (b, c, words);
      int rc = meta_put_chunk (m, txn, d, map, d->rec.generation, c, words);
      if (rc) {
        if (clear)
          meta_bitmap_put_back (b, c / 64, 1ULL << (c % 64));
        return rc;
      }
    }
  }
  return 0;
}

/* ---- open ---- */

struct open_arg {
  struct meta_disk *d;
  const struct meta_record *init;
  bool widened;
};

/* Must be called with m->lock held.  A new disk's value from *init, with
 * the next free disk id (taken from the info database in txn). */
static int
new_disk_value (struct meta *m, MDB_txn *txn, const struct meta_record *init,
                struct disk_value *v)
{
  MDB_val key = { 7, "next_id" }, val;
  uint32_t next = 1;
  int rc = mdb_get (txn, m->info_dbi, &key, &val);

  if (rc == 0 && val.mv_size == sizeof next)
    memcpy (&next, val.mv_data, sizeof next);
  else if (rc != MDB_NOTFOUND && rc != 0)
    return rc;
  memset (v, 0, sizeof *v);
  v->rec = *init;
  if (v->rec.generation == 0)
    v->rec.generation = 1;
  if (v->rec.disk_size < v->rec.size)
    v->rec.disk_size = v->rec.size;
  v->id = next++;
  val.mv_size = sizeof next;
  val.mv_data = &next;
  return mdb_put (txn, m->info_dbi, &key, &val, 0);
}

/* Must be called with m->lock held.  The last daemon died with this disk
 * open: any present block may have been written without its dirty or
 * changed bits reaching the index.  Widen, in this same commit. */
static int
widen (struct meta *m, MDB_txn *txn, struct meta_disk *d, struct disk_value *v)
{
  meta_bitmap_widen (&d->maps[META_CHANGED], &d->maps[META_PRESENT]);
  meta_bitmap_widen (&d->maps[META_SUSPECT], &d->maps[META_PRESENT]);
  v->rec.widened_generation = v->rec.generation;
  d->rec = v->rec;
  return put_pending (m, txn, d, true);
}

static int
open_txn (struct meta *m, MDB_txn *txn, void *argp)
{
  struct open_arg *a = argp;
  struct meta_disk *d = a->d;
  struct disk_value v;
  int rc = meta_get_record (m, txn, d->name, &v);

  a->widened = false;
  if (rc == MDB_NOTFOUND) {
    if (!a->init)
      return MDB_NOTFOUND;
    rc = new_disk_value (m, txn, a->init, &v);
  }
  if (rc)
    return rc;

  d->id = v.id;
  d->rec = v.rec;
  d->nr_blocks = (v.rec.disk_size + v.rec.block_size - 1) / v.rec.block_size;
  if ((rc = load_maps (m, txn, d)) != 0)
    return rc;
  if (v.open) {
    if ((rc = widen (m, txn, d, &v)) != 0)
      return rc;
    a->widened = true;
  }
  v.open = true;
  return meta_put_record (m, txn, d->name, &v);
}

/* The arguments' errors (meta.h): 0, or an errno. */
static int
check_open_args (const char *name, const struct meta_record *init)
{
  if (init && (init->block_size == 0 ||
               (init->block_size & (init->block_size - 1)) != 0))
    return EINVAL;
  if (strlen (name) >= sizeof ((struct meta_disk *) NULL)->name)
    return ENAMETOOLONG;
  if (init && (strchr (init->url, '\n') || strchr (init->identity, '\n') ||
               strchr (init->sources, '\n') ||
               memchr (init->format, '\n', strnlen (init->format, sizeof init->format)) ||
               strchr (init->backing_identity, '\n')))
    return EINVAL;              /* the record is stored as lines */
  return 0;
}

/* Must be called with m->lock held. */
static bool
is_open_unlocked (struct meta *m, const char *name)
{
  for (struct meta_disk *o = m->disks; o; o = o->next)
    if (!strcmp (o->name, name))
      return true;
  return false;
}

int
meta_disk_open (struct meta *m, const char *name, const struct meta_record *init,
                struct meta_disk **dp, bool *widened)
{
  struct meta_disk *d;
  struct open_arg a = { NULL, init, false };
  bool adopted = false;
  int rc = check_open_args (name, init);

  if (rc) {
    errno = rc;
    return -1;
  }
  if (!(d = calloc (1, sizeof *d)))
    return -1;
  a.d = d;
  d->m = m;
  d->slot = -1;
  snprintf (d->name, sizeof d->name, "%s", name);
  pthread_mutex_lock (&m->lock);
  if (is_open_unlocked (m, name))
    rc = EBUSY;
  else
    rc = meta_write_txn (m, "open disk", open_txn, &a);
  if (rc == 0)
    rc = meta_shared_adopt (m, d, &adopted);
  if (rc == 0) {
    d->next = m->disks;
    m->disks = d;
  }
  pthread_mutex_unlock (&m->lock);
  if (rc) {
    for (int map = 0; map < META_NR_MAPS; map++)
      meta_bitmap_free (&d->maps[map]);
    free (d);
    errno = rc;
    return -1;
  }
  if (a.widened)
    log_warn ("meta: disk %s: the previous daemon did not shut down cleanly; "
              "%" PRIu64 " present blocks marked changed and suspect",
              name, meta_count (d, META_PRESENT));
  if (adopted)
    log_info ("meta: disk %s: adopted the maps the previous worker left in the "
              "supervisor's memory (%" PRIu64 " present, %" PRIu64 " dirty blocks); "
              "they are committed after the overlay is synced", name,
              meta_count (d, META_PRESENT), meta_count (d, META_DIRTY));
  if (widened)
    *widened = a.widened;
  *dp = d;
  return 0;
}

/* ---- close ---- */

static int
close_txn (struct meta *m, MDB_txn *txn, void *argp)
{
  struct meta_disk *d = argp;
  struct disk_value v = { .rec = d->rec, .id = d->id, .open = false };
  int rc = put_pending (m, txn, d, false);

  for (size_t i = 0; rc == 0 && i < d->nr_orphans; i++)
    rc = meta_put_old_changed (m, txn, &d->orphans[i]);
  if (rc)
    return rc;
  return meta_put_record (m, txn, d->name, &v);
}

int
meta_disk_close (struct meta_disk *d, bool clean)
{
  struct meta *m = d->m;
  struct meta_disk **pp;
  int rc = 0;

  pthread_mutex_lock (&m->lock);
  if (clean)
    rc = meta_write_txn (m, "close disk", close_txn, d);
  if (clean && rc == 0)
    meta_shared_release (m, d);
  for (pp = &m->disks; *pp; pp = &(*pp)->next)
    if (*pp == d) {
      *pp = d->next;
      break;
    }
  pthread_mutex_unlock (&m->lock);
  for (int map = 0; map < META_NR_MAPS; map++)
    meta_bitmap_free (&d->maps[map]);
  free (d->orphans);
  free (d);
  if (rc) {
    errno = rc;
    return -1;
  }
  return 0;
}

int
meta_disk_seal (struct meta_disk *d)
{
  struct meta *m = d->m;
  int rc;

  pthread_mutex_lock (&m->lock);
  rc = meta_write_txn (m, "close disk", close_txn, d);
  pthread_mutex_unlock (&m->lock);
  if (rc) {
    errno = rc;
    return -1;
  }
  return 0;
}
