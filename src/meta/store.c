/* corfs: the index's LMDB store: the environment, write transactions and
 * map growth, errno mapping, and the pages of the "maps" database (key
 * layout in meta.h).
 *
 * Notes on the thread model: meta_open and meta_close run on the daemon's
 * main thread, before any other thread uses the index and after the last
 * one has stopped.  Everything else here runs on whichever thread calls
 * a meta_* function that touches LMDB (records.c, disk.c, batch.c,
 * generations.c list them), always with m->lock held: LMDB allows one
 * write transaction at a time, and mdb_env_set_mapsize needs no
 * transaction active in the process, which holds because every
 * transaction, read-only ones included, runs under m->lock.
 *
 * m->lock is a leaf.  The engine takes it (through meta_*) after
 * d->owner_lock (owner-state transitions, cor_update_record, the mirror's
 * seal) and after d->attr_lock (cor_disk_set_attr), and never with
 * e->lock, d->lock, d->stream.lock or d->ra.lock held; meta calls nothing
 * outside the module with it held but LMDB and the logger (which takes no
 * lock).
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <lmdb.h>

#include "common/log.h"
#include "meta/meta-internal.h"

#define INITIAL_MAP_SIZE ((size_t) 64 << 20)
#define KEY_BYTES 16

int
meta_mdb_errno (const char *op, int rc)
{
  log_error ("meta: %s: %s", op, mdb_strerror (rc));
  switch (rc) {
  case MDB_MAP_FULL: case MDB_TXN_FULL: return ENOSPC;
  case MDB_NOTFOUND: return ENOENT;
  case MDB_CORRUPTED: case MDB_PAGE_NOTFOUND: case MDB_INVALID:
  case MDB_VERSION_MISMATCH: return EIO;
  case MDB_READERS_FULL: return EAGAIN;
  default: return rc > 0 ? rc : EIO;
  }
}

/* ---- environment ---- */

/* The map size that the file at dir already needs, if it was grown
 * before: INITIAL_MAP_SIZE doubled until it holds the file. */
static size_t
grown_map_size (const char *dir)
{
  size_t size = INITIAL_MAP_SIZE;
  char path[4096];
  struct stat st;

  snprintf (path, sizeof path, "%s/data.mdb", dir);
  if (stat (path, &st) == 0)
    while (size < (size_t) st.st_size)
      size *= 2;
  return size;
}

/* Open the databases and check the format version (writing it into a new
 * index), in one transaction.  0 or an LMDB error; *bad_version (logged)
 * when the index has a version this code does not read. */
static int
open_dbs (struct meta *m, const char *dir, bool *bad_version)
{
  MDB_val key = { 7, "version" }, val = { 1, "1" }, old;
  MDB_txn *txn;
  int rc;

  if ((rc = mdb_txn_begin (m->env, NULL, 0, &txn)) != 0)
    return rc;
  if ((rc = mdb_dbi_open (txn, "info", MDB_CREATE, &m->info_dbi)) ||
      (rc = mdb_dbi_open (txn, "disks", MDB_CREATE, &m->disks_dbi)) ||
      (rc = mdb_dbi_open (txn, "maps", MDB_CREATE, &m->maps_dbi))) {
    mdb_txn_abort (txn);
    return rc;
  }
  rc = mdb_get (txn, m->info_dbi, &key, &old);
  if (rc == MDB_NOTFOUND)
    rc = mdb_put (txn, m->info_dbi, &key, &val, 0);
  else if (rc == 0 && (old.mv_size != 1 || *(char *) old.mv_data != '1')) {
    /* Log first: old is valid only until the transaction ends. */
    log_error ("meta: %s: index format version %.*s is not supported",
               dir, (int) old.mv_size, (char *) old.mv_data);
    mdb_txn_abort (txn);
    *bad_version = true;
    return 0;
  }
  if (rc) {
    mdb_txn_abort (txn);
    return rc;
  }
  return mdb_txn_commit (txn);  /* frees txn even on failure */
}

int
meta_open (const char *dir, struct meta **mp)
{
  struct meta *m = calloc (1, sizeof *m);
  bool bad_version = false;
  int rc, dead = 0, e;

  if (!m)
    return -1;
  pthread_mutex_init (&m->lock, NULL);
  m->shm_fd = -1;
  if (mkdir (dir, 0700) == -1 && errno != EEXIST) {
    log_error ("meta: mkdir %s: %m", dir);
    goto err_free;
  }
  if ((rc = mdb_env_create (&m->env)) != 0) {
    errno = meta_mdb_errno ("mdb_env_create", rc);
    goto err_free;
  }
  mdb_env_set_maxdbs (m->env, 4);
  mdb_env_set_maxreaders (m->env, 126);
  m->map_size = grown_map_size (dir);
  mdb_env_set_mapsize (m->env, m->map_size);
  /* Default sync mode: every commit is durable (docs/design.md rule 8).
   * MDB_NOTLS: read transactions are not tied to threads. */
  rc = mdb_env_open (m->env, dir, MDB_NOTLS, 0600);
  if (rc == 0) {
    mdb_reader_check (m->env, &dead);
    if (dead)
      log_info ("meta: cleared %d stale reader slots", dead);
    rc = open_dbs (m, dir, &bad_version);
  }
  if (rc == 0 && !bad_version) {
    *mp = m;
    return 0;
  }
  e = bad_version ? EPROTO : meta_mdb_errno (dir, rc);
  mdb_env_close (m->env);
  errno = e;
 err_free:
  e = errno;
  pthread_mutex_destroy (&m->lock);
  free (m);
  errno = e;
  return -1;
}

