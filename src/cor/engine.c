/* corfs: the engine and its disks: create, add (cor_disk_add), quiesce,
 * stop and free; one teardown for a disk built in full or in part.
 *
 * Thread model: cor_engine_new, cor_disk_add and cor_engine_start run on
 * the daemon's main thread before any guest request; quiesce, free and
 * finish at shutdown, after the FUSE session ended.  e->lock guards the
 * disk array while it is built (fixed once the committer runs); quiesce
 * takes owner_lock (the seal, with a deadline) and then d->lock, in the
 * LOCK ORDER of cor-internal.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "common/cleanup.h"
#include "common/log.h"
#include "common/util.h"
#include "cor/cor-internal.h"
#include "format/format.h"
#include "remote/remote.h"

int
cor_engine_new (struct meta *m, struct cor_engine **ep)
{
  struct cor_engine *e = calloc (1, sizeof *e);

  if (!e)
    return -1;
  e->meta = m;
  pthread_mutex_init (&e->lock, NULL);
  cond_init_monotonic (&e->wake);
  pthread_cond_init (&e->done, NULL);
  *ep = e;
  return 0;
}

/* Save the order of guest faults as "offset length" lines, unless a
 * trace for this image exists already (the first cold start is the one
 * worth replaying). */
static void
save_trace (struct cor_disk *d)
{
  char tmp[4096];
  FILE *f;

  if (!d->trace_path || d->nr_trace == 0 || access (d->trace_path, F_OK) == 0)
    return;
  snprintf (tmp, sizeof tmp, "%s.tmp", d->trace_path);
  /* Never through a symlink left in the state directory. */
  int fd = open (tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
  f = fd >= 0 ? fdopen (fd, "w") : NULL;
  if (!f) {
    if (fd >= 0)
      close (fd);
    log_warn ("cor: disk %s: saving fault trace %s: %m", d->name, tmp);
    return;
  }
  fprintf (f, "# corfs fault trace of disk %s: offset length (bytes), in fault order\n",
           d->name);
  for (size_t i = 0; i < d->nr_trace; i++)
    fprintf (f, "%" PRIu64 " %" PRIu64 "\n", d->trace[i].offset, d->trace[i].length);
  if (fclose (f) == EOF || rename (tmp, d->trace_path) == -1)
    log_warn ("cor: disk %s: saving fault trace %s: %m", d->name, d->trace_path);
  else
    log_info ("cor: disk %s: saved %zu fault ranges to %s", d->name, d->nr_trace,
              d->trace_path);
}

/* Free a disk that cor_disk_add built in full or in part: every lock
 * and condition variable is initialised before anything can fail (see
 * disk_new), and what was never set is NULL or -1.  owns_parts: the
 * engine owns md and remote (the disk was added), so close them too;
 * clean is meta_disk_close's.  The one teardown of a disk: the error
 * path of cor_disk_add and cor_engine_free both come here. */
static void
disk_teardown (struct cor_disk *d, bool owns_parts, bool clean)
{
  free (d->trace);
  free (d->trace_path);
  free (d->stream.hints);
  pthread_mutex_destroy (&d->stream.lock);
  pthread_cond_destroy (&d->stream.cond);
  pthread_mutex_destroy (&d->owner_lock);
  pthread_mutex_destroy (&d->attr_lock);
  pthread_mutex_destroy (&d->ra.lock);
  pthread_cond_destroy (&d->ra.cond);
  if (owns_parts) {
    if (meta_disk_close (d->md, clean) == -1)
      log_error ("cor: disk %s: closing the index: %m", d->name);
    format_close (d->format);
    remote_close (d->remote);
  }
  cor_overlay_close (d);
  pthread_mutex_destroy (&d->lock);
  pthread_cond_destroy (&d->cond);
  pthread_mutex_destroy (&d->store_lock);
  free (d->name);
  free (d);
}

static void
disk_free (struct cor_disk *d, bool clean)
{
  save_trace (d);
  disk_teardown (d, true, clean);
}

void
cor_engine_quiesce (struct cor_engine *e)
{
  if (!e)
    return;
  __atomic_store_n (&e->stopping, 1, __ATOMIC_SEQ_CST);
  for (size_t i = 0; i < e->nr_disks; i++) {
    struct cor_disk *d = e->disks[i];
    cor_stream_stop (d);
    cor_readahead_stop (d);
    cor_seal_mirror (d);
    remote_cancel (d->remote);
    if (d->format)
      format_cancel (d->format);
    pthread_mutex_lock (&d->lock);
    pthread_cond_broadcast (&d->cond);  /* inflight_own_all re-checks stopping */
    pthread_mutex_unlock (&d->lock);
  }
}

/* Stop the streamers and readahead, then the committer, which runs the
 * final commit.  Streamers and readahead first: they fetch and would race
 * with the final commit.  All are told to stop before any is waited for,
 * so disks whose parents are slow wait out their requests in flight
 * together, not one after another.  0 or errno of the final commit. */
static int
stop_and_commit (struct cor_engine *e)
{
  for (size_t i = 0; i < e->nr_disks; i++) {
    cor_stream_stop (e->disks[i]);
    cor_readahead_stop (e->disks[i]);
  }
  for (size_t i = 0; i < e->nr_disks; i++) {
    cor_stream_join (e->disks[i]);
    cor_readahead_join (e->disks[i]);
  }
  return cor_engine_stop (e);
}

int
cor_engine_free (struct cor_engine *e)
{
  int r, ret = 0;

  if (!e)
    return 0;
  r = stop_and_commit (e);
  for (size_t i = 0; i < e->nr_disks; i++) {
    struct cor_disk *d = e->disks[i];
    bool clean = r == 0 && __atomic_load_n (&d->health, __ATOMIC_SEQ_CST) != COR_FAILED;
    if (!clean)
      ret = -1;
    disk_free (d, clean);
  }
  free (e->disks);
  pthread_mutex_destroy (&e->lock);
  pthread_cond_destroy (&e->wake);
  pthread_cond_destroy (&e->done);
  free (e);
  return ret;
}

int
cor_engine_finish (struct cor_engine *e)
{
  int r, ret = 0;

  if (!e)
    return 0;
  r = stop_and_commit (e);
  for (size_t i = 0; i < e->nr_disks; i++) {
    struct cor_disk *d = e->disks[i];
    bool clean = r == 0 && __atomic_load_n (&d->health, __ATOMIC_SEQ_CST) != COR_FAILED;
    /* The final commit synced what it committed; a clean close needs
     * every write before it synced (meta_disk_close's rule). */
    if (clean && cor_overlay_sync (d) == -1) {
      log_error ("cor: disk %s: syncing the overlay at exit: %m", d->name);
      clean = false;
    }
    if (clean && meta_disk_seal (d->md) == -1) {
      log_error ("cor: disk %s: closing the index: %m", d->name);
      clean = false;
    }
    if (!clean)
      ret = -1;
    save_trace (d);
  }
  return ret;
}

/* Allocate a disk from its record and config, with every lock, the
 * readahead and the streamer set up, so that disk_teardown can free it
 * from here on.  md and remote are still the caller's.  NULL with errno. */
static struct cor_disk *
disk_new (struct cor_engine *e, const struct cor_disk_config *cfg,
          const struct meta_record *rec)
{
  struct cor_disk *d = calloc (1, sizeof *d);

  if (!d || !(d->name = strdup (cfg->name))) {
    free (d);
    return NULL;
  }
  d->overlay_fd = -1;
  d->e = e;
  d->md = cfg->md;
  d->remote = cfg->remote;
  d->format = cfg->format;
  d->size = rec->disk_size;
  d->parent_size = rec->size;
  d->block_size = rec->block_size;
  d->block_shift = __builtin_ctz (rec->block_size);
  d->nr_blocks = meta_nr_blocks (cfg->md);
  d->hold_ns = cfg->hold_ns;
  pthread_mutex_init (&d->lock, NULL);
  cond_init_monotonic (&d->cond);    /* fault_in's timed waits use now_ns () */
  d->exclusive_deadline_ns = UINT64_MAX;
  pthread_mutex_init (&d->store_lock, NULL);
  d->start_mode = cfg->stream;
  pthread_mutex_init (&d->owner_lock, NULL);
  pthread_mutex_init (&d->attr_lock, NULL);
  cor_attr_from_record (d, rec);
  d->owner = rec->state;
  d->mirror = rec->mirror && rec->state != META_STANDALONE;
  /* Rule 7 across a worker restart (meta's shared state). */
  if (meta_disk_was_failed (cfg->md)) {
    d->health = COR_FAILED;
    log_error ("cor: disk %s: an overlay sync failed in the previous worker; the disk "
               "stays read-only and every flush fails", d->name);
  }
  cor_readahead_init (d, cfg->readahead);
  /* cor_stream_init initialises the streamer's lock before anything in
   * it can fail (copying the hints). */
  if (cor_stream_init (d, cfg) == -1 ||
      (cfg->trace_path && !(d->trace_path = strdup (cfg->trace_path)))) {
    int err = errno;
    disk_teardown (d, false, false);
    errno = err;
    return NULL;
  }
  return d;
}

/* Add d to the engine's disks (fixed once the committer runs).  0 or -1
 * with errno. */
static int
engine_append (struct cor_engine *e, struct cor_disk *d)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&e->lock);
  assert (!e->running);
  struct cor_disk **nv = realloc (e->disks, (e->nr_disks + 1) * sizeof *nv);
  if (!nv)
    return -1;
  e->disks = nv;
  d->index = e->nr_disks;
  e->disks[e->nr_disks++] = d;
  return 0;
}

