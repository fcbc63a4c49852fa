/* corfs: the block index (see meta.h for the format and the contract).
 *
 * Notes on the thread model: the bitmaps are arrays of 64-bit words updated
 * with atomic read-modify-write operations, so the FUSE threads, the remote
 * fetch paths and the streamer test and set bits without a lock.  Each map
 * has a "pending" bitmap with one bit per 1024-byte chunk.  Ordering that
 * the committer relies on: a writer sets the block bit, *then* the pending
 * bit; the batch clears the pending bit, *then* copies the chunk.  So a bit
 * set concurrently with a batch is either in this batch's copy or its chunk
 * is pending again for the next one (possibly both: a harmless rewrite).
 *
 * m->lock serialises every LMDB transaction and guards the list of open
 * disks and their records.  Lock order: m->lock is a leaf; never call
 * out of this module with it held.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <lmdb.h>

#include "common/log.h"
#include "meta/meta.h"

#define CHUNK_BYTES 1024
#define CHUNK_WORDS (CHUNK_BYTES / 8)
#define CHUNK_BITS (CHUNK_BYTES * 8)
#define INITIAL_MAP_SIZE ((size_t) 64 << 20)

struct bitmap {
  uint64_t *words;              /* atomic; nr_chunks * CHUNK_WORDS words */
  uint64_t *pending;            /* atomic; one bit per chunk */
  uint64_t nr_chunks;
  uint64_t count;               /* atomic; bits set, kept by update_range */
};

struct batch_chunk {
  struct meta_disk *d;
  enum meta_map map;
  uint32_t gen;                 /* generation when taken (META_CHANGED) */
  uint64_t chunk;
  uint64_t words[CHUNK_WORDS];
};

struct meta_disk {
  struct meta *m;
  char name[65];
  uint32_t id;
  uint64_t nr_blocks;
  struct meta_record rec;       /* protected by m->lock */
  struct bitmap maps[META_NR_MAPS];
  struct meta_disk *next;       /* protected by m->lock */
  /* META_CHANGED chunks of an earlier generation whose batch failed after
   * a checkpoint (see meta_batch_drop); protected by m->lock. */
  struct batch_chunk *orphans;
  size_t nr_orphans;
};

struct meta {
  MDB_env *env;
  MDB_dbi info_dbi, disks_dbi, maps_dbi;
  pthread_mutex_t lock;         /* serialises LMDB transactions; guards disks */
  size_t map_size;              /* protected by lock */
  struct meta_disk *disks;      /* protected by lock */
};

struct meta_batch {
  struct meta *m;
  struct batch_chunk *v;
  size_t n, cap;
};

/* Map an LMDB return code to errno, logging the LMDB message. */
static int
mdb_errno (const char *op, int rc)
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

/* ---- record encoding: "key=value" lines, easy to read with mdb_dump ---- */

static const char *state_names[META_NR_STATES] = {
  [META_ACTIVE] = "active", [META_INCOMING] = "incoming",
  [META_ACTIVATING] = "activating", [META_HANDED_OFF] = "handed-off",
  [META_STANDALONE] = "standalone",
};

const char *
meta_state_name (enum meta_state s)
{
  return (unsigned) s < META_NR_STATES ? state_names[s] : "unknown";
}

bool
meta_identity_binding (const struct meta_record *rec)
{
  return !rec->merging && rec->state != META_INCOMING && rec->state != META_ACTIVATING &&
    !(rec->mirror && rec->state == META_ACTIVE);
}

struct disk_value {
  struct meta_record rec;
  uint32_t id;
  bool open;
};

static char *
encode_record (const struct disk_value *v, size_t *len)
{
  char *s = NULL, mode[16] = "", uid[24] = "", gid[24] = "";
  int n;

  /* Written only when set: older daemons skip unknown keys, and an
   * unset one keeps meaning "the default" (meta_record). */
  if (v->rec.has_mode)
    snprintf (mode, sizeof mode, "mode=0%o\n", (unsigned) (v->rec.mode & 0777));
  if (v->rec.has_uid)
    snprintf (uid, sizeof uid, "uid=%" PRIu32 "\n", v->rec.uid);
  if (v->rec.has_gid)
    snprintf (gid, sizeof gid, "gid=%" PRIu32 "\n", v->rec.gid);
  n = asprintf (&s,
                    "id=%" PRIu32 "\nurl=%s\nidentity=%s\nsize=%" PRIu64 "\n"
                    "block_size=%" PRIu32 "\nstate=%s\nepoch=%" PRIu64 "\n"
                    "write_mode=%s\nparent_owned=%d\ncomplete=%d\n"
                    "generation=%" PRIu32 "\nwidened_generation=%" PRIu32 "\n"
                    "merging=%d\nopen=%d\n%s%s%s",
                    v->id, v->rec.url, v->rec.identity, v->rec.size,
                    v->rec.block_size, state_names[v->rec.state], v->rec.epoch,
                    v->rec.mirror ? "mirror" : "writeback", v->rec.parent_owned,
                    v->rec.complete, v->rec.generation,
                    v->rec.widened_generation, v->rec.merging, v->open, mode, uid, gid);
  if (n < 0)
    return NULL;
  *len = n;
  return s;
}

