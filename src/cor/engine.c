/* corfs: the copy-on-read engine: fault-in, write path, in-flight table.
 *
 * Design notes.
 *
 * Blocks are block_size bytes (a power of two, 4 KiB to 4 MiB); the last
 * block of a disk may be short.  The overlay file has the disk's size and
 * holds each block at the disk's offset, so a complete overlay is the raw
 * image and SEEK_DATA/SEEK_HOLE work on it.
 *
 * Invariants:
 *   - A block is marked present only after its data is in the overlay
 *     (the write returned), and becomes durable in the index only after
 *     the committer's fdatasync (commit.c).
 *   - One operation per block at a time (DESIGN.md rule 5): a fetch or a
 *     write owns its blocks in the in-flight table ("busy" ranges) from
 *     before it starts until its bits are set; so does an incoming disk's
 *     read-through for the time of its parent read (see read_through).
 *     A fetch claims only blocks that are neither present nor busy, so
 *     it never overwrites newer guest data; a reader that finds a
 *     missing block busy waits for it, so each block is fetched once
 *     however many readers want it.
 *   - Writes claim their whole range at once, waiting until no part of it
 *     is busy (all or nothing, so two writers cannot deadlock).  A write
 *     whose first or last block is missing and only partly covered fetches
 *     that block first; blocks covered whole are never fetched.
 *   - Every guest request has one deadline, its hold from when the engine
 *     got it; every wait and fetch it makes ends by then (EIO), whatever
 *     the owner of a busy block (a streamer chunk, a prefetch) was given.
 *   - Exclusive operations (activate, handoff, pivot, abort) own every
 *     block (own_all).  While one waits for the claims in flight to end,
 *     the gate (exclusive_waiters) holds off new ones: guests wait within
 *     their deadline, the streamer and readahead back off.  A guest whose
 *     own deadline is before the operation's passes (it ends first; the
 *     gate would only turn it into an EIO).  It waits at most the hold,
 *     then fails with nothing changed.  checkpoint waits only for write
 *     claims (fetches never touch dirty or changed bits) and holds the
 *     gate shut, claiming nothing, while it switches generations.
 *   - A guest that must wait to claim a range (a write or discard, which
 *     claim all or nothing; an incoming read-through) counts in
 *     guest_waiters meanwhile, and the streamer and readahead back off
 *     for it as for the gate: otherwise their chunks, one after another,
 *     would keep a large range from ever being free at once.
 *   - All-zero fetched blocks are punched rather than written, which keeps
 *     the overlay sparse and also clears whatever an earlier, uncommitted
 *     write left there.
 *   - Dirty and changed bits are set before the overlay write (intent;
 *     they may over-count after a failed write, never under-count), present
 *     after it.  Crashes are covered by meta's unclean-shutdown widening.
 *
 * Notes on the thread model: cor_read/cor_write run on FUSE worker
 * threads, many at once; cor_populate on the streamer's and readahead's
 * workers (stream.c, readahead.c); cor_writeback on a merge job's thread,
 * which starts up to WB_THREADS - 1 helpers for the copy and joins them
 * before it returns.  d->lock protects only the busy list (and the gate
 * and waiter counts, which are also read without it as hints) and is
 * never held across remote I/O, overlay I/O or a FUSE reply; waiters
 * sleep on d->cond (CLOCK_MONOTONIC: deadlines come from now_ns), broadcast
 * whenever a busy range is released or the gate opens.  Exclusive
 * operations run on ctl's job threads (one per disk at a time).
 * d->owner_lock orders the record's writers (owner-state transitions,
 * cor_update_record, and a mirror's identity sealed at shutdown by
 * cor_engine_quiesce, which only tries it so that a stop never waits for
 * a command); it is taken before d->lock and before meta's lock.  A
 * transition holds it for its whole run (abort's copy included), so
 * cor_update_record waits for it at most the hold
 * (pthread_mutex_clocklock) and then fails with EAGAIN.
 * cor_disk_set_attr (chmod, chown) takes no owner_lock: meta changes
 * mode and owner alone and keeps them from older record copies.
 * d->attr_lock guards the cached mode and owner that getattr reads; it
 * is taken before meta's lock (cor_disk_set_attr holds it across the
 * commit) and nothing else is taken under it.
 */
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
  format_close (d->format);
  remote_close (d->remote);
  if (close (d->overlay_fd) == -1)
    log_error ("cor: disk %s: closing the overlay: %m", d->name);
  pthread_mutex_destroy (&d->lock);
  pthread_cond_destroy (&d->cond);
  pthread_mutex_destroy (&d->store_lock);
  free (d->name);
  free (d);
}

/* A mirror's own writes move its parent's identity, so the identity
 * pinned at mount no longer describes the parent: at a clean stop (no
 * guest request left), record it as it is now for the next mount to
 * verify (daemon.c, verify_mirror_parent), or "" when it cannot be asked
 * within a few seconds (that mount then cannot verify). */