int
cor_disk_add (struct cor_engine *e, const struct cor_disk_config *cfg,
              struct cor_disk **dp)
{
  struct meta_record rec;
  struct cor_disk *d;

  meta_disk_record (cfg->md, &rec);
  if (!(d = disk_new (e, cfg, &rec)))
    return -1;
  if (rec.state == META_ACTIVATING && cor_resume_activation (d, &rec) == -1)
    goto err;
  /* While incoming, the source still writes the parent: its identity is
   * pinned at activation, not before.  A mirror writes it itself. */
  if (rec.state == META_INCOMING || (d->mirror && rec.state == META_ACTIVE))
    remote_set_modifying (cfg->remote, true);
  if (cor_overlay_open (d, cfg->overlay_path) == -1 || engine_append (e, d) == -1)
    goto err;
  cor_sources_watch (d);        /* sources.c: a source set's events */
  *dp = d;
  return 0;

 err:
  {
    int err = errno;
    disk_teardown (d, false, false);   /* md and remote stay the caller's */
    errno = err;
  }
  return -1;
}

size_t cor_disk_count (struct cor_engine *e) { return e->nr_disks; }

struct cor_disk *
cor_disk_get (struct cor_engine *e, size_t i)
{
  return i < e->nr_disks ? e->disks[i] : NULL;
}