static int
decode_record (const char *data, size_t len, struct disk_value *v)
{
  char *copy = strndup (data, len), *line, *save = NULL;

  if (!copy)
    return -1;
  memset (v, 0, sizeof *v);
  v->rec.generation = 1;
  for (line = strtok_r (copy, "\n", &save); line; line = strtok_r (NULL, "\n", &save)) {
    char *eq = strchr (line, '=');
    const char *k = line, *val;
    if (!eq)
      continue;
    *eq = '\0';
    val = eq + 1;
    if (!strcmp (k, "id")) v->id = strtoul (val, NULL, 10);
    else if (!strcmp (k, "url")) snprintf (v->rec.url, sizeof v->rec.url, "%s", val);
    else if (!strcmp (k, "identity")) snprintf (v->rec.identity, sizeof v->rec.identity, "%s", val);
    else if (!strcmp (k, "size")) v->rec.size = strtoull (val, NULL, 10);
    else if (!strcmp (k, "block_size")) v->rec.block_size = strtoul (val, NULL, 10);
    else if (!strcmp (k, "state")) {
      for (size_t i = 0; i < sizeof state_names / sizeof state_names[0]; i++)
        if (!strcmp (val, state_names[i]))
          v->rec.state = i;
    }
    else if (!strcmp (k, "epoch")) v->rec.epoch = strtoull (val, NULL, 10);
    else if (!strcmp (k, "write_mode")) v->rec.mirror = !strcmp (val, "mirror");
    else if (!strcmp (k, "parent_owned")) v->rec.parent_owned = atoi (val);
    else if (!strcmp (k, "complete")) v->rec.complete = atoi (val);
    else if (!strcmp (k, "generation")) v->rec.generation = strtoul (val, NULL, 10);
    else if (!strcmp (k, "widened_generation")) v->rec.widened_generation = strtoul (val, NULL, 10);
    else if (!strcmp (k, "merging")) v->rec.merging = atoi (val);
    else if (!strcmp (k, "open")) v->open = atoi (val);
    else if (!strcmp (k, "mode")) {
      v->rec.mode = strtoul (val, NULL, 8) & 0777;
      v->rec.has_mode = true;
    }
    else if (!strcmp (k, "uid")) {
      v->rec.uid = strtoul (val, NULL, 10);
      v->rec.has_uid = true;
    }
    else if (!strcmp (k, "gid")) {
      v->rec.gid = strtoul (val, NULL, 10);
      v->rec.has_gid = true;
    }
  }
  free (copy);
  return 0;
}

/* ---- transactions ---- */

/* Must be called with m->lock held.  Run fn in a write transaction and
 * commit it; on MDB_MAP_FULL double the map and run it again (no other
 * transaction can be active: they all hold m->lock).  Returns 0 or errno. */
static int
write_txn (struct meta *m, const char *op,
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
    if (rc == MDB_MAP_FULL) {
      size_t new_size = m->map_size * 2;
      rc = mdb_env_set_mapsize (m->env, new_size);
      if (rc)
        return mdb_errno ("grow map", rc);
      log_info ("meta: index map grown to %zu MiB", new_size >> 20);
      m->map_size = new_size;
      continue;
    }
    if (rc)
      return mdb_errno (op, rc);
    return 0;
  }
}

#define KEY_BYTES 16

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

/* Must be called with m->lock held.  Call fn for each page stored for
 * disk_id's map (of generation gen, for META_CHANGED), in chunk order.
 * The page is LMDB's memory: valid only until txn ends, and with no
 * alignment guarantee (copy it out with memcpy).  Stops at the first
 * non-zero return of fn and returns it; else 0, or an LMDB error. */
