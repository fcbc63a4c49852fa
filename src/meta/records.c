/* corfs: disk records: the one table of state names, the identity policy,
 * the record's encoding, and reading and updating records.
 *
 * A record is stored in the "disks" database under the disk's name as
 * "key=value" lines, easy to read with mdb_dump.  Unknown keys are
 * skipped, so that a field added later (mode, uid, gid were) leaves
 * older records readable and older daemons able to read newer ones.
 *
 * Notes on the thread model: records are read and written from many
 * threads: the daemon's main thread (attach: meta_record_get,
 * meta_disk_names, the first updates), ctl job threads (owner-state
 * transitions, under the engine's d->owner_lock), merge job threads and
 * the streamer (cor_update_record, under d->owner_lock too), FUSE worker
 * threads (chmod and chown: meta_disk_set_attr, under d->attr_lock) and
 * the ctl thread (status: meta_disk_record).  Every function here takes
 * m->lock (store.c: a leaf) for its whole run; the in-memory record
 * d->rec is protected by it, and changes only once its commit succeeded.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lmdb.h>

#include "common/log.h"
#include "meta/meta-internal.h"

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

/* ---- encoding: "key=value" lines ---- */

static char *
encode_record (const struct disk_value *v, size_t *len)
{
  char *s = NULL, mode[16] = "", uid[24] = "", gid[24] = "", dsize[40] = "", format[32] = "";
  char backing[META_ID_MAX + 32] = "";
  const char *sources = v->rec.sources[0] ? "sources=" : "";
  const char *ids = v->rec.source_ids[0] ? "source_ids=" : "";
  int n;

  /* Written only when set: older daemons skip unknown keys, and an
   * unset one keeps meaning "the default" (meta_record). */
  if (v->rec.has_mode)
    snprintf (mode, sizeof mode, "mode=0%o\n", (unsigned) (v->rec.mode & 0777));
  if (v->rec.has_uid)
    snprintf (uid, sizeof uid, "uid=%" PRIu32 "\n", v->rec.uid);
  if (v->rec.has_gid)
    snprintf (gid, sizeof gid, "gid=%" PRIu32 "\n", v->rec.gid);
  if (v->rec.format[0] != '\0' && strcmp (v->rec.format, "raw") != 0)
    snprintf (format, sizeof format, "format=%.15s\n", v->rec.format);
  if (v->rec.backing_identity[0] != '\0')
    snprintf (backing, sizeof backing, "backing_identity=%.*s\n", META_ID_MAX - 1,
              v->rec.backing_identity);
  /* Only once grown: a record of a disk of its parent's size stays as
   * it was (and an older daemon reads it right). */
  if (v->rec.disk_size > v->rec.size)
    snprintf (dsize, sizeof dsize, "disk_size=%" PRIu64 "\n", v->rec.disk_size);
  n = asprintf (&s,
                    "id=%" PRIu32 "\nurl=%s\nidentity=%s\nsize=%" PRIu64 "\n"
                    "block_size=%" PRIu32 "\nstate=%s\nepoch=%" PRIu64 "\n"
                    "write_mode=%s\nparent_owned=%d\ncomplete=%d\n"
                    "generation=%" PRIu32 "\nwidened_generation=%" PRIu32 "\n"
                    "merging=%d\nopen=%d\n%s%s%s%s%s%s%s%s%s%s%s%s",
                    v->id, v->rec.url, v->rec.identity, v->rec.size,
                    v->rec.block_size, state_names[v->rec.state], v->rec.epoch,
                    v->rec.mirror ? "mirror" : "writeback", v->rec.parent_owned,
                    v->rec.complete, v->rec.generation,
                    v->rec.widened_generation, v->rec.merging, v->open, mode, uid, gid, dsize,
                    format, backing, sources, v->rec.sources, *sources ? "\n" : "",
                    ids, v->rec.source_ids, *ids ? "\n" : "");
  if (n < 0)
    return NULL;
  *len = n;
  return s;
}

/* Set the field named k from its text val; unknown keys are skipped. */
static void
decode_field (struct disk_value *v, const char *k, const char *val)
{
  if (!strcmp (k, "id")) v->id = strtoul (val, NULL, 10);
  else if (!strcmp (k, "url")) snprintf (v->rec.url, sizeof v->rec.url, "%s", val);
  else if (!strcmp (k, "identity")) snprintf (v->rec.identity, sizeof v->rec.identity, "%s", val);
  else if (!strcmp (k, "size")) v->rec.size = strtoull (val, NULL, 10);
  else if (!strcmp (k, "disk_size")) v->rec.disk_size = strtoull (val, NULL, 10);
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
  else if (!strcmp (k, "sources"))
    snprintf (v->rec.sources, sizeof v->rec.sources, "%s", val);
  else if (!strcmp (k, "source_ids"))
    snprintf (v->rec.source_ids, sizeof v->rec.source_ids, "%s", val);
  else if (!strcmp (k, "backing_identity"))
    snprintf (v->rec.backing_identity, sizeof v->rec.backing_identity, "%s", val);
  else if (!strcmp (k, "format"))
    snprintf (v->rec.format, sizeof v->rec.format, "%s", val);
  else if (!strcmp (k, "gid")) {
    v->rec.gid = strtoul (val, NULL, 10);
    v->rec.has_gid = true;
  }
}