struct cor_disk *
cor_disk_find (struct cor_engine *e, const char *name)
{
  for (size_t i = 0; i < e->nr_disks; i++)
    if (!strcmp (e->disks[i]->name, name))
      return e->disks[i];
  return NULL;
}

const char *cor_disk_name (const struct cor_disk *d) { return d->name; }
uint64_t cor_disk_size (const struct cor_disk *d) { return __atomic_load_n (&d->size, __ATOMIC_ACQUIRE); }
uint64_t cor_disk_parent_size (const struct cor_disk *d) { return d->parent_size; }

static bool
owner_accepts_writes (int owner)
{
  return owner == META_ACTIVE || owner == META_STANDALONE;
}

bool
cor_disk_mirror (const struct cor_disk *d)
{
  return d->mirror;
}

bool
cor_disk_writable (const struct cor_disk *d)
{
  return __atomic_load_n (&d->health, __ATOMIC_SEQ_CST) == COR_RW &&
    owner_accepts_writes (__atomic_load_n (&d->owner, __ATOMIC_SEQ_CST));
}

bool
cor_disk_openable_rw (const struct cor_disk *d)
{
  return __atomic_load_n (&d->health, __ATOMIC_SEQ_CST) == COR_RW &&
    __atomic_load_n (&d->owner, __ATOMIC_SEQ_CST) != META_HANDED_OFF;
}

/* ---- merge support ---- */

unsigned cor_disk_block_shift (const struct cor_disk *d) { return d->block_shift; }
uint64_t cor_disk_nr_blocks (const struct cor_disk *d) { return __atomic_load_n (&d->nr_blocks, __ATOMIC_ACQUIRE); }
struct meta_disk *cor_disk_meta (struct cor_disk *d) { return d->md; }
struct remote *cor_disk_remote (struct cor_disk *d) { return d->remote; }
struct format *cor_disk_format (struct cor_disk *d) { return d->format; }