static int
for_each_chunk (struct meta *m, MDB_txn *txn, uint32_t disk_id, enum meta_map map,
                uint32_t gen,
                int (*fn) (void *opaque, uint64_t chunk, const void *page, size_t len),
                void *opaque)
{
  unsigned char kbuf[KEY_BYTES];
  MDB_val key = { sizeof kbuf, kbuf }, val;
  MDB_cursor *cur;
  int rc;

  map_key (kbuf, disk_id, map, gen, 0);
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

static int
put_chunk_gen (struct meta *m, MDB_txn *txn, const struct meta_disk *d,
               enum meta_map map, uint64_t chunk, const uint64_t *words, uint32_t gen)
{
  unsigned char kbuf[KEY_BYTES];
  MDB_val key = { sizeof kbuf, kbuf }, val = { CHUNK_BYTES, (void *) words };
  bool zero = true;
  int rc;

  map_key (kbuf, d->id, map, gen, chunk);
  for (size_t i = 0; i < CHUNK_WORDS; i++)
    if (words[i]) { zero = false; break; }
  if (zero) {
    rc = mdb_del (txn, m->maps_dbi, &key, NULL);
    return rc == MDB_NOTFOUND ? 0 : rc;
  }
  return mdb_put (txn, m->maps_dbi, &key, &val, 0);
}

/* Must be called with m->lock held (reads d->rec.generation). */
static int
put_chunk (struct meta *m, MDB_txn *txn, const struct meta_disk *d,
           enum meta_map map, uint64_t chunk, const uint64_t *words)
{
  return put_chunk_gen (m, txn, d, map, chunk, words, d->rec.generation);
}

/* A META_CHANGED chunk taken before a checkpoint and committed after it.
 * The checkpoint wrote the chunk under the old generation too if bits
 * were set in it after the take (they made it pending again), and that
 * copy is newer than the batch's: merge, never overwrite, or those bits
 * would vanish from the old generation and an incremental backup from
 * it would miss their blocks.  Must be called with m->lock held. */
static int
put_old_changed_chunk (struct meta *m, MDB_txn *txn, const struct batch_chunk *bc)
{
  unsigned char kbuf[KEY_BYTES];
  MDB_val key = { sizeof kbuf, kbuf }, val;
  uint64_t words[CHUNK_WORDS], old[CHUNK_WORDS];
  int rc;

  memcpy (words, bc->words, sizeof words);
  map_key (kbuf, bc->d->id, META_CHANGED, bc->gen, bc->chunk);
  rc = mdb_get (txn, m->maps_dbi, &key, &val);
  if (rc == 0 && val.mv_size == CHUNK_BYTES) {
    memcpy (old, val.mv_data, sizeof old);      /* LMDB data may be unaligned */
    for (size_t i = 0; i < CHUNK_WORDS; i++)
      words[i] |= old[i];
  }
  else if (rc != 0 && rc != MDB_NOTFOUND)
    return rc;
  return put_chunk_gen (m, txn, bc->d, META_CHANGED, bc->chunk, words, bc->gen);
}

static int
put_record (struct meta *m, MDB_txn *txn, const char *name,
            const struct disk_value *v)
{
  size_t len;
  char *s = encode_record (v, &len);
  MDB_val key = { strlen (name), (void *) name }, val;
  int rc;

  if (!s)
    return ENOMEM;
  val.mv_size = len;
  val.mv_data = s;
  rc = mdb_put (txn, m->disks_dbi, &key, &val, 0);
  free (s);
  return rc;
}

/* ---- environment ---- */

int
meta_open (const char *dir, struct meta **mp)
{
  struct meta *m = calloc (1, sizeof *m);
  MDB_txn *txn;
  int rc, dead = 0;

  if (!m)
    return -1;
  pthread_mutex_init (&m->lock, NULL);
  m->map_size = INITIAL_MAP_SIZE;
  if (mkdir (dir, 0700) == -1 && errno != EEXIST) {
    log_error ("meta: mkdir %s: %m", dir);
    goto err_free;
  }
  if ((rc = mdb_env_create (&m->env)) != 0)
    goto err_mdb;
  mdb_env_set_maxdbs (m->env, 4);
  mdb_env_set_maxreaders (m->env, 126);
  /* Grow the map to what the file already needs, if it was grown before. */
  {
    char path[4096];
    struct stat st;
    snprintf (path, sizeof path, "%s/data.mdb", dir);
    if (stat (path, &st) == 0)
      while (m->map_size < (size_t) st.st_size)
        m->map_size *= 2;
  }
  mdb_env_set_mapsize (m->env, m->map_size);
  /* Default sync mode: every commit is durable (DESIGN.md rule 8).
   * MDB_NOTLS: read transactions are not tied to threads. */
  rc = mdb_env_open (m->env, dir, MDB_NOTLS, 0600);
  if (rc)
    goto err_env;
  mdb_reader_check (m->env, &dead);
  if (dead)
    log_info ("meta: cleared %d stale reader slots", dead);

  if ((rc = mdb_txn_begin (m->env, NULL, 0, &txn)) != 0)
    goto err_env;
  if ((rc = mdb_dbi_open (txn, "info", MDB_CREATE, &m->info_dbi)) ||
      (rc = mdb_dbi_open (txn, "disks", MDB_CREATE, &m->disks_dbi)) ||
      (rc = mdb_dbi_open (txn, "maps", MDB_CREATE, &m->maps_dbi))) {
    mdb_txn_abort (txn);
    goto err_env;
  }
  {
    MDB_val key = { 7, "version" }, val = { 1, "1" }, old;
    rc = mdb_get (txn, m->info_dbi, &key, &old);
    if (rc == MDB_NOTFOUND)
      rc = mdb_put (txn, m->info_dbi, &key, &val, 0);
    else if (rc == 0 && (old.mv_size != 1 || *(char *) old.mv_data != '1')) {
      /* Log first: old is valid only until the transaction ends. */
      log_error ("meta: %s: index format version %.*s is not supported",
                 dir, (int) old.mv_size, (char *) old.mv_data);
      mdb_txn_abort (txn);
      errno = EPROTO;
      goto err_env_errno;
    }
  }
  if (rc) {
    mdb_txn_abort (txn);
    goto err_env;
  }
  if ((rc = mdb_txn_commit (txn)) != 0)   /* frees txn even on failure */
    goto err_env;
  *mp = m;
  return 0;

 err_env:
  errno = mdb_errno (dir, rc);
 err_env_errno:
  {
    int e = errno;
    mdb_env_close (m->env);
    errno = e;
  }
  goto err_free;
 err_mdb:
  errno = mdb_errno ("mdb_env_create", rc);
 err_free:
  {
    int e = errno;
    pthread_mutex_destroy (&m->lock);
    free (m);
    errno = e;
  }
  return -1;
}

void
meta_close (struct meta *m)
{
  if (!m)
    return;
  assert (m->disks == NULL);
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

/* Must be called with m->lock held. */
static int
get_disk_value (struct meta *m, MDB_txn *txn, const char *name,
                struct disk_value *v)
{
  MDB_val key = { strlen (name), (void *) name }, val;
  int rc = mdb_get (txn, m->disks_dbi, &key, &val);

  if (rc)
    return rc;
  if (decode_record (val.mv_data, val.mv_size, v) == -1)
    return ENOMEM;
  return 0;
}

int
meta_record_get (struct meta *m, const char *name, struct meta_record *rec)
{
  MDB_txn *txn;
  struct disk_value v;
  int rc;

  pthread_mutex_lock (&m->lock);
  rc = mdb_txn_begin (m->env, NULL, MDB_RDONLY, &txn);
  if (rc == 0) {
    rc = get_disk_value (m, txn, name, &v);
    mdb_txn_abort (txn);
  }
  pthread_mutex_unlock (&m->lock);
  if (rc == MDB_NOTFOUND) {
    errno = ENOENT;
    return -1;
  }
  if (rc) {
    errno = mdb_errno ("read record", rc);
    return -1;
  }
  *rec = v.rec;
  return 0;
}

int
meta_disk_names (struct meta *m, char ***names)
{
  MDB_txn *txn;
  MDB_cursor *cur;
  MDB_val key, val;
  size_t n = 0;
  char **v = calloc (1, sizeof *v);
  int rc;

  if (!v)
    return -1;
  pthread_mutex_lock (&m->lock);
  rc = mdb_txn_begin (m->env, NULL, MDB_RDONLY, &txn);
  if (rc == 0) {
    rc = mdb_cursor_open (txn, m->disks_dbi, &cur);
    if (rc == 0) {
      for (rc = mdb_cursor_get (cur, &key, &val, MDB_FIRST); rc == 0;
           rc = mdb_cursor_get (cur, &key, &val, MDB_NEXT)) {
        char **nv = realloc (v, (n + 2) * sizeof *v);
        if (!nv || !(nv[n] = strndup (key.mv_data, key.mv_size))) {
          v = nv ? nv : v;
          rc = ENOMEM;
          break;
        }
        v = nv;
        v[++n] = NULL;
      }
      mdb_cursor_close (cur);
    }
    mdb_txn_abort (txn);
  }
  pthread_mutex_unlock (&m->lock);
  if (rc != MDB_NOTFOUND && rc != 0) {
    for (size_t i = 0; i < n; i++)
      free (v[i]);
    free (v);
    errno = rc == ENOMEM ? ENOMEM : mdb_errno ("list disks", rc);
    return -1;
  }
  *names = v;
  return 0;
}

/* ---- bitmaps ---- */

static int
bitmap_init (struct bitmap *b, uint64_t nr_blocks)
{
  b->nr_chunks = (nr_blocks + CHUNK_BITS - 1) / CHUNK_BITS;
  if (b->nr_chunks == 0)
    b->nr_chunks = 1;
  b->words = calloc (b->nr_chunks * CHUNK_WORDS, sizeof (uint64_t));
  b->pending = calloc ((b->nr_chunks + 63) / 64, sizeof (uint64_t));
  if (!b->words || !b->pending) {
    free (b->words);
    free (b->pending);
    return -1;
  }
  return 0;
}

static void
bitmap_free (struct bitmap *b)
{
  free (b->words);
  free (b->pending);
}

static void
mark_pending (struct bitmap *b, uint64_t blk)
{
  uint64_t chunk = blk / CHUNK_BITS;
  __atomic_fetch_or (&b->pending[chunk / 64], 1ULL << (chunk % 64), __ATOMIC_SEQ_CST);
}

bool
meta_test (struct meta_disk *d, enum meta_map map, uint64_t blk)
{
  assert (blk < d->nr_blocks);
  return (__atomic_load_n (&d->maps[map].words[blk / 64], __ATOMIC_ACQUIRE)
          >> (blk % 64)) & 1;
}

static void
update_range (struct meta_disk *d, enum meta_map map, uint64_t blk,
              uint64_t nr, bool set)
{
  struct bitmap *b = &d->maps[map];
  uint64_t end = blk + nr;

  assert (end <= d->nr_blocks && end >= blk);
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
  uint64_t n = 0, nw = d->maps[a].nr_chunks * CHUNK_WORDS;

  for (uint64_t i = 0; i < nw; i++)
    n += __builtin_popcountll (__atomic_load_n (&d->maps[a].words[i], __ATOMIC_RELAXED) |
                               __atomic_load_n (&d->maps[b].words[i], __ATOMIC_RELAXED));
  return n;
}

/* Recount a map's bits after loading or widening it. */
static void
recount (struct bitmap *b)
{
  uint64_t n = 0;

  for (uint64_t i = 0; i < b->nr_chunks * CHUNK_WORDS; i++)
    n += __builtin_popcountll (b->words[i]);
  b->count = n;
}

uint64_t
meta_next (struct meta_disk *d, enum meta_map map, bool value, uint64_t from)
{
  struct bitmap *b = &d->maps[map];

  while (from < d->nr_blocks) {
    uint64_t w = __atomic_load_n (&b->words[from / 64], __ATOMIC_ACQUIRE);
    if (!value)
      w = ~w;
    w &= ~0ULL << (from % 64);
    if (w) {
      uint64_t r = (from & ~63ULL) + __builtin_ctzll (w);
      return r < d->nr_blocks ? r : d->nr_blocks;
    }
    from = (from & ~63ULL) + 64;
  }
  return d->nr_blocks;
}

uint64_t
meta_nr_blocks (const struct meta_disk *d)
{
  return d->nr_blocks;
}

const char *
meta_disk_name (const struct meta_disk *d)
{
  return d->name;
}

/* ---- disks ---- */

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
  /* Copy out: the page is valid only until the transaction ends. */
  memcpy (&d->maps[a->map].words[chunk * CHUNK_WORDS], page, CHUNK_BYTES);
  return 0;
}

/* Must be called with m->lock held.  Load one map's chunks. */
static int
load_map (struct meta *m, MDB_txn *txn, struct meta_disk *d, enum meta_map map)
{
  struct load_arg a = { d, map };
  return for_each_chunk (m, txn, d->id, map, d->rec.generation, load_chunk, &a);
}

/* Clear the trailing bits beyond nr_blocks (a resized record, a stray bit). */
static void
clamp_tail (struct meta_disk *d)
{
  for (int map = 0; map < META_NR_MAPS; map++) {
    struct bitmap *b = &d->maps[map];
    uint64_t total = b->nr_chunks * CHUNK_BITS;
    for (uint64_t blk = d->nr_blocks; blk < total; blk++)
      b->words[blk / 64] &= ~(1ULL << (blk % 64));
  }
}

/* Must be called with m->lock held.  Write every pending chunk of d into
 * txn (used by open-widening and by close).  With clear, clear the pending
 * bits as it goes: open-widening may, because a failed attempt reruns
 * open_txn from scratch, bitmaps and all.  Close must not: write_txn
 * reruns close_txn after MDB_MAP_FULL, and the chunks written into the
 * aborted attempt would otherwise be lost (d is freed afterwards anyway). */
static int
put_pending (struct meta *m, MDB_txn *txn, struct meta_disk *d, bool clear)
{
  for (int map = 0; map < META_NR_MAPS; map++) {
    struct bitmap *b = &d->maps[map];
    for (uint64_t c = 0; c < b->nr_chunks; c++) {
      uint64_t bit = 1ULL << (c % 64);
      uint64_t was = clear
        ? __atomic_fetch_and (&b->pending[c / 64], ~bit, __ATOMIC_SEQ_CST)
        : __atomic_load_n (&b->pending[c / 64], __ATOMIC_SEQ_CST);
      if (!(was & bit))
        continue;
      uint64_t words[CHUNK_WORDS];
      for (size_t i = 0; i < CHUNK_WORDS; i++)
        words[i] = __atomic_load_n (&b->words[c * CHUNK_WORDS + i], __ATOMIC_SEQ_CST);
      int rc = put_chunk (m, txn, d, map, c, words);
      if (rc) {
        if (clear)
          __atomic_fetch_or (&b->pending[c / 64], bit, __ATOMIC_SEQ_CST);
        return rc;
      }
    }
  }
  return 0;
}

struct open_arg {
  struct meta_disk *d;
  const struct meta_record *init;
  bool widened;
};

static int
open_txn (struct meta *m, MDB_txn *txn, void *argp)
{
  struct open_arg *a = argp;
  struct meta_disk *d = a->d;
  struct disk_value v;
  int rc = get_disk_value (m, txn, d->name, &v);

  a->widened = false;
  if (rc == MDB_NOTFOUND) {
    MDB_val key = { 7, "next_id" }, val;
    uint32_t next = 1;
    if (!a->init)
      return MDB_NOTFOUND;
    rc = mdb_get (txn, m->info_dbi, &key, &val);
    if (rc == 0 && val.mv_size == sizeof next)
      memcpy (&next, val.mv_data, sizeof next);
    else if (rc != MDB_NOTFOUND && rc != 0)
      return rc;
    memset (&v, 0, sizeof v);
    v.rec = *a->init;
    if (v.rec.generation == 0)
      v.rec.generation = 1;
    v.id = next++;
    val.mv_size = sizeof next;
    val.mv_data = &next;
    if ((rc = mdb_put (txn, m->info_dbi, &key, &val, 0)) != 0)
      return rc;
  }
  else if (rc)
    return rc;

  d->id = v.id;
  d->rec = v.rec;
  d->nr_blocks = (v.rec.size + v.rec.block_size - 1) / v.rec.block_size;
  for (int map = 0; map < META_NR_MAPS; map++) {
    bitmap_free (&d->maps[map]);
    if (bitmap_init (&d->maps[map], d->nr_blocks) == -1)
      return ENOMEM;
    if ((rc = load_map (m, txn, d, map)) != 0)
      return rc;
  }
  clamp_tail (d);
  for (int map = 0; map < META_NR_MAPS; map++)
    recount (&d->maps[map]);

  if (v.open) {
    /* The last daemon died with this disk open: any present block may
     * have been written without its dirty/changed bits reaching the
     * index.  Widen, in this same commit (DESIGN.md rule 4). */
    for (uint64_t i = 0; i < d->maps[META_PRESENT].nr_chunks * CHUNK_WORDS; i++) {
      uint64_t w = d->maps[META_PRESENT].words[i];
      d->maps[META_CHANGED].words[i] |= w;
      d->maps[META_SUSPECT].words[i] |= w;
    }
    for (uint64_t c = 0; c < d->maps[META_PRESENT].nr_chunks; c++) {
      d->maps[META_CHANGED].pending[c / 64] |= 1ULL << (c % 64);
      d->maps[META_SUSPECT].pending[c / 64] |= 1ULL << (c % 64);
    }
    recount (&d->maps[META_CHANGED]);
    recount (&d->maps[META_SUSPECT]);
    v.rec.widened_generation = v.rec.generation;
    d->rec = v.rec;
    if ((rc = put_pending (m, txn, d, true)) != 0)
      return rc;
    a->widened = true;
  }
  v.open = true;
  return put_record (m, txn, d->name, &v);
}

int
meta_disk_open (struct meta *m, const char *name, const struct meta_record *init,
                struct meta_disk **dp, bool *widened)
{
  struct meta_disk *d = calloc (1, sizeof *d);
  struct open_arg a = { d, init, false };
  int rc;

  if (!d)
    return -1;
  if (init && (init->block_size == 0 ||
               (init->block_size & (init->block_size - 1)) != 0)) {
    free (d);
    errno = EINVAL;
    return -1;
  }
  if (strlen (name) >= sizeof d->name) {
    free (d);
    errno = ENAMETOOLONG;
    return -1;
  }
  if (init && (strchr (init->url, '\n') || strchr (init->identity, '\n'))) {
    free (d);
    errno = EINVAL;             /* the record is stored as lines */
    return -1;
  }
  d->m = m;
  snprintf (d->name, sizeof d->name, "%s", name);
  pthread_mutex_lock (&m->lock);
  for (struct meta_disk *o = m->disks; o; o = o->next)
    if (!strcmp (o->name, name)) {
      pthread_mutex_unlock (&m->lock);
      free (d);
      errno = EBUSY;
      return -1;
    }
  rc = write_txn (m, "open disk", open_txn, &a);
  if (rc == 0) {
    d->next = m->disks;
    m->disks = d;
  }
  pthread_mutex_unlock (&m->lock);
  if (rc) {
    for (int map = 0; map < META_NR_MAPS; map++)
      bitmap_free (&d->maps[map]);
    free (d);
    errno = rc;
    return -1;
  }
  if (a.widened)
    log_warn ("meta: disk %s: the previous daemon did not shut down cleanly; "
              "%" PRIu64 " present blocks marked changed and suspect",
              name, meta_count (d, META_PRESENT));
  if (widened)
    *widened = a.widened;
  *dp = d;
  return 0;
}

struct close_arg { struct meta_disk *d; };

static int
close_txn (struct meta *m, MDB_txn *txn, void *argp)
{
  struct meta_disk *d = ((struct close_arg *) argp)->d;
  struct disk_value v = { .rec = d->rec, .id = d->id, .open = false };
  int rc = put_pending (m, txn, d, false);

  for (size_t i = 0; rc == 0 && i < d->nr_orphans; i++)
    rc = put_old_changed_chunk (m, txn, &d->orphans[i]);
  if (rc)
    return rc;
  return put_record (m, txn, d->name, &v);
}

int
meta_disk_close (struct meta_disk *d, bool clean)
{
  struct meta *m = d->m;
  struct close_arg a = { d };
  struct meta_disk **pp;
  int rc = 0;

  pthread_mutex_lock (&m->lock);
  if (clean)
    rc = write_txn (m, "close disk", close_txn, &a);
  for (pp = &m->disks; *pp; pp = &(*pp)->next)
    if (*pp == d) {
      *pp = d->next;
      break;
    }
  pthread_mutex_unlock (&m->lock);
  for (int map = 0; map < META_NR_MAPS; map++)
    bitmap_free (&d->maps[map]);
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
  struct close_arg a = { d };
  int rc;

  pthread_mutex_lock (&m->lock);
  rc = write_txn (m, "close disk", close_txn, &a);
  pthread_mutex_unlock (&m->lock);
  if (rc) {
    errno = rc;
    return -1;
  }
  return 0;
}

void
meta_disk_record (struct meta_disk *d, struct meta_record *rec)
{
  pthread_mutex_lock (&d->m->lock);
  *rec = d->rec;
  pthread_mutex_unlock (&d->m->lock);
}

struct update_arg { struct meta_disk *d; const struct meta_record *rec; };

/* Must be called with m->lock held.  Put into rec the fields that
 * meta_disk_update never changes from a caller's copy: the change
 * generation belongs to meta_checkpoint, the widening mark to
 * meta_disk_open, mode and owner to meta_disk_set_attr.  A caller's copy
 * read before one of those (a state change that waited a long time on a
 * stalled parent, say) must not roll them back. */
static void
keep_own_fields (const struct meta_disk *d, struct meta_record *rec)
{
  rec->generation = d->rec.generation;
  rec->widened_generation = d->rec.widened_generation;
  rec->has_mode = d->rec.has_mode;
  rec->has_uid = d->rec.has_uid;
  rec->has_gid = d->rec.has_gid;
  rec->mode = d->rec.mode;
  rec->uid = d->rec.uid;
  rec->gid = d->rec.gid;
}

/* Must be called with m->lock held. */
static int
update_txn (struct meta *m, MDB_txn *txn, void *argp)
{
  struct update_arg *a = argp;
  struct disk_value v = { .rec = *a->rec, .id = a->d->id, .open = true };
  return put_record (m, txn, a->d->name, &v);
}

/* Must be called with m->lock held: write *rec, and make it the
 * in-memory record once committed.  0 or errno. */
static int
put_disk_record (struct meta_disk *d, const char *op, const struct meta_record *rec)
{
  struct update_arg a = { d, rec };
  int rc = write_txn (d->m, op, update_txn, &a);
  if (rc == 0)
    d->rec = *rec;
  return rc;
}

int
meta_disk_update (struct meta_disk *d, const struct meta_record *rec)
{
  struct meta_record r = *rec;
  int rc;

  assert (rec->size == d->rec.size && rec->block_size == d->rec.block_size);
  pthread_mutex_lock (&d->m->lock);
  keep_own_fields (d, &r);
  rc = put_disk_record (d, "update record", &r);
  pthread_mutex_unlock (&d->m->lock);
  if (rc) {
    errno = rc;
    return -1;
  }
  return 0;
}

int
meta_disk_set_attr (struct meta_disk *d, int64_t mode, int64_t uid, int64_t gid,
                    struct meta_record *out)
{
  struct meta_record r;
  int rc;

  pthread_mutex_lock (&d->m->lock);
  r = d->rec;
  if (mode >= 0) {
    r.mode = mode & 0777;
    r.has_mode = true;
  }
  if (uid >= 0) {
    r.uid = uid;
    r.has_uid = true;
  }
  if (gid >= 0) {
    r.gid = gid;
    r.has_gid = true;
  }
  rc = put_disk_record (d, "record mode and owner", &r);
  if (out)
    *out = d->rec;
  pthread_mutex_unlock (&d->m->lock);
  if (rc) {
    errno = rc;
    return -1;
  }
  return 0;
}

/* ---- group commit ---- */

struct meta_batch *
meta_batch_begin (struct meta *m)
{
  struct meta_batch *b = calloc (1, sizeof *b);

  if (!b)
    return NULL;
  b->m = m;
  pthread_mutex_lock (&m->lock);
  /* Orphans first (see meta_batch_drop); on ENOMEM they wait for the
   * next batch. */
  for (struct meta_disk *d = m->disks; d; d = d->next) {
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
  for (struct meta_disk *d = m->disks; d; d = d->next) {
    for (int map = 0; map < META_NR_MAPS; map++) {
      struct bitmap *bm = &d->maps[map];
      for (uint64_t pw = 0; pw < (bm->nr_chunks + 63) / 64; pw++) {
        uint64_t bits;
        if (!__atomic_load_n (&bm->pending[pw], __ATOMIC_RELAXED))
          continue;
        /* Clear pending, then copy: see the thread-model note. */
        bits = __atomic_exchange_n (&bm->pending[pw], 0, __ATOMIC_SEQ_CST);
        while (bits) {
          uint64_t c = pw * 64 + __builtin_ctzll (bits);
          bits &= bits - 1;
          if (b->n == b->cap) {
            size_t cap = b->cap ? b->cap * 2 : 64;
            struct batch_chunk *nv = realloc (b->v, cap * sizeof *nv);
            if (!nv) {
              /* Put back what we could not take, then give up. */
              __atomic_fetch_or (&bm->pending[pw], bits | 1ULL << (c % 64), __ATOMIC_SEQ_CST);
              pthread_mutex_unlock (&m->lock);
              meta_batch_drop (b, NULL);
              free (b->v);
              free (b);
              errno = ENOMEM;
              return NULL;
            }
            b->v = nv;
            b->cap = cap;
          }
          struct batch_chunk *bc = &b->v[b->n++];
          bc->d = d;
          bc->map = map;
          bc->gen = d->rec.generation;
          bc->chunk = c;
          for (size_t i = 0; i < CHUNK_WORDS; i++)
            bc->words[i] = __atomic_load_n (&bm->words[c * CHUNK_WORDS + i], __ATOMIC_SEQ_CST);
        }
      }
    }
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

/* Remove d's chunks from the batch (all chunks if d is NULL) and put them
 * back in the pending sets.  A META_CHANGED chunk of a generation that a
 * checkpoint has closed since it was taken cannot go back there (the
 * pending set and the in-memory map are the new generation's): it waits
 * in the disk's orphans for the next batch, which commits it under its
 * own generation (merged, see put_old_changed_chunk).  A disk whose
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
    else if (bc->map == META_CHANGED && bc->gen != bc->d->rec.generation) {
      struct meta_disk *od = bc->d;
      struct batch_chunk *nv = realloc (od->orphans, (od->nr_orphans + 1) * sizeof *nv);
      if (!nv) {
        log_error ("meta: disk %s: out of memory keeping changed blocks of generation %"
                   PRIu32 " (chunk %" PRIu64 "): an incremental backup from it may miss "
                   "them", od->name, bc->gen, bc->chunk);
        continue;
      }
      od->orphans = nv;
      od->orphans[od->nr_orphans++] = *bc;
    }
    else {
      struct bitmap *bm = &bc->d->maps[bc->map];
      __atomic_fetch_or (&bm->pending[bc->chunk / 64], 1ULL << (bc->chunk % 64),
                         __ATOMIC_SEQ_CST);
    }
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
    int rc = bc->map == META_CHANGED && bc->gen != bc->d->rec.generation
      ? put_old_changed_chunk (m, txn, bc)
      : put_chunk_gen (m, txn, bc->d, bc->map, bc->chunk, bc->words, bc->gen);
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
    rc = write_txn (m, "commit", batch_txn, b);
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

/* ---- change generations ---- */

struct ckpt_arg { struct meta_disk *d; };

static int
ckpt_txn (struct meta *m, MDB_txn *txn, void *argp)
{
  struct meta_disk *d = ((struct ckpt_arg *) argp)->d;
  struct bitmap *b = &d->maps[META_CHANGED];
  struct disk_value v = { .rec = d->rec, .id = d->id, .open = true };
  int rc;

  /* Every chunk of the old generation that is not yet durable, under the
   * old generation's key (put_chunk reads d->rec.generation). */
  for (uint64_t c = 0; c < b->nr_chunks; c++) {
    if (!(b->pending[c / 64] & (1ULL << (c % 64))))
      continue;
    if ((rc = put_chunk (m, txn, d, META_CHANGED, c, &b->words[c * CHUNK_WORDS])) != 0)
      return rc;
  }
  v.rec.generation++;
  return put_record (m, txn, d->name, &v);
}

uint32_t
meta_checkpoint (struct meta_disk *d)
{
  struct meta *m = d->m;
  struct bitmap *b = &d->maps[META_CHANGED];
  struct ckpt_arg a = { d };
  uint32_t gen = 0;
  int rc;

  pthread_mutex_lock (&m->lock);
  rc = write_txn (m, "checkpoint", ckpt_txn, &a);
  if (rc == 0) {
    /* Committed: now switch the in-memory map to the new generation. */
    d->rec.generation++;
    memset (b->words, 0, b->nr_chunks * CHUNK_WORDS * sizeof (uint64_t));
    memset (b->pending, 0, (b->nr_chunks + 63) / 64 * sizeof (uint64_t));
    b->count = 0;
    gen = d->rec.generation;
  }
  pthread_mutex_unlock (&m->lock);
  if (rc)
    errno = rc;
  return gen;
}

struct or_arg { uint64_t *u; uint64_t nr_chunks; };

/* OR one stored page into the union (out-of-range or malformed pages are
 * skipped, as load_chunk does). */
static int
or_chunk (void *opaque, uint64_t chunk, const void *page, size_t len)
{
  struct or_arg *o = opaque;
  uint64_t w[CHUNK_WORDS];

  if (chunk >= o->nr_chunks || len != CHUNK_BYTES)
    return 0;
  memcpy (w, page, sizeof w);   /* LMDB data may be unaligned */
  for (size_t i = 0; i < CHUNK_WORDS; i++)
    o->u[chunk * CHUNK_WORDS + i] |= w[i];
  return 0;
}

int
meta_changed_extents (struct meta_disk *d, uint32_t since, bool *widened,
                      int (*fn) (void *opaque, uint64_t first_blk, uint64_t nr_blks),
                      void *opaque)
{
  struct meta *m = d->m;
  uint64_t nr_words = d->maps[META_CHANGED].nr_chunks * CHUNK_WORDS;
  uint64_t *u = calloc (nr_words, sizeof *u);
  struct or_arg o = { u, d->maps[META_CHANGED].nr_chunks };
  uint32_t current;
  MDB_txn *txn = NULL;
  int rc = 0;

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
  rc = mdb_txn_begin (m->env, NULL, MDB_RDONLY, &txn);
  for (uint32_t g = since; rc == 0 && g < current; g++)
    rc = for_each_chunk (m, txn, d->id, META_CHANGED, g, or_chunk, &o);
  if (txn)
    mdb_txn_abort (txn);
  for (uint64_t i = 0; i < nr_words; i++)
    u[i] |= __atomic_load_n (&d->maps[META_CHANGED].words[i], __ATOMIC_SEQ_CST);
  pthread_mutex_unlock (&m->lock);
  if (rc) {
    free (u);
    errno = mdb_errno ("read changed maps", rc);
    return -1;
  }
  for (uint64_t blk = 0; blk < d->nr_blocks; ) {
    if (!(u[blk / 64] >> (blk % 64) & 1)) {
      blk++;
      continue;
    }
    uint64_t end = blk + 1;
    while (end < d->nr_blocks && (u[end / 64] >> (end % 64) & 1))
      end++;
    if (fn (opaque, blk, end - blk) == -1)
      break;
    blk = end;
  }
  free (u);
  return 0;
}