/* data is LMDB's memory (len bytes, no terminating NUL): decoded from a
 * copy.  0, or -1 when out of memory. */
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
    if (!eq)
      continue;
    *eq = '\0';
    decode_field (v, line, eq + 1);
  }
  free (copy);
  if (v->rec.disk_size < v->rec.size)
    v->rec.disk_size = v->rec.size;   /* not grown (or recorded before growing was) */
  return 0;
}

int
meta_put_record (struct meta *m, MDB_txn *txn, const char *name,
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

int
meta_get_record (struct meta *m, MDB_txn *txn, const char *name,
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

/* ---- reading ---- */

int
meta_record_get (struct meta *m, const char *name, struct meta_record *rec)
{
  MDB_txn *txn;
  struct disk_value v;
  int rc;

  pthread_mutex_lock (&m->lock);
  rc = mdb_txn_begin (m->env, NULL, MDB_RDONLY, &txn);
  if (rc == 0) {
    rc = meta_get_record (m, txn, name, &v);
    mdb_txn_abort (txn);
  }
  pthread_mutex_unlock (&m->lock);
  if (rc == MDB_NOTFOUND) {
    errno = ENOENT;
    return -1;
  }
  if (rc) {
    errno = meta_mdb_errno ("read record", rc);
    return -1;
  }
  *rec = v.rec;
  return 0;
}

/* Must be called with m->lock held.  Append every recorded name to the
 * NULL-terminated array *vp of *np names.  0, ENOMEM, or an LMDB error
 * (MDB_NOTFOUND at the end of the names). */
static int
list_names (struct meta *m, MDB_txn *txn, char ***vp, size_t *np)
{
  MDB_cursor *cur;
  MDB_val key, val;
  int rc = mdb_cursor_open (txn, m->disks_dbi, &cur);

  if (rc)
    return rc;
  for (rc = mdb_cursor_get (cur, &key, &val, MDB_FIRST); rc == 0;
       rc = mdb_cursor_get (cur, &key, &val, MDB_NEXT)) {
    char **nv = realloc (*vp, (*np + 2) * sizeof **vp);
    if (!nv || !(nv[*np] = strndup (key.mv_data, key.mv_size))) {
      *vp = nv ? nv : *vp;
      rc = ENOMEM;
      break;
    }
    *vp = nv;
    nv[++*np] = NULL;
  }
  mdb_cursor_close (cur);
  return rc;
}

int
meta_disk_names (struct meta *m, char ***names)
{
  MDB_txn *txn;
  size_t n = 0;
  char **v = calloc (1, sizeof *v);
  int rc;

  if (!v)
    return -1;
  pthread_mutex_lock (&m->lock);
  rc = mdb_txn_begin (m->env, NULL, MDB_RDONLY, &txn);
  if (rc == 0) {
    rc = list_names (m, txn, &v, &n);
    mdb_txn_abort (txn);
  }
  pthread_mutex_unlock (&m->lock);
  if (rc != MDB_NOTFOUND && rc != 0) {
    for (size_t i = 0; i < n; i++)
      free (v[i]);
    free (v);
    errno = rc == ENOMEM ? ENOMEM : meta_mdb_errno ("list disks", rc);
    return -1;
  }
  *names = v;
  return 0;
}

void
meta_disk_record (struct meta_disk *d, struct meta_record *rec)
{
  pthread_mutex_lock (&d->m->lock);
  *rec = d->rec;
  pthread_mutex_unlock (&d->m->lock);
}

/* ---- updating ---- */

struct update_arg { struct meta_disk *d; const struct meta_record *rec; };

/* Must be called with m->lock held.  Put into rec the fields that
 * meta_disk_update never changes from a caller's copy: the change
 * generation belongs to meta_checkpoint, the widening mark to
 * meta_disk_open, the disk's size to meta_disk_grow, mode and owner to
 * meta_disk_set_attr.  A caller's copy
 * read before one of those (a state change that waited a long time on a
 * stalled parent, say) must not roll them back. */
static void
keep_own_fields (const struct meta_disk *d, struct meta_record *rec)
{
  rec->generation = d->rec.generation;
  rec->widened_generation = d->rec.widened_generation;
  rec->disk_size = d->rec.disk_size;
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
  return meta_put_record (m, txn, a->d->name, &v);
}

/* Must be called with m->lock held: write *rec, and make it the
 * in-memory record once committed.  0 or errno. */
static int
put_disk_record (struct meta_disk *d, const char *op, const struct meta_record *rec)
{
  struct update_arg a = { d, rec };
  int rc = meta_write_txn (d->m, op, update_txn, &a);
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