#define SEAL_DEADLINE_NS (5 * NS_PER_SEC)
static void
seal_mirror (struct cor_disk *d)
{
  struct meta_record rec;
  char id[META_ID_MAX] = "";
  int err = 0;

  uint64_t wait = d->hold_ns < SEAL_DEADLINE_NS ? d->hold_ns : SEAL_DEADLINE_NS;
  uint64_t deadline = now_ns () + wait;
  struct timespec ts = { deadline / NS_PER_SEC, deadline % NS_PER_SEC };

  /* A command holding owner_lock (an abort copying, which stops at its
   * next chunk now that the engine is stopping) is waited for, bounded:
   * the identity must be taken after its last write.  If the lock does
   * not come, nothing is sealed, and the record keeps the empty identity
   * that the mount left for an active mirror: the next mount says it
   * cannot verify, never compares with an identity from before this
   * run's writes. */
  if (!d->mirror)
    return;
  if (pthread_mutex_clocklock (&d->owner_lock, CLOCK_MONOTONIC, &ts) != 0) {
    log_warn ("cor: disk %s: mirror: a command kept the disk past %" PRIu64 " s at this "
              "stop: the parent's identity is not recorded, so the next mount cannot "
              "verify it", d->name, (uint64_t) (wait / NS_PER_SEC));
    return;
  }
  meta_disk_record (d->md, &rec);
  if (d->mirror && rec.mirror && rec.state == META_ACTIVE && !rec.merging) {
    if (remote_repin (d->remote, false, d->size, id, sizeof id, deadline, &err) == -1) {
      log_warn ("cor: disk %s: mirror: cannot record the identity of parent %s at this "
                "stop (%s): the next mount cannot verify it", d->name, remote_url (d->remote),
                strerror (err));
      id[0] = '\0';
    }
    snprintf (rec.identity, sizeof rec.identity, "%s", id);
    if (meta_disk_update (d->md, &rec) == -1)
      log_error ("cor: disk %s: recording the parent's identity: %m", d->name);
  }
  pthread_mutex_unlock (&d->owner_lock);
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
    seal_mirror (d);
    remote_cancel (d->remote);
    if (d->format)
      format_cancel (d->format);
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

/* Must be called with d->attr_lock held.  Cache the record's mode and
 * owner, defaults resolved (cor_disk_attr). */
static void
attr_cache (struct cor_disk *d, const struct meta_record *rec)
{
  d->mode = rec->has_mode ? rec->mode & 0777 : 0600;
  d->uid = rec->has_uid ? rec->uid : getuid ();
  d->gid = rec->has_gid ? rec->gid : getgid ();
}

static void
attr_from_record (struct cor_disk *d, const struct meta_record *rec)
{
  pthread_mutex_lock (&d->attr_lock);
  attr_cache (d, rec);
  pthread_mutex_unlock (&d->attr_lock);
}

void
cor_disk_attr (struct cor_disk *d, uint32_t *mode, uint32_t *uid, uint32_t *gid)
{
  pthread_mutex_lock (&d->attr_lock);
  *mode = d->mode;
  *uid = d->uid;
  *gid = d->gid;
  pthread_mutex_unlock (&d->attr_lock);
}

/* No owner_lock: a state change holds it across slow work (draining a
 * stalled parent's fetches), and chmod must not wait for that (the
 * kernel holds the inode's lock across it, so writes would wait too).
 * meta changes only these fields, under its own lock, and a state
 * change's older copy of the record cannot roll them back.  attr_lock
 * is held across the commit so that two concurrent changes leave the
 * cache as the index has it. */
int
cor_disk_set_attr (struct cor_disk *d, int64_t mode, int64_t uid, int64_t gid, int *err)
{
  struct meta_record rec;
  int r;

  pthread_mutex_lock (&d->attr_lock);
  r = meta_disk_set_attr (d->md, mode, uid, gid, &rec);
  if (r == -1) {
    *err = errno;
    log_error ("cor: disk %s: recording its mode and owner: %m", d->name);
  }
  else
    attr_cache (d, &rec);
  pthread_mutex_unlock (&d->attr_lock);
  return r;
}

/* Why a re-pin failed, for a message: the parent's last error (it names
 * what the parent did, e.g. an absurd size), else strerror (err). */
static const char *
repin_why (struct cor_disk *d, int err, char *buf, size_t len)
{
  remote_status (d->remote, buf, len);
  return *buf ? buf : strerror (err);
}

/* The parent is final (an interrupted activation found at mount): put
 * its identity in rec, pinned on a connection of its own, and check its
 * size as activation does.  0 or -1 (logged). */
static int
pin_parent (struct cor_disk *d, struct meta_record *rec)
{
  char id[META_ID_MAX];
  int err = 0;

  if (remote_repin (d->remote, true, d->size, id, sizeof id, now_ns () + d->hold_ns,
                    &err) == -1) {
    char why[1280];
    log_error ("cor: disk %s: finishing an interrupted activation: cannot pin the "
               "identity of parent %s (%s); the disk goes back to incoming until "
               "`activate` is repeated (the same epoch %" PRIu64 " is accepted)", d->name,
               remote_url (d->remote), repin_why (d, err, why, sizeof why), rec->epoch);
    errno = err;
    return -1;
  }
  snprintf (rec->identity, sizeof rec->identity, "%s", id);
  return 0;
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
  d->format = cfg->format;
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
  attr_from_record (d, &rec);
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
    rec.state = pin_parent (d, &rec) == 0 ? META_ACTIVE : META_INCOMING;
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

/* ---- in-flight table ---- */

/* Must be called with d->lock held.  The busy range overlapping
 * [first, end), or NULL. */
static struct busy *
find_busy_unlocked (struct cor_disk *d, uint64_t first, uint64_t end)
{
  for (struct busy *b = d->busy; b; b = b->next)
    if (b->first < end && first < b->end)
      return b;
  return NULL;
}

/* Must be called with d->lock held.  write: the owner changes data or
 * the dirty/changed bits (not a fetch); checkpoint waits only for these. */
static void
claim_unlocked (struct cor_disk *d, struct busy *b, uint64_t first, uint64_t end, bool write)
{
  b->first = first;
  b->end = end;
  b->write = write;
  b->next = d->busy;
  d->busy = b;
}

static void
release_busy (struct cor_disk *d, struct busy *b)
{
  pthread_mutex_lock (&d->lock);
  for (struct busy **pp = &d->busy; *pp; pp = &(*pp)->next)
    if (*pp == b) {
      *pp = b->next;
      break;
    }
  pthread_cond_broadcast (&d->cond);
  pthread_mutex_unlock (&d->lock);
}

/* Must be called with d->lock held.  Is a guest request with deadline_ns
 * held off by the gate?  Not if its deadline is before the exclusive
 * operation's: it began before the gate closed and ends (at worst with
 * EIO) before that operation would give up, so letting it through costs
 * the operation nothing and the guest a needless EIO. */
static bool
gated_for_unlocked (const struct cor_disk *d, uint64_t deadline_ns)
{
  return d->exclusive_waiters > 0 && deadline_ns >= d->exclusive_deadline_ns;
}

/* Must be called with d->lock held.  Should the streamer and readahead
 * back off (an exclusive operation or a guest waits to claim blocks)? */
static bool
background_yields_unlocked (const struct cor_disk *d)
{
  return d->exclusive_waiters > 0 || d->guest_waiters > 0;
}

/* Must be called with d->lock held (dropped while asleep).  Sleep until
 * a busy range is released, the gate changes, or deadline_ns.  0, or -1
 * without sleeping once the deadline has passed. */
static int
wait_until_unlocked (struct cor_disk *d, uint64_t deadline_ns)
{
  if (now_ns () >= deadline_ns)
    return -1;
  struct timespec ts = { deadline_ns / NS_PER_SEC, deadline_ns % NS_PER_SEC };
  pthread_cond_timedwait (&d->cond, &d->lock, &ts);   /* d->cond is monotonic */
  return 0;
}

/* Must be called with d->lock held (dropped while asleep).  A guest
 * request's wait: like wait_until_unlocked, counted in guest_waiters
 * meanwhile so that background fetches back off for it. */
static int
guest_wait_unlocked (struct cor_disk *d, uint64_t deadline_ns)
{
  int r;

  __atomic_store_n (&d->guest_waiters, d->guest_waiters + 1, __ATOMIC_SEQ_CST);
  r = wait_until_unlocked (d, deadline_ns);
  __atomic_store_n (&d->guest_waiters, d->guest_waiters - 1, __ATOMIC_SEQ_CST);
  return r;
}

/* Must be called with d->lock held.  Claim [first, end) whole for a
 * write, waiting while any of it is busy or the gate holds it off (all
 * or nothing, so two claimers cannot deadlock), until deadline_ns.  A
 * guest's wait counts in guest_waiters (the streamer gives way to it:
 * otherwise a large range would rarely be free all at once).  0, or -1
 * if the deadline passed first (nothing claimed). */
static int
claim_wait_unlocked (struct cor_disk *d, struct busy *self, uint64_t first, uint64_t end,
                     uint64_t deadline_ns, bool guest)
{
  while (gated_for_unlocked (d, deadline_ns) || find_busy_unlocked (d, first, end))
    if ((guest ? guest_wait_unlocked (d, deadline_ns)
         : wait_until_unlocked (d, deadline_ns)) == -1)
      return -1;
  claim_unlocked (d, self, first, end, true);
  return 0;
}

/* ---- fetch ---- */

static uint64_t
block_offset (const struct cor_disk *d, uint64_t blk)
{
  return blk << d->block_shift;
}

/* Bytes of blocks [first, end), the last one possibly short. */
static uint64_t
blocks_length (const struct cor_disk *d, uint64_t first, uint64_t end)
{
  uint64_t e = block_offset (d, end);
  return (e > d->size ? d->size : e) - block_offset (d, first);
}

/* Make [offset, offset + len) of the overlay read as zeros: punch a hole
 * (which also zeroes partial filesystem blocks at the edges), or write
 * zeros where the filesystem cannot punch.  0 or -1 with errno. */
static int
overlay_zero (struct cor_disk *d, uint64_t offset, uint64_t len)
{
  static const char zeros[65536];

  if (fallocate (d->overlay_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                 offset, len) == 0)
    return 0;
  if (errno != EOPNOTSUPP)
    return -1;
  while (len > 0) {
    size_t n = len > sizeof zeros ? sizeof zeros : len;
    if (full_pwrite (d->overlay_fd, zeros, n, offset) == -1)
      return -1;
    offset += n;
    len -= n;
  }
  return 0;
}

/* Data is written to the overlay at most this much at a time, fetched
 * data and guest writes alike.  The kernel sizes new page-cache folios by
 * the write (ext4 has large folios since Linux 6.16), and big folios cost
 * twice on the VMs this was measured on:
 *   - filling them: writing 1 GiB to a fresh ext4 file took 0.32-0.38 s
 *     in 128 or 256 KiB writes, 0.48-0.77 s in 512 KiB ones (and perf of
 *     a stream in 2 MiB writes had copy_folio_from_iter_atomic at 45%);
 *   - every later small write into one: ext4 walks all the folio's
 *     buffer heads (ext4_block_write_begin, block_commit_write), so a
 *     4 KiB write cost 4.4 us in a file written in 64 KiB pieces, 5.3 us
 *     at 128 KiB, 7.6 us at 512 KiB and 12.7 us at 1 MiB (one thread),
 *     under ext4's inode lock, which every writer of the overlay shares.
 * With lock non-NULL, each piece is written holding it.  0 or -1 with
 * errno. */
#define OVERLAY_WRITE_MAX (128 * 1024)

static int
overlay_pwrite (struct cor_disk *d, const char *buf, uint64_t len, uint64_t offset,
                pthread_mutex_t *lock)
{
  for (uint64_t done = 0; done < len; done += OVERLAY_WRITE_MAX) {
    size_t n = len - done > OVERLAY_WRITE_MAX ? OVERLAY_WRITE_MAX : len - done;
    if (lock)
      pthread_mutex_lock (lock);
    int r = full_pwrite (d->overlay_fd, buf + done, n, offset + done);
    if (lock)
      pthread_mutex_unlock (lock);
    if (r == -1)
      return -1;
  }
  return 0;
}

void
cor_overlay_willneed (struct cor_disk *d, uint64_t first, uint64_t end)
{
  /* The overlay's fd has POSIX_FADV_RANDOM, under which WILLNEED still
   * reads, into single pages (small folios: see OVERLAY_WRITE_MAX). */
  if ((errno = posix_fadvise (d->overlay_fd, block_offset (d, first),
                              blocks_length (d, first, end), POSIX_FADV_WILLNEED)) != 0)
    log_debug ("cor: disk %s: posix_fadvise WILLNEED at offset %" PRIu64 ": %m",
               d->name, block_offset (d, first));
}

/* Store fetched data for blocks [first, end) in the overlay: all-zero
 * blocks are punched, runs of data blocks written (*wrote_data set once
 * one was).  0 or -1 with errno. */
static int
store_blocks (struct cor_disk *d, const char *buf, uint64_t first, uint64_t end,
              bool *wrote_data)
{
  uint64_t base = block_offset (d, first);
  uint64_t blk = first;

  while (blk < end) {
    uint64_t off = block_offset (d, blk) - base, len = blocks_length (d, blk, blk + 1);
    bool zero = is_zero (buf + off, len);
    uint64_t run = blk + 1;
    while (run < end) {
      uint64_t o = block_offset (d, run) - base;
      if (is_zero (buf + o, blocks_length (d, run, run + 1)) != zero)
        break;
      run++;
    }
    len = blocks_length (d, blk, run);
    if (zero) {
      if (overlay_zero (d, block_offset (d, blk), len) == -1)
        return -1;
    }
    else {
      /* The filesystem serialises writes to one file anyway (ext4's
       * inode lock); queueing here, asleep, instead of in the kernel,
       * where waiters spin on the lock owner, cut a cold read's CPU
       * time in half on 2 loaded cores. */
      if (overlay_pwrite (d, buf + off, len, block_offset (d, blk), &d->store_lock) == -1)
        return -1;
      *wrote_data = true;
    }
    blk = run;
  }
  return 0;
}

/* A cold read's reply, sent from the fetch buffer before the store (see
 * struct cor_read_ref): count bytes from skip into the buffer. */
struct early_reply {
  void (*fn) (void *opaque, const char *data, size_t n);
  void *opaque;
  size_t skip, count;
  bool done;
};

/* Read the parent's bytes at the disk's offsets: through its image
 * format's reader (qcow2), or straight from the remote (raw, as before
 * formats existed). */
static int
parent_pread (struct cor_disk *d, void *buf, size_t count, uint64_t offset,
              uint64_t deadline_ns, int *err)
{
  if (d->format)
    return format_pread (d->format, buf, count, offset, deadline_ns, err);
  return remote_pread (d->remote, buf, count, offset, deadline_ns, err);
}

/* Fetch blocks [first, end) from the parent into the overlay and mark them
 * present.  The caller owns the blocks in the in-flight table.  0 or -1
 * with *err.  With keep non-NULL, a successful fetch hands its buffer
 * (the blocks' data, from block_offset (first)) to the caller to free:
 * a cold read replies from it instead of reading the overlay back.  With
 * unstored (and keep) non-NULL, a store that fails (the overlay's
 * filesystem is full) does not fail the fetch: the blocks stay missing,
 * *unstored is set, and the caller serves the data from *keep. */
static int
fetch_blocks (struct cor_disk *d, uint64_t first, uint64_t end,
              uint64_t deadline_ns, char **keep, struct early_reply *early,
              bool *unstored, int *err)
{
  uint64_t len = blocks_length (d, first, end), off = block_offset (d, first);
  char *buf = iobuf_get (len);

  if (!buf) {
    *err = ENOMEM;
    return -1;
  }
  __atomic_fetch_add (&d->fetch_requests, 1, __ATOMIC_RELAXED);
  if (parent_pread (d, buf, len, off, deadline_ns, err) == -1) {
    __atomic_fetch_add (&d->fetch_errors, 1, __ATOMIC_RELAXED);
    iobuf_put (buf, len);
    return -1;
  }
  /* The blocks stay claimed until stored, so the data cannot change
   * under the reply. */
  if (early) {
    early->fn (early->opaque, buf + early->skip, early->count);
    early->done = true;
  }
  bool wrote_data = false;
  if (store_blocks (d, buf, first, end, &wrote_data) == -1) {
    *err = errno;
    if (unstored && keep) {
      /* Logged once until a data write succeeds again: a full overlay
       * would otherwise log every read. */
      if (!__atomic_exchange_n (&d->store_failing, 1, __ATOMIC_SEQ_CST))
        log_error ("cor: disk %s: overlay write of %" PRIu64 " bytes at offset %" PRIu64
                   ": %s; reads are served from the parent without keeping the data "
                   "until the overlay can be written again", d->name, len, off,
                   strerror (*err));
      __atomic_fetch_add (&d->fetched_bytes, len, __ATOMIC_RELAXED);
      *unstored = true;
      *keep = buf;
      return 0;
    }
    log_error ("cor: disk %s: overlay write of %" PRIu64 " bytes at offset %"
               PRIu64 ": %s", d->name, len, off, strerror (*err));
    iobuf_put (buf, len);
    return -1;
  }
  /* Only data written shows the overlay has room again: a punch (an
   * all-zero fetch) succeeds on a full filesystem too, and resetting on
   * it would log every other read of a disk that mixes data and zeros. */
  if (wrote_data && __atomic_load_n (&d->store_failing, __ATOMIC_RELAXED))
    __atomic_store_n (&d->store_failing, 0, __ATOMIC_SEQ_CST);
  /* Order matters: the overlay write returned before the bit is set, and
   * needs_sync is set before the bit so the committer that takes the bit
   * also syncs the data. */
  __atomic_store_n (&d->needs_sync, 1, __ATOMIC_SEQ_CST);
  meta_set (d->md, META_PRESENT, first, end - first);
  __atomic_fetch_add (&d->fetched_bytes, len, __ATOMIC_RELAXED);
  if (keep)
    *keep = buf;                /* released with cor_read_ref_release */
  else
    iobuf_put (buf, len);
  return 0;
}

/* Must be called with d->lock held.  Remember a guest fault for the trace. */
static void
trace_fault_unlocked (struct cor_disk *d, uint64_t first, uint64_t end)
{
  struct cor_range *nv;

  if (!d->trace_path || d->nr_trace >= 1000000)
    return;
  if (d->nr_trace % 1024 == 0) {
    nv = realloc (d->trace, (d->nr_trace + 1024) * sizeof *nv);
    if (!nv)
      return;                   /* the trace is only a hint */
    d->trace = nv;
  }
  d->trace[d->nr_trace].offset = block_offset (d, first);
  d->trace[d->nr_trace].length = blocks_length (d, first, end);
  d->nr_trace++;
}

/* A read's blocks [first, end) gathered in one buffer, for when some of
 * them were fetched but could not be stored (see fault_in). */
struct gather {
  char *buf;                    /* iobuf of blocks_length (first, end), or NULL */
  bool *held;                   /* per block: its data is in buf, not the overlay */
};

/* Copy fetched blocks [blk, run) (data, unstored) into g. */
static int
gather_add (struct cor_disk *d, struct gather *g, uint64_t first, uint64_t end,
            uint64_t blk, uint64_t run, const char *data, int *err)
{
  if (!g->buf) {
    g->buf = iobuf_get (blocks_length (d, first, end));
    g->held = calloc (end - first, sizeof *g->held);
    if (!g->buf || !g->held) {
      *err = ENOMEM;
      return -1;
    }
  }
  memcpy (g->buf + (block_offset (d, blk) - block_offset (d, first)), data,
          blocks_length (d, blk, run));
  for (uint64_t b = blk; b < run; b++)
    g->held[b - first] = true;
  return 0;
}

/* Fill the rest of g (blocks that are present) from the overlay. */
static int
gather_finish (struct cor_disk *d, struct gather *g, uint64_t first, uint64_t end, int *err)
{
  for (uint64_t blk = first; blk < end; ) {
    uint64_t run = blk + 1;
    bool held = g->held[blk - first];
    while (run < end && g->held[run - first] == held)
      run++;
    if (!held && full_pread (d->overlay_fd, g->buf + (block_offset (d, blk) - block_offset (d, first)),
                             blocks_length (d, blk, run), block_offset (d, blk)) == -1) {
      *err = errno;
      log_error ("cor: disk %s: overlay read at offset %" PRIu64 ": %m", d->name,
                 block_offset (d, blk));
      return -1;
    }
    blk = run;
  }
  return 0;
}

static void
gather_free (struct cor_disk *d, struct gather *g, uint64_t first, uint64_t end)
{
  if (g->buf)
    iobuf_put (g->buf, blocks_length (d, first, end));
  free (g->held);
}

/* Make blocks [first, end) present, fetching what is missing, coalescing
 * adjacent missing blocks into one request and waiting for blocks that
 * another operation is fetching or writing.  Sets *faulted if it had to
 * fetch or wait.  With keep non-NULL, when one fetch covered all of
 * [first, end), *keep is its buffer (see fetch_blocks), else NULL.  All
 * of it, waits included, ends by deadline_ns: a guest read waiting for a
 * prefetch or a streamer chunk that the parent stalls must not wait its
 * own hold time on top of theirs.  0 or -1 with *err.
 *
 * With keep non-NULL, a full overlay never fails a fetch that succeeded:
 * blocks that could not be stored stay missing, and *keep is a buffer of
 * all of [first, end), gathered from the fetches and the overlay. */
static int
fault_in (struct cor_disk *d, uint64_t first, uint64_t end, uint64_t deadline_ns,
          bool *faulted, char **keep, struct early_reply *early, int *err)
{
  uint64_t blk = first, traced = UINT64_MAX;
  struct gather g = { NULL, NULL };

  pthread_mutex_lock (&d->lock);
  while ((blk = meta_next (d->md, META_PRESENT, false, blk)) < end) {
    struct busy self;
    uint64_t run;

    *faulted = true;
    bool busy = find_busy_unlocked (d, blk, blk + 1) != NULL;
    if (busy || gated_for_unlocked (d, deadline_ns)) {
      /* The guest needed it now, even if the streamer or readahead was
       * first: it belongs in the boot trace. */
      if (traced != blk) {
        trace_fault_unlocked (d, blk, blk + 1);
        traced = blk;
      }
      /* (Not counted in guest_waiters: it waits for one busy block,
       * which is present once released, not for a range to be free.) */
      if (wait_until_unlocked (d, deadline_ns) == -1) {
        pthread_mutex_unlock (&d->lock);
        log_error ("cor: disk %s: offset %" PRIu64 ": %s when this read's hold time ran "
                   "out (parent %s)", d->name, block_offset (d, blk),
                   busy ? "still being fetched or written by another request"
                   : "held off by an exclusive command waiting for the disk",
                   remote_url (d->remote));
        *err = EIO;
        return -1;
      }
      continue;                 /* re-check: it may be present now */
    }
    for (run = blk + 1; run < end; run++)
      if (meta_test (d->md, META_PRESENT, run) || find_busy_unlocked (d, run, run + 1))
        break;
    claim_unlocked (d, &self, blk, run, false);
    trace_fault_unlocked (d, blk, run);
    pthread_mutex_unlock (&d->lock);

    /* The streamer gives way while this is in flight. */
    __atomic_fetch_add (&d->fg_inflight, 1, __ATOMIC_SEQ_CST);
    bool whole = keep && blk == first && run == end, unstored = false;
    char *got = NULL;
    int r = fetch_blocks (d, blk, run, deadline_ns, keep ? &got : NULL,
                          whole ? early : NULL, keep ? &unstored : NULL, err);
    if (r == 0)
      __atomic_fetch_add (&d->fg_fetched_bytes, blocks_length (d, blk, run), __ATOMIC_RELAXED);
    __atomic_store_n (&d->last_fg_ns, now_ns (), __ATOMIC_SEQ_CST);
    __atomic_fetch_sub (&d->fg_inflight, 1, __ATOMIC_SEQ_CST);

    release_busy (d, &self);
    if (r == 0 && got) {
      if (whole)
        *keep = got;
      else {
        if (unstored)
          r = gather_add (d, &g, first, end, blk, run, got, err);
        iobuf_put (got, blocks_length (d, blk, run));
      }
    }
    if (r == -1) {
      gather_free (d, &g, first, end);
      return -1;
    }
    blk = run;
    pthread_mutex_lock (&d->lock);
  }
  pthread_mutex_unlock (&d->lock);
  if (g.buf) {
    if (gather_finish (d, &g, first, end, err) == -1) {
      gather_free (d, &g, first, end);
      return -1;
    }
    *keep = g.buf;
    g.buf = NULL;
    gather_free (d, &g, first, end);
  }
  return 0;
}

const uint64_t cor_latency_bounds_us[COR_LAT_BUCKETS] = {
  100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 1000000, 10000000,
};

static void
record_latency (struct cor_disk *d, uint64_t ns)
{
  uint64_t us = ns / 1000;
  int i = 0;

  while (i < COR_LAT_BUCKETS && us > cor_latency_bounds_us[i])
    i++;
  __atomic_fetch_add (&d->fault_latency[i], 1, __ATOMIC_RELAXED);
  __atomic_fetch_add (&d->fault_latency_sum_us, us, __ATOMIC_RELAXED);
}

/* Incoming: the source still runs the guest, so nothing read now may be
 * kept (it could be stale after the switch-over): read count bytes at
 * offset (blocks [first, end)) through into ref->buf.  The blocks are
 * claimed in the in-flight table meanwhile, as a fetch's are, so that
 * activation's drain waits for this read and finds every connection to
 * the parent idle when it pins it.  Every wait ends by deadline_ns.
 * count, 0 if the disk is no longer incoming once its blocks are free
 * (activated: the caller reads the usual way), or -1 with *err. */
static ssize_t
read_through (struct cor_disk *d, size_t count, uint64_t offset, uint64_t first, uint64_t end,
              uint64_t deadline_ns, struct cor_read_ref *ref, int *err)
{
  struct busy self;
  int r;

  /* Like any claim, wait while an exclusive operation (activate) drains
   * the disk: it must not find a read-through in flight once it owns it. */
  pthread_mutex_lock (&d->lock);
  while (gated_for_unlocked (d, deadline_ns) || find_busy_unlocked (d, first, end))
    if (guest_wait_unlocked (d, deadline_ns) == -1) {
      pthread_mutex_unlock (&d->lock);
      log_error ("cor: disk %s: offset %" PRIu64 ": busy (activating?) when this read's "
                 "hold time ran out", d->name, offset);
      *err = EIO;
      return -1;
    }
  /* Activation sets the owner before it releases its claim. */
  if (__atomic_load_n (&d->owner, __ATOMIC_SEQ_CST) != META_INCOMING) {
    pthread_mutex_unlock (&d->lock);
    return 0;
  }
  claim_unlocked (d, &self, first, end, false);
  pthread_mutex_unlock (&d->lock);

  if (!(ref->buf = iobuf_get (count))) {
    release_busy (d, &self);
    *err = ENOMEM;
    return -1;
  }
  ref->buf_len = count;
  r = parent_pread (d, ref->buf, count, offset, deadline_ns, err);
  release_busy (d, &self);
  if (r == -1) {
    cor_read_ref_release (ref);
    return -1;
  }
  __atomic_fetch_add (&d->guest_read_bytes, count, __ATOMIC_RELAXED);
  return count;
}

ssize_t
cor_read_ref (struct cor_disk *d, size_t count, uint64_t offset,
              struct cor_read_ref *ref, int *err)
{
  uint64_t first, end;

  ref->buf = NULL;
  ref->buf_len = 0;
  ref->skip = 0;
  ref->fd = d->overlay_fd;
  ref->delivered = false;
  if (offset >= d->size || count == 0)
    return 0;
  if (count > d->size - offset)
    count = d->size - offset;
  cor_block_range (offset, count, d->block_shift, &first, &end);
  uint64_t t0 = now_ns ();
  if (__atomic_load_n (&d->owner, __ATOMIC_SEQ_CST) == META_INCOMING &&
      meta_next (d->md, META_PRESENT, false, first) < end) {
    ssize_t n = read_through (d, count, offset, first, end, t0 + d->hold_ns, ref, err);
    if (n != 0)
      return n;
    /* (0: activated meanwhile, read the usual way.) */
  }
  bool faulted = false;
  struct early_reply early = { ref->deliver, ref->opaque, offset - block_offset (d, first),
                               count, false };
  int r = fault_in (d, first, end, t0 + d->hold_ns, &faulted, &ref->buf,
                    ref->deliver ? &early : NULL, err);
  if (faulted)
    record_latency (d, now_ns () - t0);
  ref->delivered = early.done;
  if (r == -1 && !early.done)
    return -1;
  if (ref->buf) {
    ref->skip = early.skip;
    ref->buf_len = blocks_length (d, first, end);
  }
  if (!ref->kernel_reads_ahead)
    cor_readahead_note (d, first, end);
  __atomic_fetch_add (&d->guest_read_bytes, count, __ATOMIC_RELAXED);
  return count;
}

void
cor_read_ref_release (struct cor_read_ref *ref)
{
  iobuf_put (ref->buf, ref->buf_len);
  ref->buf = NULL;
  ref->buf_len = 0;
}

int
cor_read_ref_copy (struct cor_disk *d, const struct cor_read_ref *ref, void *buf,
                   size_t n, uint64_t offset, int *err)
{
  if (ref->buf) {
    memcpy (buf, ref->buf + ref->skip, n);
    return 0;
  }
  /* A read that misses the page cache brings in the whole blocks around
   * it: the overlay has no readahead (POSIX_FADV_RANDOM, see
   * cor_disk_add), and a guest reading at random in a small area would
   * otherwise wait for the disk once per 4 KiB.  RWF_NOWAIT tells a miss
   * without waiting; a hit costs nothing more. */
  ssize_t r = preadv2 (ref->fd, &(struct iovec) { buf, n }, 1, offset, RWF_NOWAIT);
  if (r == (ssize_t) n)
    return 0;
  if (r > 0) {
    buf = (char *) buf + r;
    n -= r;
    offset += r;
  }
  if (r >= 0 || errno == EAGAIN) {
    uint64_t first, end;
    cor_block_range (offset, n, d->block_shift, &first, &end);
    cor_overlay_willneed (d, first, end);
  }
  if (full_pread (ref->fd, buf, n, offset) == -1) {
    *err = errno;
    log_error ("cor: disk %s: overlay read of %zu bytes at offset %" PRIu64 ": %m",
               d->name, n, offset);
    return -1;
  }
  return 0;
}

ssize_t
cor_read (struct cor_disk *d, void *buf, size_t count, uint64_t offset, int *err)
{
  struct cor_read_ref ref = { .deliver = NULL };
  ssize_t n = cor_read_ref (d, count, offset, &ref, err);

  if (n <= 0)
    return n;
  int r = cor_read_ref_copy (d, &ref, buf, n, offset, err);
  cor_read_ref_release (&ref);
  return r == -1 ? -1 : n;
}

/* Mirror mode: make the parent's copies of acknowledged writes stable.
 * mirror_write marks a block clean as soon as both writes returned, so a
 * failed flush (the parent, or a connection that held unflushed writes,
 * went away) leaves clean blocks the parent may lack: every block is
 * then marked suspect, which abort (and merge) copy to the parent again
 * and mirror writes never clear.  Coarse, and only on a failure (which
 * blocks were on a lost connection is not known).  A loss found by
 * another flush (a merge or abort chunk's) fails this one too when it may
 * hold writes issued since the previous mirror flush began
 * (remote_flush_since).  A parent that offers no flush fails every one
 * (EOPNOTSUPP).  0 or -1 with *err. */
int
cor_mirror_flush (struct cor_disk *d, int *err)
{
  /* The writes this flush must cover were issued after the last flush
   * began: that one covered (or, failing, marked suspect) every write
   * issued before it. */
  uint64_t start = now_ns (), since = __atomic_load_n (&d->mirror_flushed_ns, __ATOMIC_SEQ_CST);
  int r = remote_flush_since (d->remote, false, since, start + d->hold_ns, err);

  /* Advance, never back (flushes may overlap). */
  while (since < start &&
         !__atomic_compare_exchange_n (&d->mirror_flushed_ns, &since, start, false,
                                       __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
    ;
  if (r == 0)
    return 0;
  meta_set (d->md, META_SUSPECT, 0, d->nr_blocks);
  log_error ("cor: disk %s: mirror: flushing the parent %s failed (%s); every block "
             "is marked suspect, for abort to copy again", d->name,
             remote_url (d->remote), strerror (*err));
  return -1;
}

/* Mirror mode, with blocks [first, end) owned and partial edge blocks
 * present: the block is dirty (in memory) from before either write until
 * both succeeded; an overlay failure drops the blocks from the overlay
 * (not present: reads go to the parent, which has the data if its write
 * succeeded); a parent failure leaves them dirty for abort.  The write
 * is acknowledged only when both have it.  0 or -1 (*err).
 *
 * The dropped blocks are not punched: the cleared present bit reaches
 * the index only with the next commit (up to COMMIT_INTERVAL_S later),
 * and a crash before it would leave a present block reading zeros where
 * the guest never wrote any (abort would then copy those zeros to the
 * parent).  Unpunched, each byte of the range holds its old data or this
 * unacknowledged write's, whichever index survives; forcing a commit
 * first instead would mean an fdatasync of the overlay that just failed.
 * The space is reused when the blocks are fetched again. */
static int
mirror_write (struct cor_disk *d, const void *buf, uint64_t count, uint64_t offset,
              uint64_t first, uint64_t end, uint64_t deadline_ns, int *err)
{
  uint64_t nr = end - first;
  bool *was_dirty = malloc (nr);
  bool zeros = !buf;
  int r = 0, oerr = 0;

  if (!was_dirty) {
    *err = ENOMEM;
    return -1;
  }
  for (uint64_t b = 0; b < nr; b++)
    was_dirty[b] = meta_test (d->md, META_DIRTY, first + b);
  meta_set (d->md, META_DIRTY, first, nr);
  meta_set (d->md, META_CHANGED, first, nr);
  /* A discard may cover GiBs (fstrim, mkfs): the parent zeroes the range
   * itself where it can, else it is sent from a small buffer. */
  if ((zeros ? remote_pwrite_zeros (d->remote, offset, count, deadline_ns, err)
       : remote_pwrite (d->remote, buf, count, offset, deadline_ns, err)) == -1) {
    log_error ("cor: disk %s: mirror: parent %s of %" PRIu64 " bytes at offset %"
               PRIu64 " failed; the blocks stay dirty (abort will copy them)",
               d->name, zeros ? "zeroing" : "write", count, offset);
    r = -1;
  }
  if ((zeros ? overlay_zero (d, offset, count)
       : overlay_pwrite (d, buf, count, offset, NULL)) == -1) {
    oerr = errno;
    log_error ("cor: disk %s: mirror: overlay write at offset %" PRIu64 ": %s; "
               "dropping the blocks from the overlay", d->name, offset, strerror (oerr));
    meta_clear (d->md, META_PRESENT, first, nr);
    if (r == 0)
      *err = oerr;
    r = -1;
  }
  else {
    __atomic_store_n (&d->needs_sync, 1, __ATOMIC_SEQ_CST);
    meta_set (d->md, META_PRESENT, first, nr);
  }
  if (r == 0) {
    /* Both have it: the blocks are clean again, unless an earlier failed
     * parent write left other bytes of them different. */
    for (uint64_t b = 0; b < nr; b++)
      if (!was_dirty[b])
        meta_clear (d->md, META_DIRTY, first + b, 1);
    if (!zeros)
      __atomic_fetch_add (&d->guest_write_bytes, count, __ATOMIC_RELAXED);
  }
  free (was_dirty);
  return r;
}

/* The guest write path, for data (buf) or zeros (buf == NULL): own the
 * blocks, fetch missing partly covered edge blocks, set dirty and changed
 * (intent), change the overlay, set present.  One deadline, the hold from
 * now, bounds all of it: the wait for blocks that a streamer chunk, a
 * prefetch or another write owns (whose own deadlines may be later), and
 * the edge fetches after it.  0 or -1 with *err. */
static int
modify (struct cor_disk *d, const void *buf, uint64_t count, uint64_t offset, int *err)
{
  uint64_t first, end, last, deadline_ns = now_ns () + d->hold_ns;
  struct busy self;
  int r = 0;

  if (!cor_disk_writable (d)) {
    *err = EROFS;               /* failed, incoming or handed off */
    return -1;
  }
  if (count == 0)
    return 0;
  if (offset >= d->size || count > d->size - offset) {
    *err = ENOSPC;
    return -1;
  }
  cor_block_range (offset, count, d->block_shift, &first, &end);
  last = end - 1;

  pthread_mutex_lock (&d->lock);
  r = claim_wait_unlocked (d, &self, first, end, deadline_ns, true);
  pthread_mutex_unlock (&d->lock);
  if (r == -1) {
    log_error ("cor: disk %s: %s of %" PRIu64 " bytes at offset %" PRIu64 ": its blocks "
               "were still owned by a fetch from the parent %s, another write or an "
               "exclusive command when its hold time ran out", d->name,
               buf ? "write" : "zero", count, offset, remote_url (d->remote));
    *err = EIO;
    return -1;
  }
  /* A hand-off may have begun while we waited: it owns the order. */
  if (!cor_disk_writable (d)) {
    release_busy (d, &self);
    *err = EROFS;
    return -1;
  }

  /* Partly covered edge blocks that are missing keep their other bytes:
   * fetch them first.  Blocks covered whole are never fetched. */
  __atomic_fetch_add (&d->fg_inflight, 1, __ATOMIC_SEQ_CST);
  if (!meta_test (d->md, META_PRESENT, first) &&
      (offset != block_offset (d, first) ||
       offset + count < block_offset (d, first) + blocks_length (d, first, first + 1)))
    r = fetch_blocks (d, first, first + 1, deadline_ns, NULL, NULL, NULL, err);
  if (r == 0 && last != first && !meta_test (d->md, META_PRESENT, last) &&
      offset + count < block_offset (d, last) + blocks_length (d, last, last + 1))
    r = fetch_blocks (d, last, last + 1, deadline_ns, NULL, NULL, NULL, err);
  __atomic_store_n (&d->last_fg_ns, now_ns (), __ATOMIC_SEQ_CST);
  __atomic_fetch_sub (&d->fg_inflight, 1, __ATOMIC_SEQ_CST);

  if (r == 0 && d->mirror) {
    r = mirror_write (d, buf, count, offset, first, end, deadline_ns, err);
    release_busy (d, &self);
    return r;
  }
  if (r == 0) {
    meta_set (d->md, META_DIRTY, first, end - first);
    meta_set (d->md, META_CHANGED, first, end - first);
    if ((buf ? overlay_pwrite (d, buf, count, offset, NULL)
         : overlay_zero (d, offset, count)) == -1) {
      *err = errno;
      log_error ("cor: disk %s: overlay %s of %" PRIu64 " bytes at offset %" PRIu64 ": %m",
                 d->name, buf ? "write" : "zero", count, offset);
      r = -1;
    }
    else {
      __atomic_store_n (&d->needs_sync, 1, __ATOMIC_SEQ_CST);
      meta_set (d->md, META_PRESENT, first, end - first);
      if (buf)
        __atomic_fetch_add (&d->guest_write_bytes, count, __ATOMIC_RELAXED);
    }
  }
  release_busy (d, &self);
  return r;
}

int
cor_write (struct cor_disk *d, const void *buf, size_t count, uint64_t offset,
           int *err)
{
  return modify (d, buf, count, offset, err);
}

/* ---- the streamer's entry point ---- */

/* Is every byte of blocks [blk, blk+1) inside one of the zero extents? */
static bool
block_in_zero (struct cor_disk *d, uint64_t blk, const struct remote_extent *z,
               size_t nz, size_t *hint)
{
  uint64_t s = block_offset (d, blk), e = s + blocks_length (d, blk, blk + 1);

  while (*hint < nz && z[*hint].offset + z[*hint].length <= s)
    (*hint)++;
  return *hint < nz && z[*hint].offset <= s && z[*hint].offset + z[*hint].length >= e;
}

/* Fetch owned blocks [first, end), skipping those the parent reports as
 * zero.  Returns bytes fetched or -1 with *err. */
static int64_t
fetch_sparse (struct cor_disk *d, uint64_t first, uint64_t end,
              uint64_t deadline_ns, int *err)
{
  struct remote_extent *z = NULL;
  size_t nz = 0, hint = 0;
  int64_t fetched = 0;
  uint64_t blk = first;
  int zerr;

  if ((d->format ? format_zero_extents (d->format, block_offset (d, first),
                                        blocks_length (d, first, end), deadline_ns, &z, &nz,
                                        &zerr)
       : remote_zero_extents (d->remote, block_offset (d, first),
                              blocks_length (d, first, end), deadline_ns, &z, &nz,
                              &zerr)) == -1) {
    if (__atomic_load_n (&d->e->stopping, __ATOMIC_SEQ_CST)) {
      *err = ECANCELED;         /* shutting down: no reading instead */
      return -1;
    }
    log_debug ("cor: disk %s: block status failed (%s); reading instead",
               d->name, strerror (zerr));
  }
  while (blk < end) {
    bool zero = block_in_zero (d, blk, z, nz, &hint);
    uint64_t run = blk + 1;
    while (run < end && block_in_zero (d, run, z, nz, &hint) == zero)
      run++;
    if (zero) {
      uint64_t len = blocks_length (d, blk, run);
      /* Zeros promised by the parent: no data to fetch (rule 6 allows
       * marking these present).  Punch, in case an earlier uncommitted
       * write left data here. */
      if (overlay_zero (d, block_offset (d, blk), len) == -1) {
        *err = errno;
        log_error ("cor: disk %s: overlay punch at offset %" PRIu64 ": %m",
                   d->name, block_offset (d, blk));
        free (z);
        return -1;
      }
      __atomic_store_n (&d->needs_sync, 1, __ATOMIC_SEQ_CST);
      meta_set (d->md, META_PRESENT, blk, run - blk);
      __atomic_fetch_add (&d->zero_skipped_bytes, len, __ATOMIC_RELAXED);
    }
    else {
      if (fetch_blocks (d, blk, run, deadline_ns, NULL, NULL, NULL, err) == -1) {
        free (z);
        return -1;
      }
      fetched += blocks_length (d, blk, run);
    }
    blk = run;
  }
  free (z);
  return fetched;
}

int64_t
cor_populate (struct cor_disk *d, uint64_t first, uint64_t end,
              uint64_t deadline_ns, unsigned flags, uint64_t *next, uint64_t *covered,
              int *err)
{
  bool fg = flags & COR_POP_READAHEAD;
  uint64_t blk = first, stop = end;
  int64_t total = 0;

  if (covered)
    *covered = 0;
  pthread_mutex_lock (&d->lock);
  while ((blk = meta_next (d->md, META_PRESENT, false, blk)) < end) {
    struct busy self;
    uint64_t run;

    if (background_yields_unlocked (d)) {
      /* An exclusive command or a guest waits to claim blocks: back
       * off, and tell the caller where to come back. */
      stop = blk;
      break;
    }
    if (find_busy_unlocked (d, blk, blk + 1)) {
      blk++;                    /* a guest operation owns it */
      continue;
    }
    for (run = blk + 1; run < end; run++)
      if (meta_test (d->md, META_PRESENT, run) || find_busy_unlocked (d, run, run + 1))
        break;
    claim_unlocked (d, &self, blk, run, false);
    if (fg)
      trace_fault_unlocked (d, blk, run);
    pthread_mutex_unlock (&d->lock);

    int64_t r;
    if (fg) {
      /* On behalf of a guest: the streamer gives way as to a fault. */
      __atomic_fetch_add (&d->fg_inflight, 1, __ATOMIC_SEQ_CST);
      r = fetch_blocks (d, blk, run, deadline_ns, NULL, NULL, NULL, err) == 0
          ? (int64_t) blocks_length (d, blk, run) : -1;
      __atomic_store_n (&d->last_fg_ns, now_ns (), __ATOMIC_SEQ_CST);
      __atomic_fetch_sub (&d->fg_inflight, 1, __ATOMIC_SEQ_CST);
    }
    else
      r = fetch_sparse (d, blk, run, deadline_ns, err);

    release_busy (d, &self);
    if (r == -1) {
      if (next)
        *next = blk;
      return -1;
    }
    if (covered)
      *covered += blocks_length (d, blk, run);
    /* Start writing the run back now, not at the next commit: these
     * blocks are not about to be rewritten, and a stream's final flush
     * would otherwise write the whole disk at once.  A hint only. */
    if (r > 0)
      sync_file_range (d->overlay_fd, block_offset (d, blk), blocks_length (d, blk, run),
                       SYNC_FILE_RANGE_WRITE);
    total += r;
    __atomic_fetch_add (fg ? &d->fg_fetched_bytes : &d->bg_fetched_bytes, r, __ATOMIC_RELAXED);
    blk = run;
    pthread_mutex_lock (&d->lock);
  }
  pthread_mutex_unlock (&d->lock);
  if (next)
    *next = stop;
  return total;
}

/* ---- zeroing and seeking ---- */

int
cor_zero (struct cor_disk *d, uint64_t offset, uint64_t count, int *err)
{
  return modify (d, NULL, count, offset, err);
}

int64_t
cor_seek (struct cor_disk *d, uint64_t offset, bool data, int *err)
{
  uint64_t pos = offset;

  if (offset >= d->size) {
    *err = ENXIO;
    return -1;
  }
  while (pos < d->size) {
    uint64_t blk = pos >> d->block_shift, run_end;
    off_t q;

    if (!meta_test (d->md, META_PRESENT, blk)) {
      /* Unknown content counts as data. */
      if (data)
        return pos;
      blk = meta_next (d->md, META_PRESENT, true, blk);
      if (blk >= d->nr_blocks)
        return d->size;
      pos = block_offset (d, blk);
      continue;
    }
    run_end = block_offset (d, meta_next (d->md, META_PRESENT, false, blk));
    if (run_end > d->size)
      run_end = d->size;
    q = lseek (d->overlay_fd, pos, data ? SEEK_DATA : SEEK_HOLE);
    if (q == -1 && errno != ENXIO) {
      *err = errno;
      return -1;
    }
    if (q != -1 && (uint64_t) q < run_end)
      return q;
    pos = run_end;
  }
  if (data) {
    *err = ENXIO;
    return -1;
  }
  return d->size;
}

/* ---- merge support ---- */

unsigned cor_disk_block_shift (const struct cor_disk *d) { return d->block_shift; }
uint64_t cor_disk_nr_blocks (const struct cor_disk *d) { return d->nr_blocks; }
struct meta_disk *cor_disk_meta (struct cor_disk *d) { return d->md; }
struct remote *cor_disk_remote (struct cor_disk *d) { return d->remote; }
struct format *cor_disk_format (struct cor_disk *d) { return d->format; }

static bool
needs_writeback (struct cor_disk *d, uint64_t blk)
{
  return meta_test (d->md, META_DIRTY, blk) || meta_test (d->md, META_SUSPECT, blk);
}

/* The copy step of cor_writeback, shared by WB_THREADS threads (the
 * caller and helpers it starts): each takes the next run of present
 * blocks needing writeback, at most WB_PIECE bytes, from cursor, and
 * copies it.  One parent request at a time made a merge wait a parent
 * round trip per MiB: 1 GiB into an NBD export answering each write 2 ms
 * late took 3.8 s that way, 1.9 s four at a time. */
#define WB_PIECE (1ULL << 20)
#define WB_THREADS 4

struct wb_copy {
  struct cor_disk *d;
  uint64_t end, deadline_ns;
  pthread_mutex_t lock;         /* protects the fields below */
  uint64_t cursor;
  int64_t written, equal;       /* bytes written; suspect bytes found equal */
  int err;                      /* the first failure; stops the others */
  bool may_compare;             /* set before the workers start */
};

/* Block b of a piece that starts at byte base: its data in buf, the
 * parent's copy in pbuf (NULL: not read).  Equal means not dirty and the
 * same bytes, so it need not be written. */
static bool
wb_block_equal (struct cor_disk *d, const char *buf, const char *pbuf, uint64_t base,
                uint64_t b)
{
  uint64_t o = block_offset (d, b) - base;

  return pbuf && !meta_test (d->md, META_DIRTY, b) &&
    memcmp (buf + o, pbuf + o, blocks_length (d, b, b + 1)) == 0;
}

/* Write the blocks of [blk, run) (their data in buf, from blk) whose
 * copy in pbuf differs, or all of them when pbuf is NULL; blocks that
 * are dirty are written whatever pbuf holds.  Adds to *written and
 * *equal.  0 or -1 with *err. */
static int
wb_write_differing (struct cor_disk *d, const char *buf, const char *pbuf,
                    uint64_t blk, uint64_t run, uint64_t deadline_ns,
                    int64_t *written, int64_t *equal, int *err)
{
  uint64_t base = block_offset (d, blk);

  while (blk < run) {
    if (wb_block_equal (d, buf, pbuf, base, blk)) {
      *equal += blocks_length (d, blk, blk + 1);
      blk++;
      continue;
    }
    uint64_t e = blk + 1, n;
    while (e < run && !wb_block_equal (d, buf, pbuf, base, e))
      e++;
    n = blocks_length (d, blk, e);
    if (remote_pwrite (d->remote, buf + (block_offset (d, blk) - base), n,
                       block_offset (d, blk), deadline_ns, err) == -1) {
      if (!*err)
        *err = EIO;
      return -1;
    }
    *written += n;
    blk = e;
  }
  return 0;
}

static void *
wb_copy_worker (void *arg)
{
  struct wb_copy *c = arg;
  struct cor_disk *d = c->d;
  uint64_t piece = WB_PIECE >> d->block_shift ? WB_PIECE >> d->block_shift : 1;

  for (;;) {
    uint64_t blk, run;
    bool compare = false;
    pthread_mutex_lock (&c->lock);
    for (blk = c->cursor; blk < c->end; blk++)
      if (needs_writeback (d, blk) && meta_test (d->md, META_PRESENT, blk))
        break;
    for (run = blk + 1; run < c->end && run - blk < piece; run++)
      if (!needs_writeback (d, run) || !meta_test (d->md, META_PRESENT, run))
        break;
    c->cursor = run;
    bool stop = c->err != 0 || blk >= c->end;
    pthread_mutex_unlock (&c->lock);
    if (stop)
      break;

    /* Suspect blocks that are not dirty (every present block after an
     * unclean shutdown, DESIGN.md rule 4) are compared with the parent
     * and written only where they differ: most were fetched and never
     * written, and rewriting a whole fetched disk after each crash would
     * cost the parent as much as a full copy.  Dirty blocks are written
     * without comparing.  Only where a flush can make what we read back
     * stable (may_compare, see cor_writeback). */
    for (uint64_t b = blk; b < run && c->may_compare && !compare; b++)
      compare = !meta_test (d->md, META_DIRTY, b);

    uint64_t off = block_offset (d, blk), len = blocks_length (d, blk, run);
    int64_t written = 0, equal = 0;
    int err = 0;
    char *buf = iobuf_get (len), *pbuf = compare ? iobuf_get (len) : NULL;
    if (!buf || (compare && !pbuf))
      err = ENOMEM;
    else if (full_pread (d->overlay_fd, buf, len, off) == -1) {
      err = errno;
      log_error ("cor: disk %s: merge: overlay read at offset %" PRIu64 ": %m", d->name, off);
    }
    else if (compare && remote_pread (d->remote, pbuf, len, off, c->deadline_ns, &err) == -1) {
      if (!err)
        err = EIO;
    }
    else
      wb_write_differing (d, buf, compare ? pbuf : NULL, blk, run, c->deadline_ns,
                          &written, &equal, &err);
    iobuf_put (pbuf, len);
    iobuf_put (buf, len);
    __atomic_fetch_add (&d->wb_written_bytes, written, __ATOMIC_RELAXED);
    pthread_mutex_lock (&c->lock);
    if (err && !c->err)
      c->err = err;
    c->written += written;
    c->equal += equal;
    pthread_mutex_unlock (&c->lock);
  }
  return NULL;
}


/* cor_writeback, and abort's copy (for_abort: abort itself marked the
 * disk handed off to hold off guest writes, and holds owner_lock). */
static int64_t
writeback (struct cor_disk *d, uint64_t first, uint64_t end, uint64_t deadline_ns,
           bool for_abort, int *err)
{
  struct busy self;
  struct wb_copy c = { .d = d, .end = end, .deadline_ns = deadline_ns, .cursor = first };
  pthread_t helpers[WB_THREADS - 1];
  int nr_helpers = 0, r = 0;
  int64_t written;
  uint64_t blk;

  pthread_mutex_lock (&d->lock);
  r = claim_wait_unlocked (d, &self, first, end, deadline_ns, false);
  pthread_mutex_unlock (&d->lock);
  if (r == -1) {
    log_error ("cor: disk %s: writeback at offset %" PRIu64 ": blocks still owned by "
               "a fetch or a write when the deadline passed", d->name, block_offset (d, first));
    *err = ETIMEDOUT;
    return -1;
  }
  /* Checked with the blocks owned: a hand-off sets the owner state
   * before it waits for every claim (own_all), so either it waits for
   * this copy, or this copy sees the disk is no longer ours to write
   * back and leaves the parent alone. */
  if (!for_abort && __atomic_load_n (&d->owner, __ATOMIC_SEQ_CST) != META_ACTIVE) {
    release_busy (d, &self);
    log_error ("cor: disk %s: writeback at offset %" PRIu64 " refused: the disk is %s, "
               "not active", d->name, block_offset (d, first),
               meta_state_name (__atomic_load_n (&d->owner, __ATOMIC_SEQ_CST)));
    *err = EROFS;
    return -1;
  }

  /* A suspect block the parent reads back equal may hold a write that is
   * not stable there (a mirror write whose flush failed, or one by the
   * daemon that crashed); our flush covers it only if a flush covers the
   * writes of every connection.  Otherwise it is written again, which
   * our own flush does cover.  Unknown (no answer) counts as no; with
   * no suspect block in the range there is nothing to ask. */
  int e2;
  c.may_compare = meta_next (d->md, META_SUSPECT, true, first) < end &&
                  remote_flush_covers_all (d->remote, deadline_ns, &e2) == 1;

  /* Before our first write: the flush must fail if a lost connection
   * took any write issued since (whoever's flush finds it). */
  uint64_t since_ns = now_ns ();

  /* 1. Copy runs of present blocks that need it, several at once.  A
   * helper that cannot start only means fewer at once. */
  pthread_mutex_init (&c.lock, NULL);
  if (blocks_length (d, first, end) > WB_PIECE)
    for (; nr_helpers < WB_THREADS - 1; nr_helpers++)
      if (thread_create_nosig (&helpers[nr_helpers], wb_copy_worker, &c) == -1)
        break;
  wb_copy_worker (&c);
  for (int i = 0; i < nr_helpers; i++)
    pthread_join (helpers[i], NULL);
  pthread_mutex_destroy (&c.lock);
  written = c.written;
  if (c.err) {
    *err = c.err;
    r = -1;
  }
  /* 2. Make them stable on the parent; 3. only then clear the bits.
   * Blocks found equal need a flush as much as written ones, and one
   * that reaches what other connections wrote (remote_flush_all): the
   * data read back may not be stable yet. */
  if (r == 0 && (c.equal > 0 || written > 0) &&
      remote_flush_since (d->remote, c.equal > 0, since_ns, deadline_ns, err) == -1)
    r = -1;
  if (r == 0)
    for (blk = first; blk < end; blk++)
      if (needs_writeback (d, blk)) {
        meta_clear (d->md, META_DIRTY, blk, 1);
        meta_clear (d->md, META_SUSPECT, blk, 1);
      }
  release_busy (d, &self);
  if (r == 0)
    __atomic_fetch_add (&d->wb_equal_bytes, c.equal, __ATOMIC_RELAXED);
  return r == 0 ? written + c.equal : -1;
}

int64_t
cor_writeback (struct cor_disk *d, uint64_t first, uint64_t end,
               uint64_t deadline_ns, int *err)
{
  return writeback (d, first, end, deadline_ns, false, err);
}

int
cor_changed_extents (struct cor_disk *d, uint32_t since, bool *widened,
                     int (*fn) (void *opaque, uint64_t first_blk, uint64_t nr_blks),
                     void *opaque)
{
  return meta_changed_extents (d->md, since, widened, fn, opaque);
}

static int own_all_mode (struct cor_disk *d, struct busy *self, bool writes_only,
                         const char *what, char *errbuf, size_t len);
static void gate_release (struct cor_disk *d);

uint32_t
cor_checkpoint (struct cor_disk *d, char *errbuf, size_t len)
{
  uint32_t gen;
  int err;

  /* Commit first, so that nothing of the old generation is in flight in
   * a batch when the generation changes. */
  if (cor_flush (d, &err) == -1) {
    snprintf (errbuf, len, "disk %s: checkpoint: flush failed: %s", d->name, strerror (err));
    return 0;
  }
  /* Only writes change the changed bits: fetches in flight (a
   * streamer chunk from a slow parent) may go on (own_all_mode). */
  if (own_all_mode (d, NULL, true, "checkpoint", errbuf, len) == -1)
    return 0;
  gen = meta_checkpoint (d->md);
  if (gen == 0) {
    snprintf (errbuf, len, "disk %s: checkpoint: %s", d->name, strerror (errno));
    log_error ("cor: %s", errbuf);
  }
  gate_release (d);
  return gen;
}

/* ---- owner state: migration switch-over ---- */

void
cor_set_invalidate_fn (struct cor_engine *e,
                       void (*fn) (void *opaque, size_t disk_index), void *opaque)
{
  e->invalidate_fn = fn;
  e->invalidate_opaque = opaque;
}

/* Must be called with d->owner_lock held.  Common epoch rules: 1 if the
 * request is a no-op (same epoch, already in state `to`), 0 to go on,
 * -1 (errbuf) if stale. */
static int
check_epoch_unlocked (struct cor_disk *d, const struct meta_record *rec, uint64_t epoch,
                      int to, const char *what, char *errbuf, size_t len)
{
  if (epoch == rec->epoch && (int) rec->state == to)
    return 1;
  if (epoch <= rec->epoch) {
    snprintf (errbuf, len, "disk %s: stale epoch %" PRIu64 " for %s: the disk has "
              "accepted epoch %" PRIu64 " (%s)", d->name, epoch, what, rec->epoch,
              meta_state_name (rec->state));
    return -1;
  }
  return 0;
}

/* Must be called with d->lock held.  The first write claim, or NULL. */
static struct busy *
find_write_unlocked (struct cor_disk *d)
{
  for (struct busy *b = d->busy; b; b = b->next)
    if (b->write)
      return b;
  return NULL;
}

/* Must be called with d->lock held.  Close the gate for an exclusive
 * operation whose deadline is deadline_ns (see exclusive_deadline_ns). */
static void
gate_close_unlocked (struct cor_disk *d, uint64_t deadline_ns)
{
  if (d->exclusive_waiters == 0 || deadline_ns < d->exclusive_deadline_ns)
    __atomic_store_n (&d->exclusive_deadline_ns, deadline_ns, __ATOMIC_SEQ_CST);
  __atomic_store_n (&d->exclusive_waiters, d->exclusive_waiters + 1, __ATOMIC_SEQ_CST);
}

/* Must be called with d->lock held.  Open it again (for this waiter). */
static void
gate_open_unlocked (struct cor_disk *d)
{
  __atomic_store_n (&d->exclusive_waiters, d->exclusive_waiters - 1, __ATOMIC_SEQ_CST);
  /* With other waiters left, their earliest deadline is unknown here:
   * the one kept is earlier, which only lets fewer guests through. */
  if (d->exclusive_waiters == 0)
    __atomic_store_n (&d->exclusive_deadline_ns, UINT64_MAX, __ATOMIC_SEQ_CST);
  pthread_cond_broadcast (&d->cond);
}

/* Own every block for an exclusive operation (what: its name, for the
 * error): no fetch or write is in flight, and none starts until
 * release_busy.  Callers that change the owner state hold owner_lock.
 *   1. Close the gate (exclusive_waiters): new claims wait or back off,
 *      so the streamer's next chunks cannot keep the disk busy forever.
 *      Guest requests whose deadline is before ours still get through
 *      (they end before we would give up).
 *   2. Wait for the claims in flight to end, at most the hold: a fetch
 *      that the parent stalls must not hold the command (and its reply)
 *      longer than it would hold a guest; nor past the daemon's shutdown.
 *   3. Claim everything, or give up with nothing owned; open the gate.
 * With writes_only (checkpoint), step 2 waits only for write claims
 * (fetches never touch the dirty or changed bits), and step 3 claims
 * nothing: the gate stays shut (nobody passes) until gate_release.
 * 0, or -1 with a reason in errbuf (also logged). */
static int
own_all_mode (struct cor_disk *d, struct busy *self, bool writes_only, const char *what,
              char *errbuf, size_t len)
{
  uint64_t deadline_ns = now_ns () + d->hold_ns;
  struct busy *b;
  int r = 0;

  pthread_mutex_lock (&d->lock);
  gate_close_unlocked (d, deadline_ns);
  while ((b = writes_only ? find_write_unlocked (d)
          : find_busy_unlocked (d, 0, d->nr_blocks)) != NULL) {
    if (__atomic_load_n (&d->e->stopping, __ATOMIC_SEQ_CST)) {
      snprintf (errbuf, len, "disk %s: %s: not done: the daemon is shutting down",
                d->name, what);
      r = -1;
      break;
    }
    if (wait_until_unlocked (d, deadline_ns) == -1) {
      snprintf (errbuf, len, "disk %s: %s: not done: the block at offset %" PRIu64
                " was still being %s when the hold time (%" PRIu64
                " s) ran out (parent %s slow or stalled?); try again", d->name, what,
                block_offset (d, b->first), writes_only ? "written" : "fetched or written",
                (uint64_t) (d->hold_ns / NS_PER_SEC), remote_url (d->remote));
      r = -1;
      break;
    }
  }
  if (r == 0 && writes_only) {
    /* Hold the gate shut: no claim passes, whatever its deadline. */
    __atomic_store_n (&d->exclusive_deadline_ns, 0, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock (&d->lock);
    return 0;
  }
  if (r == 0)
    claim_unlocked (d, self, 0, d->nr_blocks, true);
  gate_open_unlocked (d);               /* the gate may be open again */
  pthread_mutex_unlock (&d->lock);
  if (r == -1)
    log_error ("cor: %s", errbuf);
  return r;
}

static int
own_all (struct cor_disk *d, struct busy *self, const char *what, char *errbuf, size_t len)
{
  return own_all_mode (d, self, false, what, errbuf, len);
}

/* End an own_all_mode (writes_only) hold. */
static void
gate_release (struct cor_disk *d)
{
  pthread_mutex_lock (&d->lock);
  gate_open_unlocked (d);
  pthread_mutex_unlock (&d->lock);
}

static int
set_state (struct cor_disk *d, struct meta_record *rec, int state, uint64_t epoch,
           char *errbuf, size_t len)
{
  rec->state = state;
  rec->epoch = epoch;
  if (meta_disk_update (d->md, rec) == -1) {
    snprintf (errbuf, len, "disk %s: recording state %s: %s", d->name, meta_state_name (state),
              strerror (errno));
    return -1;
  }
  return 0;
}

/* A failed activation (the parent could not be pinned, or has another
 * size) is undone in the record: state incoming again, with the epoch it
 * had, so that neither a mount nor the same epoch finishes it; only an
 * explicit `activate` that succeeds does.  A crash between the two
 * records (activating, then this) leaves it activating: the mount
 * finishes that one, as after any interrupted activation. */
static void
back_to_incoming (struct cor_disk *d, struct meta_record *rec, const struct meta_record *before,
                  char *errbuf, size_t len)
{
  rec->state = before->state;
  rec->epoch = before->epoch;
  if (meta_disk_update (d->md, rec) == -1) {
    int e = errno;
    size_t n = strlen (errbuf);
    log_error ("cor: disk %s: putting the record back to incoming after a failed "
               "activation: %s", d->name, strerror (e));
    /* The record still says activating: the next mount finishes the
     * activation (or puts it back to incoming if the pin fails again). */
    if (n < len)
      snprintf (errbuf + n, len - n, "; and the record could not be put back to incoming "
                "(%s): it stays activating, which the next mount finishes", strerror (e));
  }
}

int
cor_activate (struct cor_disk *d, uint64_t epoch, bool force, char *errbuf, size_t len)
{
  struct meta_record rec;
  struct busy self;
  struct meta_record before;
  int r, err = 0;

  pthread_mutex_lock (&d->owner_lock);
  meta_disk_record (d->md, &rec);
  /* The same epoch again finishes an activation that could not pin the
   * parent (below), or that a mount put back to incoming (cor_disk_add:
   * an incoming disk has a non-zero epoch only from there). */
  r = (rec.state == META_ACTIVATING || (rec.state == META_INCOMING && rec.epoch > 0))
    && epoch == rec.epoch ? 0
    : check_epoch_unlocked (d, &rec, epoch, META_ACTIVE, "activate", errbuf, len);
  if (r != 0) {
    pthread_mutex_unlock (&d->owner_lock);
    return r == 1 ? 0 : -1;
  }
  if (rec.state != META_INCOMING && rec.state != META_ACTIVATING) {
    snprintf (errbuf, len, "disk %s is %s, not incoming: nothing to activate", d->name,
              meta_state_name (rec.state));
    pthread_mutex_unlock (&d->owner_lock);
    return -1;
  }
  if (!force) {
    int w = remote_parent_writable (d->remote, now_ns () + d->hold_ns, &err);
    if (w != 0) {
      snprintf (errbuf, len, w == 1
                ? "disk %s: the parent %s is still writable, so the source may still be "
                  "writing it; serve it read-only (e.g. nbdkit -r) or use --force"
                : "disk %s: cannot tell whether the parent %s is writable (%s); use --force",
                d->name, remote_url (d->remote), strerror (err));
      pthread_mutex_unlock (&d->owner_lock);
      return -1;
    }
  }
  /* A mirror disk flushes the parent at every guest fsync: a parent
   * that cannot flush (an NBD server without FLUSH) would fail them all. */
  if (d->mirror && remote_flush_all (d->remote, now_ns () + d->hold_ns, &err) == -1 &&
      err == EOPNOTSUPP) {
    snprintf (errbuf, len, "disk %s: mirror mode needs a parent that can flush: %s offers "
              "none, so no write to it could be made durable; the disk stays incoming",
              d->name, remote_url (d->remote));
    pthread_mutex_unlock (&d->owner_lock);
    return -1;
  }
  before = rec;
  /* 1. Stop and drain: own every block. */
  if (own_all (d, &self, "activate", errbuf, len) == -1) {
    pthread_mutex_unlock (&d->owner_lock);
    return -1;
  }
  /* 2. Durably: activating, with the epoch.  (Nothing read while incoming
   * was kept, so step 3, punching, has nothing to do.) */
  if (set_state (d, &rec, META_ACTIVATING, epoch, errbuf, len) == -1)
    goto fail;
  /* 4. Drop the kernel's cached pages: they may predate the switch-over. */
  if (d->e->invalidate_fn)
    d->e->invalidate_fn (d->e->invalidate_opaque, d->index);
  /* The parent is final now: pin its identity, in the same record.  The
   * drain left no request on a connection, and the re-pin asks on one of
   * its own.  Without an identity a later remount would take any image
   * of the same size, and a parent of another size would fail reads
   * past its end: the disk goes back to incoming, durably (a mount must
   * not finish what failed), until `activate` is repeated. */
  {
    char id[META_ID_MAX];
    if (remote_repin (d->remote, true, d->size, id, sizeof id, now_ns () + d->hold_ns,
                      &err) == -1) {
      char why[1280];
      snprintf (errbuf, len, "disk %s: activation: cannot pin parent %s (%s); the disk "
                "stays incoming until `activate` is repeated", d->name,
                remote_url (d->remote), repin_why (d, err, why, sizeof why));
      back_to_incoming (d, &rec, &before, errbuf, len);
      goto fail;
    }
    remote_set_modifying (d->remote, d->mirror);
    snprintf (rec.identity, sizeof rec.identity, "%s", id);
  }
  /* 5. Active, durably; only then writes. */
  if (set_state (d, &rec, META_ACTIVE, epoch, errbuf, len) == -1)
    goto fail;
  __atomic_store_n (&d->owner, META_ACTIVE, __ATOMIC_SEQ_CST);
  release_busy (d, &self);
  pthread_mutex_unlock (&d->owner_lock);
  log_info ("cor: disk %s: activated with epoch %" PRIu64, d->name, epoch);
  cor_emit (d, "activated", epoch, 0, NULL);
  cor_stream_autostart (d, d->start_mode);
  return 0;
 fail:
  release_busy (d, &self);
  pthread_mutex_unlock (&d->owner_lock);
  return -1;
}

int
cor_handoff (struct cor_disk *d, uint64_t epoch, char *errbuf, size_t len)
{
  struct meta_record rec;
  struct busy self;
  int r, err;

  pthread_mutex_lock (&d->owner_lock);
  meta_disk_record (d->md, &rec);
  r = check_epoch_unlocked (d, &rec, epoch, META_HANDED_OFF, "handoff", errbuf, len);
  if (r != 0) {
    pthread_mutex_unlock (&d->owner_lock);
    return r == 1 ? 0 : -1;
  }
  if (rec.state != META_ACTIVE) {
    snprintf (errbuf, len, "disk %s is %s: only an active disk can be handed off",
              d->name, meta_state_name (rec.state));
    pthread_mutex_unlock (&d->owner_lock);
    return -1;
  }
  /* A merge is writing the parent (or stopped before synced: the parent
   * is partly written and its identity check off).  Handing off now
   * would let it go on writing, then re-pin, under the new owner.  The
   * merge sets this mark under owner_lock, and refuses to start on a
   * disk that is no longer active, so the two cannot cross. */
  if (rec.merging) {
    snprintf (errbuf, len, "disk %s: handoff refused: a merge into the parent %s is "
              "running or was stopped before it synced (the parent is partly written); "
              "let `corfs merge` reach synced first", d->name, remote_url (d->remote));
    pthread_mutex_unlock (&d->owner_lock);
    return -1;
  }
  /* Wait for the writes in flight, then refuse new ones, flush.  The
   * state changes only once own_all succeeded: its claim holds new writes
   * off meanwhile (they wait within their hold, then re-check the state:
   * modify), so a hand-off that fails here never made the guest see
   * EROFS. */
  if (own_all (d, &self, "handoff", errbuf, len) == -1) {
    pthread_mutex_unlock (&d->owner_lock);
    return -1;
  }
  __atomic_store_n (&d->owner, META_HANDED_OFF, __ATOMIC_SEQ_CST);
  release_busy (d, &self);
  if (cor_flush (d, &err) == -1) {
    __atomic_store_n (&d->owner, META_ACTIVE, __ATOMIC_SEQ_CST);
    snprintf (errbuf, len, "disk %s: flush before hand-off failed: %s", d->name, strerror (err));
    pthread_mutex_unlock (&d->owner_lock);
    return -1;
  }
  if (d->mirror) {
    /* The mirror's writes moved the parent's identity since the mount
     * (which cleared the one recorded): record it as the hand-off leaves
     * it, for the next mount of the handed-off disk to check. */
    char id[META_ID_MAX] = "";
    int ierr = 0;
    if (remote_repin (d->remote, false, d->size, id, sizeof id, now_ns () + d->hold_ns,
                      &ierr) == -1)
      log_warn ("cor: disk %s: mirror: the identity of parent %s could not be recorded at "
                "hand-off (%s): a remount of this disk needs --repin", d->name,
                remote_url (d->remote), strerror (ierr));
    snprintf (rec.identity, sizeof rec.identity, "%s", id);
  }
  if (set_state (d, &rec, META_HANDED_OFF, epoch, errbuf, len) == -1) {
    __atomic_store_n (&d->owner, META_ACTIVE, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock (&d->owner_lock);
    return -1;
  }
  pthread_mutex_unlock (&d->owner_lock);
  log_info ("cor: disk %s: handed off with epoch %" PRIu64 "; read-only from now on",
            d->name, epoch);
  cor_emit (d, "handed-off", epoch, 0, NULL);
  return 0;
}

int
cor_reclaim (struct cor_disk *d, uint64_t epoch, char *errbuf, size_t len)
{
  struct meta_record rec;
  int r, err = 0;

  pthread_mutex_lock (&d->owner_lock);
  meta_disk_record (d->md, &rec);
  r = check_epoch_unlocked (d, &rec, epoch, META_ACTIVE, "reclaim", errbuf, len);
  if (r != 0) {
    pthread_mutex_unlock (&d->owner_lock);
    return r == 1 ? 0 : -1;
  }
  if (rec.state != META_HANDED_OFF) {
    snprintf (errbuf, len, "disk %s is %s, not handed off: nothing to reclaim", d->name,
              meta_state_name (rec.state));
    pthread_mutex_unlock (&d->owner_lock);
    return -1;
  }
  /* A mirror (handed off by abort) writes its parent again once active:
   * the identity check must accept its own writes (modifying), but only
   * over the image abort left, not one written or swapped since. */
  if (d->mirror && remote_verify (d->remote, NULL, now_ns () + d->hold_ns, &err) == -1) {
    char why[1280];
    snprintf (errbuf, len, "disk %s: reclaim refused: mirror parent %s %s (%s); the disk "
              "stays handed off", d->name, remote_url (d->remote),
              err == ESTALE ? "is not the image abort left" : "cannot be verified",
              repin_why (d, err, why, sizeof why));
    pthread_mutex_unlock (&d->owner_lock);
    return -1;
  }
  if (set_state (d, &rec, META_ACTIVE, epoch, errbuf, len) == -1) {
    pthread_mutex_unlock (&d->owner_lock);
    return -1;
  }
  if (d->mirror)
    remote_set_modifying (d->remote, true);
  __atomic_store_n (&d->owner, META_ACTIVE, __ATOMIC_SEQ_CST);
  pthread_mutex_unlock (&d->owner_lock);
  log_info ("cor: disk %s: reclaimed with epoch %" PRIu64 "; writable again", d->name, epoch);
  cor_emit (d, "reclaimed", epoch, 0, NULL);
  return 0;
}

int
cor_update_record (struct cor_disk *d,
                   int (*fn) (struct meta_record *rec, void *arg, char *errbuf, size_t len),
                   void *arg, char *errbuf, size_t len)
{
  uint64_t deadline_ns = now_ns () + d->hold_ns;
  struct timespec ts = { deadline_ns / NS_PER_SEC, deadline_ns % NS_PER_SEC };
  struct meta_record rec;
  int r;

  /* A transition may hold owner_lock through long work (abort's copy,
   * activate's questions to the parent): wait for it at most the hold,
   * then fail; every caller retries or reports. */
  if ((r = pthread_mutex_clocklock (&d->owner_lock, CLOCK_MONOTONIC, &ts)) != 0) {
    snprintf (errbuf, len, "disk %s: the record is busy with an owner-state change "
              "(activate, handoff, pivot or abort) that took longer than the hold time "
              "(%" PRIu64 " s); try again once it has ended", d->name,
              (uint64_t) (d->hold_ns / NS_PER_SEC));
    errno = r == ETIMEDOUT ? EAGAIN : r;
    return -1;
  }
  meta_disk_record (d->md, &rec);
  r = fn (&rec, arg, errbuf, len);
  if (r == 0 && meta_disk_update (d->md, &rec) == -1) {
    snprintf (errbuf, len, "disk %s: updating the record: %s", d->name, strerror (errno));
    r = -1;
  }
  if (r == 0)
    __atomic_store_n (&d->owner, rec.state, __ATOMIC_SEQ_CST);
  pthread_mutex_unlock (&d->owner_lock);
  return r == -1 ? -1 : 0;
}

/* ---- mirror: pivot and abort ---- */

int
cor_pivot (struct cor_disk *d, char *errbuf, size_t len)
{
  struct meta_record rec;
  struct busy self;
  uint64_t present;
  int err;

  pthread_mutex_lock (&d->owner_lock);
  meta_disk_record (d->md, &rec);
  if (!d->mirror) {
    snprintf (errbuf, len, "disk %s is not in mirror mode", d->name);
    goto fail;
  }
  if (rec.state != META_ACTIVE) {
    snprintf (errbuf, len, "disk %s is %s: only an active mirror can pivot", d->name,
              meta_state_name (rec.state));
    goto fail;
  }
  present = meta_count (d->md, META_PRESENT);
  if (present < d->nr_blocks) {
    snprintf (errbuf, len, "disk %s: pivot refused: the copy is not complete (%" PRIu64
              " of %" PRIu64 " blocks); wait for mirror-ready or abort", d->name,
              present, d->nr_blocks);
    goto fail;
  }
  if (own_all (d, &self, "pivot", errbuf, len) == -1)    /* no write in flight */
    goto fail;
  /* Again, now that no write can drop a block (a failed overlay write). */
  if (meta_count (d->md, META_PRESENT) < d->nr_blocks) {
    release_busy (d, &self);
    snprintf (errbuf, len, "disk %s: pivot refused: a block was dropped from the copy; "
              "wait for mirror-ready again", d->name);
    goto fail;
  }
  /* After quiesce the parent's flush is cancelled, and a failed mirror
   * flush marks every block suspect: do not get there at shutdown. */
  if (__atomic_load_n (&d->e->stopping, __ATOMIC_SEQ_CST)) {
    release_busy (d, &self);
    snprintf (errbuf, len, "disk %s: pivot: not done: the daemon is shutting down", d->name);
    goto fail;
  }
  if (cor_flush (d, &err) == -1) {
    release_busy (d, &self);
    snprintf (errbuf, len, "disk %s: flush before pivot: %s", d->name, strerror (err));
    goto fail;
  }
  rec.state = META_STANDALONE;
  rec.mirror = false;
  rec.complete = true;
  if (meta_disk_update (d->md, &rec) == -1) {
    release_busy (d, &self);
    snprintf (errbuf, len, "disk %s: recording the pivot: %s", d->name, strerror (errno));
    goto fail;
  }
  d->mirror = false;
  __atomic_store_n (&d->owner, META_STANDALONE, __ATOMIC_SEQ_CST);
  release_busy (d, &self);
  pthread_mutex_unlock (&d->owner_lock);
  remote_release (d->remote);
  log_info ("cor: disk %s: pivoted: standalone, the old storage is no longer used", d->name);
  cor_emit (d, "pivoted", d->size, d->size, NULL);
  return 0;
 fail:
  pthread_mutex_unlock (&d->owner_lock);
  return -1;
}

static bool
engine_stopping (const struct cor_disk *d)
{
  return __atomic_load_n (&d->e->stopping, __ATOMIC_SEQ_CST) != 0;
}

/* cor_abort cut short by the daemon's shutdown at block blk (the
 * documented message; the caller reverts the owner and unlocks). */
static void
abort_interrupted (struct cor_disk *d, uint64_t blk, char *errbuf, size_t len)
{
  snprintf (errbuf, len, "disk %s: abort: interrupted at offset %" PRIu64 " by the "
            "daemon's shutdown; the mirror is still active, abort again after the "
            "restart", d->name, block_offset (d, blk));
}

int
cor_abort (struct cor_disk *d, char *errbuf, size_t len)
{
  struct meta_record rec;
  struct busy self;
  uint64_t blk;
  int err = 0;

  pthread_mutex_lock (&d->owner_lock);
  meta_disk_record (d->md, &rec);
  if (!d->mirror || rec.state != META_ACTIVE) {
    snprintf (errbuf, len, "disk %s: nothing to abort (not an active mirror)", d->name);
    pthread_mutex_unlock (&d->owner_lock);
    return -1;
  }
  /* 1. Wait for the writes in flight; then no new writes (as in
   * cor_handoff: the state changes only once own_all succeeded, so an
   * abort that cannot get the disk never fails a guest write).  From
   * here until the copy below ends, writes get EROFS; a copy that fails
   * (or is cut short by the shutdown) reverts the disk to an active
   * mirror. */
  if (own_all (d, &self, "abort", errbuf, len) == -1) {
    pthread_mutex_unlock (&d->owner_lock);
    return -1;
  }
  __atomic_store_n (&d->owner, META_HANDED_OFF, __ATOMIC_SEQ_CST);
  release_busy (d, &self);
  /* 2. Whatever the parent may lack (a failed parent write, or every
   * present block after an unclean shutdown) goes to it now. */
  while ((blk = meta_next (d->md, META_DIRTY, true, 0)) < d->nr_blocks ||
         (blk = meta_next (d->md, META_SUSPECT, true, 0)) < d->nr_blocks) {
    uint64_t end = blk + 1;
    if (engine_stopping (d)) {
      __atomic_store_n (&d->owner, META_ACTIVE, __ATOMIC_SEQ_CST);
      abort_interrupted (d, blk, errbuf, len);
      pthread_mutex_unlock (&d->owner_lock);
      return -1;
    }
    while (end < d->nr_blocks && end - blk < 256 &&
           (meta_test (d->md, META_DIRTY, end) || meta_test (d->md, META_SUSPECT, end)))
      end++;
    if (writeback (d, blk, end, now_ns () + d->hold_ns, true, &err) == -1) {
      __atomic_store_n (&d->owner, META_ACTIVE, __ATOMIC_SEQ_CST);
      if (engine_stopping (d))    /* the copy was cancelled (remote_cancel) */
        abort_interrupted (d, blk, errbuf, len);
      else
        snprintf (errbuf, len, "disk %s: abort: copying offset %" PRIu64 " to the parent "
                  "failed (%s); the mirror is still active, try again", d->name,
                  block_offset (d, blk), strerror (err));
      pthread_mutex_unlock (&d->owner_lock);
      return -1;
    }
  }
  /* After quiesce the parent's flush is cancelled, and a failed mirror
   * flush marks every block suspect: do not get there at shutdown. */
  if (engine_stopping (d)) {
    __atomic_store_n (&d->owner, META_ACTIVE, __ATOMIC_SEQ_CST);
    snprintf (errbuf, len, "disk %s: abort: interrupted by the daemon's shutdown before "
              "its final flush; the mirror is still active, abort again after the "
              "restart", d->name);
    pthread_mutex_unlock (&d->owner_lock);
    return -1;
  }
  if (cor_flush (d, &err) == -1) {   /* commits, and flushes the parent (mirror) */
    __atomic_store_n (&d->owner, META_ACTIVE, __ATOMIC_SEQ_CST);
    snprintf (errbuf, len, "disk %s: abort: flush failed (%s); try again", d->name,
              strerror (err));
    pthread_mutex_unlock (&d->owner_lock);
    return -1;
  }
  /* 3. Durably read-only: the parent is the disk now; pin what it is
   * (never an empty identity: that would accept any image later). */
  {
    char id[META_ID_MAX];
    if (remote_repin (d->remote, true, d->size, id, sizeof id, now_ns () + d->hold_ns,
                      &err) == -1) {
      char why[1280];
      __atomic_store_n (&d->owner, META_ACTIVE, __ATOMIC_SEQ_CST);
      snprintf (errbuf, len, "disk %s: abort: cannot pin the identity of parent %s (%s); "
                "the mirror is still active, try again", d->name, remote_url (d->remote),
                repin_why (d, err, why, sizeof why));
      pthread_mutex_unlock (&d->owner_lock);
      return -1;
    }
    remote_set_modifying (d->remote, false);
    snprintf (rec.identity, sizeof rec.identity, "%s", id);
  }
  rec.state = META_HANDED_OFF;
  if (meta_disk_update (d->md, &rec) == -1) {
    snprintf (errbuf, len, "disk %s: recording the abort: %s", d->name, strerror (errno));
    pthread_mutex_unlock (&d->owner_lock);
    return -1;
  }
  pthread_mutex_unlock (&d->owner_lock);
  cor_stream_cancel (d, &err);
  log_info ("cor: disk %s: mirror aborted: the parent is current; the disk is read-only",
            d->name);
  cor_emit (d, "aborted", 0, 0, NULL);
  return 0;
}

/* ---- events ---- */

void
cor_set_event_fn (struct cor_engine *e,
                  void (*fn) (void *opaque, const struct cor_event *ev), void *opaque)
{
  /* Emitters run on other threads: publish the argument before the
   * function, and read them in the opposite order (cor_emit). */
  __atomic_store_n (&e->event_opaque, opaque, __ATOMIC_SEQ_CST);
  __atomic_store_n (&e->event_fn, fn, __ATOMIC_SEQ_CST);
}

void
cor_emit (struct cor_disk *d, const char *type, uint64_t done, uint64_t total,
          const char *message)
{
  struct cor_event ev = { type, d->name, done, total, message };
  void (*fn) (void *, const struct cor_event *) =
    __atomic_load_n (&d->e->event_fn, __ATOMIC_SEQ_CST);

  if (fn)
    fn (__atomic_load_n (&d->e->event_opaque, __ATOMIC_SEQ_CST), &ev);
}

/* ---- status ---- */

void
cor_disk_status (struct cor_disk *d, struct cor_status *st)
{
  static const char *health[] = { "rw", "ro", "failed" };
  struct meta_record rec;
  struct remote_stats rs;

  memset (st, 0, sizeof *st);
  meta_disk_record (d->md, &rec);
  st->size = d->size;
  st->block_size = d->block_size;
  st->nr_blocks = d->nr_blocks;
  st->present_blocks = meta_count (d->md, META_PRESENT);
  st->dirty_blocks = meta_count (d->md, META_DIRTY);
  st->suspect_blocks = meta_count (d->md, META_SUSPECT);
  st->health = health[__atomic_load_n (&d->health, __ATOMIC_SEQ_CST)];
  st->owner_state = rec.state;
  st->epoch = rec.epoch;
  st->generation = rec.generation;
  st->widened = rec.widened_generation != 0;
  st->parent_url = remote_url (d->remote);
  st->parent_backend = remote_backend (d->remote);
  st->parent_state = remote_state_name (remote_status (d->remote, st->parent_error,
                                                       sizeof st->parent_error));
  remote_get_stats (d->remote, &rs);
  st->remote_retries = rs.retries;
  st->remote_reconnects = rs.reconnects;
  st->fetched_bytes = __atomic_load_n (&d->fetched_bytes, __ATOMIC_RELAXED);
  st->fetch_requests = __atomic_load_n (&d->fetch_requests, __ATOMIC_RELAXED);
  st->fetch_errors = __atomic_load_n (&d->fetch_errors, __ATOMIC_RELAXED);
  st->guest_read_bytes = __atomic_load_n (&d->guest_read_bytes, __ATOMIC_RELAXED);
  st->guest_write_bytes = __atomic_load_n (&d->guest_write_bytes, __ATOMIC_RELAXED);
  st->flushes = __atomic_load_n (&d->flushes, __ATOMIC_RELAXED);
  st->foreground_fetched_bytes = __atomic_load_n (&d->fg_fetched_bytes, __ATOMIC_RELAXED);
  st->background_fetched_bytes = __atomic_load_n (&d->bg_fetched_bytes, __ATOMIC_RELAXED);
  st->zero_skipped_bytes = __atomic_load_n (&d->zero_skipped_bytes, __ATOMIC_RELAXED);
  st->writeback_bytes = __atomic_load_n (&d->wb_written_bytes, __ATOMIC_RELAXED);
  st->writeback_equal_bytes = __atomic_load_n (&d->wb_equal_bytes, __ATOMIC_RELAXED);
  for (int i = 0; i <= COR_LAT_BUCKETS; i++)
    st->fault_latency[i] = __atomic_load_n (&d->fault_latency[i], __ATOMIC_RELAXED);
  st->fault_latency_sum_us = __atomic_load_n (&d->fault_latency_sum_us, __ATOMIC_RELAXED);
  pthread_mutex_lock (&d->stream.lock);
  st->stream_state = cor_stream_state_name (d);
  st->stream_rate = d->stream.rate;
  st->streamed_bytes = __atomic_load_n (&d->streamed_bytes, __ATOMIC_RELAXED);
  st->stream_errors = d->stream.errors;
  st->stream_bytes_per_s = d->stream.recent_bps;
  snprintf (st->stream_error, sizeof st->stream_error, "%s", d->stream.last_error);
  pthread_mutex_unlock (&d->stream.lock);
  {
    uint64_t missing = (st->nr_blocks - st->present_blocks) * st->block_size;
    double bps = st->stream_bytes_per_s;
    if (st->present_blocks == st->nr_blocks)
      st->eta_s = 0;
    else if (bps > 0 && !strcmp (st->stream_state, "running"))
      st->eta_s = (int64_t) (missing / bps) + 1;
    else
      st->eta_s = -1;
  }
}

int
cor_disk_extents (struct cor_disk *d, bool dirty, uint64_t from_offset,
                  int (*fn) (void *opaque, uint64_t offset, uint64_t length),
                  void *opaque)
{
  enum meta_map map = dirty ? META_DIRTY : META_PRESENT;
  uint64_t blk = from_offset >> d->block_shift;

  while ((blk = meta_next (d->md, map, true, blk)) < d->nr_blocks) {
    uint64_t end = meta_next (d->md, map, false, blk);
    if (fn (opaque, block_offset (d, blk), blocks_length (d, blk, end)) == -1)
      return -1;
    blk = end;
  }
  return 0;
}
