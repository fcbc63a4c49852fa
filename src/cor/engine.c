/* corfs: the engine and its disks: create, add, quiesce, stop, free. */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "common/iobuf.h"
#include "common/log.h"
#include "common/util.h"
#include "cor/cor-internal.h"
#include "meta/meta.h"
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

static void
disk_free (struct cor_disk *d, bool clean)
{
  save_trace (d);
  free (d->trace);
  free (d->trace_path);
  free (d->stream.hints);
  pthread_mutex_destroy (&d->stream.lock);
  pthread_cond_destroy (&d->stream.cond);
  pthread_mutex_destroy (&d->owner_lock);
  pthread_mutex_destroy (&d->attr_lock);
  pthread_mutex_destroy (&d->ra.lock);
  pthread_cond_destroy (&d->ra.cond);
  if (meta_disk_close (d->md, clean) == -1)
    log_error ("cor: disk %s: closing the index: %m", d->name);
  remote_close (d->remote);
  if (close (d->overlay_fd) == -1)
    log_error ("cor: disk %s: closing the overlay: %m", d->name);
  pthread_mutex_destroy (&d->lock);
  pthread_cond_destroy (&d->cond);
  pthread_mutex_destroy (&d->store_lock);
  free (d->name);
  free (d);
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
    pthread_mutex_lock (&d->lock);
    pthread_cond_broadcast (&d->cond);  /* own_all re-checks stopping */
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
    if (clean && fdatasync (d->overlay_fd) == -1) {
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

int
cor_disk_add (struct cor_engine *e, const struct cor_disk_config *cfg,
              struct cor_disk **dp)
{
  struct cor_disk *d = calloc (1, sizeof *d), **nv;
  struct meta_record rec;
  struct stat st;
  uint64_t present;

  if (!d || !(d->name = strdup (cfg->name))) {
    free (d);
    return -1;
  }
  d->overlay_fd = -1;
  meta_disk_record (cfg->md, &rec);
  d->e = e;
  d->md = cfg->md;
  d->remote = cfg->remote;
  d->size = rec.size;
  d->block_size = rec.block_size;
  d->block_shift = __builtin_ctz (rec.block_size);
  d->nr_blocks = meta_nr_blocks (cfg->md);
  d->hold_ns = cfg->hold_ns;
  pthread_mutex_init (&d->lock, NULL);
  cond_init_monotonic (&d->cond);    /* fault_in's timed waits use now_ns () */
  d->exclusive_deadline_ns = UINT64_MAX;
  pthread_mutex_init (&d->store_lock, NULL);
  d->start_mode = cfg->stream;
  pthread_mutex_init (&d->owner_lock, NULL);
  pthread_mutex_init (&d->attr_lock, NULL);
  cor_attr_from_record (d, &rec);
  d->owner = rec.state;
  d->mirror = rec.mirror && rec.state != META_STANDALONE;
  if (rec.state == META_ACTIVATING) {
    /* Interrupted activation: this is a fresh mount, so the kernel has
     * no cached pages to drop; finish with the last steps: pin the
     * parent, which is final now, and record it with state active.  From
     * here on a changed parent fails closed, as after any activation. */
    /* A parent that cannot be pinned (unreachable, another size): the
     * disk goes back to incoming, durably, rather than failing every
     * mount; `activate` with the same epoch finishes it later. */
    rec.state = cor_pin_parent (d, &rec) == 0 ? META_ACTIVE : META_INCOMING;
    if (meta_disk_update (cfg->md, &rec) == -1) {
      log_error ("cor: disk %s: finishing an interrupted activation: %m", cfg->name);
      goto err;
    }
    if (rec.state == META_ACTIVE)
      log_info ("cor: disk %s: finished an interrupted activation (epoch %" PRIu64 ")",
                cfg->name, rec.epoch);
    d->owner = rec.state;
  }
  /* While incoming, the source still writes the parent: its identity is
   * pinned at activation, not before.  A mirror writes it itself. */
  if (rec.state == META_INCOMING || (d->mirror && rec.state == META_ACTIVE))
    remote_set_modifying (cfg->remote, true);
  if (cfg->trace_path && !(d->trace_path = strdup (cfg->trace_path)))
    goto err;
  cor_readahead_init (d, cfg->readahead);
  if (cor_stream_init (d, cfg) == -1)
    goto err;

  /* Only a disk with nothing present may get a new overlay: where the
   * index records present blocks, a missing overlay is lost data, not a
   * file to create. */
  present = meta_count (d->md, META_PRESENT);
  d->overlay_fd = open (cfg->overlay_path, O_RDWR | O_CLOEXEC | O_NOFOLLOW | (present ? 0 : O_CREAT),
                        0600);
  if (d->overlay_fd == -1 || fstat (d->overlay_fd, &st) == -1) {
    if (present)
      log_error ("cor: disk %s: overlay %s: %m; the index records %" PRIu64 " blocks "
                 "present in it", d->name, cfg->overlay_path, present);
    else
      log_error ("cor: disk %s: overlay %s: %m", d->name, cfg->overlay_path);
    goto err;
  }
  if ((uint64_t) st.st_size != d->size) {
    /* A new overlay is extended to the disk size (sparse).  One with
     * another size while blocks are recorded present is not ours, or
     * was lost (an empty file): its blocks would read as zeros. */
    if (present > 0) {
      if (st.st_size == 0)
        log_error ("cor: disk %s: overlay %s is empty, but the index records %" PRIu64
                   " blocks present in it (was it lost or replaced?); refusing to serve "
                   "zeros for them", d->name, cfg->overlay_path, present);
      else
        log_error ("cor: disk %s: overlay %s has size %" PRIu64 " but the disk is %"
                   PRIu64 " bytes", d->name, cfg->overlay_path, (uint64_t) st.st_size, d->size);
      errno = EINVAL;
      goto err;
    }
    if (ftruncate (d->overlay_fd, d->size) == -1 || fsync (d->overlay_fd) == -1) {
      log_error ("cor: disk %s: sizing overlay %s: %m", d->name, cfg->overlay_path);
      goto err;
    }
  }
  /* No readahead on the overlay: every read of it is already as large as
   * its reader wants (the FUSE request, which the kernel's readahead on
   * the disk file sized), and ext4's readahead fills 2 MiB folios, which
   * make each later small write into them cost ~10x (see
   * OVERLAY_WRITE_MAX): 4 KiB random writes through the mount fell from
   * 152k to 31k IOPS after a warm sequential read.  Reading 1 GiB in
   * 1 MiB preads from a cold ext4 file measured 1314-1382 MB/s with this
   * advice, 541-1101 MB/s without.  Advice only: a failure costs speed. */
  if ((errno = posix_fadvise (d->overlay_fd, 0, 0, POSIX_FADV_RANDOM)) != 0)
    log_debug ("cor: disk %s: posix_fadvise RANDOM on the overlay: %m", d->name);

  pthread_mutex_lock (&e->lock);
  assert (!e->running);         /* the disk array is fixed once committing */
  nv = realloc (e->disks, (e->nr_disks + 1) * sizeof *nv);
  if (nv) {
    e->disks = nv;
    d->index = e->nr_disks;
    e->disks[e->nr_disks++] = d;
  }
  pthread_mutex_unlock (&e->lock);
  if (!nv)
    goto err;
  *dp = d;
  return 0;

 err:
  {
    int e2 = errno;
    if (d->overlay_fd >= 0)
      close (d->overlay_fd);
    free (d->trace_path);
    free (d->stream.hints);
    pthread_mutex_destroy (&d->lock);
    pthread_cond_destroy (&d->cond);
    pthread_mutex_destroy (&d->store_lock);
    pthread_mutex_destroy (&d->ra.lock);
    pthread_cond_destroy (&d->ra.cond);
    free (d->name);
    free (d);
    errno = e2;
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
uint64_t cor_disk_size (const struct cor_disk *d) { return d->size; }

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

uint64_t
cor_disk_allocated (const struct cor_disk *d)
{
  struct stat st;
  return fstat (d->overlay_fd, &st) == 0 ? (uint64_t) st.st_blocks * 512 : 0;
}
/* ---- merge support ---- */

unsigned cor_disk_block_shift (const struct cor_disk *d) { return d->block_shift; }
uint64_t cor_disk_nr_blocks (const struct cor_disk *d) { return d->nr_blocks; }
struct meta_disk *cor_disk_meta (struct cor_disk *d) { return d->md; }
struct remote *cor_disk_remote (struct cor_disk *d) { return d->remote; }