void
meta_close (struct meta *m)
{
  if (!m)
    return;
  assert (m->disks == NULL);
  meta_unshare (m);
  mdb_env_close (m->env);
  pthread_mutex_destroy (&m->lock);
  free (m);
}

size_t
meta_map_size (struct meta *m)
{
  size_t r;
  pthread_mutex_lock (&m->lock);
  r = m->map_size;
  pthread_mutex_unlock (&m->lock);
  return r;
}

/* ---- transactions ---- */

/* Must be called with m->lock held, no transaction active.  Double the
 * map.  0 or errno. */
static int
grow_map (struct meta *m)
{
  size_t new_size = m->map_size * 2;
  int rc = mdb_env_set_mapsize (m->env, new_size);

  if (rc)
    return meta_mdb_errno ("grow map", rc);
  log_info ("meta: index map grown to %zu MiB", new_size >> 20);
  m->map_size = new_size;
  return 0;
}

int
meta_write_txn (struct meta *m, const char *op,
                int (*fn) (struct meta *m, MDB_txn *txn, void *arg), void *arg)
{
  for (;;) {
    MDB_txn *txn;
    int rc = mdb_txn_begin (m->env, NULL, 0, &txn);
    if (rc == 0) {
      rc = fn (m, txn, arg);
      if (rc == 0)
        rc = mdb_txn_commit (txn);
      else
        mdb_txn_abort (txn);
    }
    /* Grow and rerun: no other transaction can be active, as they all
     * hold m->lock. */
    if (rc == MDB_MAP_FULL) {
      if ((rc = grow_map (m)) != 0)
        return rc;
      continue;
    }
    if (rc)
      return meta_mdb_errno (op, rc);
    return 0;
  }
}

/* ---- pages of the maps database ---- */

/* The one place that builds a key of the maps database (layout in
 * meta.h): disk id, map (type << 24 | generation, the generation only for
 * META_CHANGED: ignored for the others), chunk number, all big-endian. */
static void
map_key (unsigned char key[KEY_BYTES], uint32_t disk_id, enum meta_map map,
         uint32_t gen, uint64_t chunk)
{
  uint32_t mapf = (uint32_t) map << 24;

  if (map == META_CHANGED)
    mapf |= gen & 0xffffff;
  for (int i = 0; i < 4; i++) key[i] = disk_id >> (24 - 8 * i);
  for (int i = 0; i < 4; i++) key[4 + i] = mapf >> (24 - 8 * i);
  for (int i = 0; i < 8; i++) key[8 + i] = chunk >> (56 - 8 * i);
}

int
meta_put_chunk (struct meta *m, MDB_txn *txn, const struct meta_disk *d,
                enum meta_map map, uint32_t gen, uint64_t c,
                const uint64_t words[CHUNK_WORDS])
{
  unsigned char kbuf[KEY_BYTES];
  MDB_val key = { sizeof kbuf, kbuf }, val = { CHUNK_BYTES, (void *) words };
  bool zero = true;
  int rc;

  map_key (kbuf, d->id, map, gen, c);
  for (size_t i = 0; i < CHUNK_WORDS; i++)
    if (words[i]) { zero = false; break; }
  if (zero) {
    rc = mdb_del (txn, m->maps_dbi, &key, NULL);
    return rc == MDB_NOTFOUND ? 0 : rc;
  }
  return mdb_put (txn, m->maps_dbi, &key, &val, 0);
}

int
meta_get_chunk (struct meta *m, MDB_txn *txn, const struct meta_disk *d,
                enum meta_map map, uint32_t gen, uint64_t c,
                uint64_t words[CHUNK_WORDS])
{
  unsigned char kbuf[KEY_BYTES];
  MDB_val key = { sizeof kbuf, kbuf }, val;
  int rc;

  map_key (kbuf, d->id, map, gen, c);
  rc = mdb_get (txn, m->maps_dbi, &key, &val);
  if (rc)
    return rc;
  if (val.mv_size != CHUNK_BYTES)
    return MDB_NOTFOUND;
  memcpy (words, val.mv_data, CHUNK_BYTES);     /* LMDB data may be unaligned */
  return 0;
}

int
meta_for_each_chunk (struct meta *m, MDB_txn *txn, const struct meta_disk *d,
                     enum meta_map map, uint32_t gen,
                     int (*fn) (void *opaque, uint64_t c, const void *page, size_t len),
                     void *opaque)
{
  unsigned char kbuf[KEY_BYTES];
  MDB_val key = { sizeof kbuf, kbuf }, val;
  MDB_cursor *cur;
  int rc;

  map_key (kbuf, d->id, map, gen, 0);
  rc = mdb_cursor_open (txn, m->maps_dbi, &cur);
  if (rc)
    return rc;
  for (rc = mdb_cursor_get (cur, &key, &val, MDB_SET_RANGE); rc == 0;
       rc = mdb_cursor_get (cur, &key, &val, MDB_NEXT)) {
    const unsigned char *k = key.mv_data;
    uint64_t chunk = 0;
    if (key.mv_size != KEY_BYTES || memcmp (k, kbuf, 8) != 0)
      break;                    /* past this map's keys */
    for (int i = 0; i < 8; i++)
      chunk = chunk << 8 | k[8 + i];
    if ((rc = fn (opaque, chunk, val.mv_data, val.mv_size)) != 0)
      break;
  }
  mdb_cursor_close (cur);
  return rc == MDB_NOTFOUND ? 0 : rc;
}
