/* corfs: owner states (docs/design.md "Disk states", rule 10): activate,
 * hand-off, reclaim, an interrupted activation resumed at mount, record
 * updates, checkpoint, the mirror's identity sealed at shutdown, and the
 * disk file's mode and owner.
 *
 * Thread model: ctl's command and job threads, merge's jobs and the
 * streamer (cor_update_record), quiesce (the seal).  d->owner_lock is the
 * outermost lock (LOCK ORDER in cor-internal.h): each transition holds it
 * for its whole run, scoped (ACQUIRE_LOCK_FOR_CURRENT_SCOPE), across the
 * drain (inflight_own_all), cor_flush and remote I/O with deadlines;
 * cor_update_record and the seal wait for it with a deadline.  Events
 * and logs come after it is released.  d->attr_lock guards the cached
 * mode and owner only.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "common/cleanup.h"
#include "common/log.h"
#include "common/util.h"
#include "cor/cor-internal.h"
#include "remote/remote.h"

/* Must be called with d->attr_lock held.  Cache the record's mode and
 * owner, defaults resolved (cor_disk_attr). */
static void
attr_cache (struct cor_disk *d, const struct meta_record *rec)
{
  d->mode = rec->has_mode ? rec->mode & 0777 : 0600;
  d->uid = rec->has_uid ? rec->uid : getuid ();
  d->gid = rec->has_gid ? rec->gid : getgid ();
}

void
cor_attr_from_record (struct cor_disk *d, const struct meta_record *rec)
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
const char *
cor_repin_why (struct cor_disk *d, int err, char *buf, size_t len)
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

  if (remote_repin (d->remote, true, d->parent_size, id, sizeof id, now_ns () + d->hold_ns,
                    &err) == -1) {
    char why[1280];
    log_error ("cor: disk %s: finishing an interrupted activation: cannot pin the "
               "identity of parent %s (%s); the disk goes back to incoming until "
               "`activate` is repeated (the same epoch %" PRIu64 " is accepted)", d->name,
               remote_url (d->remote), cor_repin_why (d, err, why, sizeof why), rec->epoch);
    errno = err;
    return -1;
  }
  snprintf (rec->identity, sizeof rec->identity, "%s", id);
  return 0;
}

int
cor_resume_activation (struct cor_disk *d, struct meta_record *rec)
{
  /* Interrupted activation: this is a fresh mount, so the kernel has
   * no cached pages to drop; finish with the last steps: pin the
   * parent, which is final now, and record it with state active.  From
   * here on a changed parent fails closed, as after any activation. */
  /* A parent that cannot be pinned (unreachable, another size): the
   * disk goes back to incoming, durably, rather than failing every
   * mount; `activate` with the same epoch finishes it later. */
  rec->state = pin_parent (d, rec) == 0 ? META_ACTIVE : META_INCOMING;
  if (meta_disk_update (d->md, rec) == -1) {
    log_error ("cor: disk %s: finishing an interrupted activation: %m", d->name);
    return -1;
  }
  if (rec->state == META_ACTIVE)
    log_info ("cor: disk %s: finished an interrupted activation (epoch %" PRIu64 ")",
              d->name, rec->epoch);
  d->owner = rec->state;
  return 0;
}

int
cor_changed_extents (struct cor_disk *d, uint32_t since, bool *widened,
                     int (*fn) (void *opaque, uint64_t first_blk, uint64_t nr_blks),
                     void *opaque)
{
  return meta_changed_extents (d->md, since, widened, fn, opaque);
}

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
   * streamer chunk from a slow parent) may go on (inflight_hold_writers). */
  if (inflight_hold_writers (d, "checkpoint", errbuf, len) == -1)
    return 0;
  gen = meta_checkpoint (d->md);
  if (gen == 0) {
    snprintf (errbuf, len, "disk %s: checkpoint: %s", d->name, strerror (errno));
    log_error ("cor: %s", errbuf);
  }
  inflight_gate_release (d);
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

/* Must be called with d->owner_lock held.  May activate go on?  1 if it
 * is a no-op, 0 to go on, -1 with a reason in errbuf. */
static int
activate_check_unlocked (struct cor_disk *d, const struct meta_record *rec, uint64_t epoch,
                         bool force, char *errbuf, size_t len)
{
  int r, err = 0;

  /* The same epoch again finishes an activation that could not pin the
   * parent (below), or that a mount put back to incoming (cor_disk_add:
   * an incoming disk has a non-zero epoch only from there). */
  r = (rec->state == META_ACTIVATING || (rec->state == META_INCOMING && rec->epoch > 0))
    && epoch == rec->epoch ? 0
    : check_epoch_unlocked (d, rec, epoch, META_ACTIVE, "activate", errbuf, len);
  if (r != 0)
    return r;
  if (rec->state != META_INCOMING && rec->state != META_ACTIVATING) {
    snprintf (errbuf, len, "disk %s is %s, not incoming: nothing to activate", d->name,
              meta_state_name (rec->state));
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
    return -1;
  }
  return 0;
}

/* Must be called with d->owner_lock held and every block owned (step 1,
 * inflight_own_all).  Steps 2 to 5 of activation.  0 or -1 with errbuf. */
static int
activate_owned_unlocked (struct cor_disk *d, struct meta_record *rec, uint64_t epoch,
                         char *errbuf, size_t len)
{
  struct meta_record before = *rec;
  char id[META_ID_MAX];
  int err = 0;

  /* 2. Durably: activating, with the epoch.  (Nothing read while incoming
   * was kept, so step 3, punching, has nothing to do.) */
  if (set_state (d, rec, META_ACTIVATING, epoch, errbuf, len) == -1)
    return -1;
  /* 4. Drop the kernel's cached pages: they may predate the switch-over. */
  if (d->e->invalidate_fn)
    d->e->invalidate_fn (d->e->invalidate_opaque, d->index);
  /* The parent is final now: pin its identity, in the same record.  The
   * drain left no request on a connection, and the re-pin asks on one of
   * its own.  Without an identity a later remount would take any image
   * of the same size, and a parent of another size would fail reads
   * past its end: the disk goes back to incoming, durably (a mount must
   * not finish what failed), until `activate` is repeated.  owner_lock
   * is held across this remote I/O: no other record writer may slip in
   * between activating and active. */
  if (remote_repin (d->remote, true, d->parent_size, id, sizeof id, now_ns () + d->hold_ns,
                    &err) == -1) {
    char why[1280];
    snprintf (errbuf, len, "disk %s: activation: cannot pin parent %s (%s); the disk "
              "stays incoming until `activate` is repeated", d->name,
              remote_url (d->remote), cor_repin_why (d, err, why, sizeof why));
    back_to_incoming (d, rec, &before, errbuf, len);
    return -1;
  }
  remote_set_modifying (d->remote, d->mirror);
  snprintf (rec->identity, sizeof rec->identity, "%s", id);
  /* 5. Active, durably; only then writes. */
  if (set_state (d, rec, META_ACTIVE, epoch, errbuf, len) == -1)
    return -1;
  __atomic_store_n (&d->owner, META_ACTIVE, __ATOMIC_SEQ_CST);
  return 0;
}

int
cor_activate (struct cor_disk *d, uint64_t epoch, bool force, char *errbuf, size_t len)
{
  struct meta_record rec;
  struct busy self;
  int r;

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&d->owner_lock);
    meta_disk_record (d->md, &rec);
    r = activate_check_unlocked (d, &rec, epoch, force, errbuf, len);
    if (r != 0)
      return r == 1 ? 0 : -1;
    /* 1. Stop and drain: own every block. */
    if (inflight_own_all (d, &self, "activate", errbuf, len) == -1)
      return -1;
    r = activate_owned_unlocked (d, &rec, epoch, errbuf, len);
    inflight_release (d, &self);
  }
  if (r == -1)
    return -1;
  log_info ("cor: disk %s: activated with epoch %" PRIu64, d->name, epoch);
  cor_emit_event (d, COR_EV_ACTIVATED, epoch, 0, NULL);
  cor_stream_autostart (d, d->start_mode);
  return 0;
}

/* Must be called with d->owner_lock held.  May the hand-off go on?  1 if
 * it is a no-op, 0 to go on, -1 with a reason in errbuf. */
static int
handoff_check_unlocked (struct cor_disk *d, const struct meta_record *rec, uint64_t epoch,
                        char *errbuf, size_t len)
{
  int r = check_epoch_unlocked (d, rec, epoch, META_HANDED_OFF, "handoff", errbuf, len);

  if (r != 0)
    return r;
  if (rec->state != META_ACTIVE) {
    snprintf (errbuf, len, "disk %s is %s: only an active disk can be handed off",
              d->name, meta_state_name (rec->state));
    return -1;
  }
  /* A merge is writing the parent (or stopped before synced: the parent
   * is partly written and its identity check off).  Handing off now
   * would let it go on writing, then re-pin, under the new owner.  The
   * merge sets this mark under owner_lock, and refuses to start on a
   * disk that is no longer active, so the two cannot cross. */
  if (rec->merging) {
    snprintf (errbuf, len, "disk %s: handoff refused: a merge into the parent %s is "
              "running or was stopped before it synced (the parent is partly written); "
              "let `corfs merge` reach synced first", d->name, remote_url (d->remote));
    return -1;
  }
  return 0;
}

/* Must be called with d->owner_lock held, new writes refused.  Flush, and
 * record the hand-off (a mirror's with the parent's identity as it leaves
 * it).  0 or -1 with errbuf. */
static int
handoff_record_unlocked (struct cor_disk *d, struct meta_record *rec, uint64_t epoch,
                         char *errbuf, size_t len)
{
  int err;

  if (cor_flush (d, &err) == -1) {
    snprintf (errbuf, len, "disk %s: flush before hand-off failed: %s", d->name, strerror (err));
    return -1;
  }
  if (d->mirror) {
    /* The mirror's writes moved the parent's identity since the mount
     * (which cleared the one recorded): record it as the hand-off leaves
     * it, for the next mount of the handed-off disk to check. */
    char id[META_ID_MAX] = "";
    int ierr = 0;
    if (remote_repin (d->remote, false, d->parent_size, id, sizeof id, now_ns () + d->hold_ns,
                      &ierr) == -1)
      log_warn ("cor: disk %s: mirror: the identity of parent %s could not be recorded at "
                "hand-off (%s): a remount of this disk needs --repin", d->name,
                remote_url (d->remote), strerror (ierr));
    snprintf (rec->identity, sizeof rec->identity, "%s", id);
  }
  return set_state (d, rec, META_HANDED_OFF, epoch, errbuf, len);
}

int
cor_handoff (struct cor_disk *d, uint64_t epoch, char *errbuf, size_t len)
{
  struct meta_record rec;
  struct busy self;
  int r;

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&d->owner_lock);
    meta_disk_record (d->md, &rec);
    r = handoff_check_unlocked (d, &rec, epoch, errbuf, len);
    if (r != 0)
      return r == 1 ? 0 : -1;
    /* Wait for the writes in flight, then refuse new ones, flush.  The
     * state changes only once inflight_own_all succeeded: its claim holds new
     * writes off meanwhile (they wait within their hold, then re-check
     * the state: modify), so a hand-off that fails here never made the
     * guest see EROFS. */
    if (inflight_own_all (d, &self, "handoff", errbuf, len) == -1)
      return -1;
    __atomic_store_n (&d->owner, META_HANDED_OFF, __ATOMIC_SEQ_CST);
    inflight_release (d, &self);
    if (handoff_record_unlocked (d, &rec, epoch, errbuf, len) == -1) {
      __atomic_store_n (&d->owner, META_ACTIVE, __ATOMIC_SEQ_CST);
      return -1;
    }
  }
  log_info ("cor: disk %s: handed off with epoch %" PRIu64 "; read-only from now on",
            d->name, epoch);
  cor_emit_event (d, COR_EV_HANDED_OFF, epoch, 0, NULL);
  return 0;
}

int
cor_reclaim (struct cor_disk *d, uint64_t epoch, char *errbuf, size_t len)
{
  struct meta_record rec;
  int r, err = 0;

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&d->owner_lock);
    meta_disk_record (d->md, &rec);
    r = check_epoch_unlocked (d, &rec, epoch, META_ACTIVE, "reclaim", errbuf, len);
    if (r != 0)
      return r == 1 ? 0 : -1;
    if (rec.state != META_HANDED_OFF) {
      snprintf (errbuf, len, "disk %s is %s, not handed off: nothing to reclaim", d->name,
                meta_state_name (rec.state));
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
                cor_repin_why (d, err, why, sizeof why));
      return -1;
    }
    if (set_state (d, &rec, META_ACTIVE, epoch, errbuf, len) == -1)
      return -1;
    if (d->mirror)
      remote_set_modifying (d->remote, true);
    __atomic_store_n (&d->owner, META_ACTIVE, __ATOMIC_SEQ_CST);
  }
  log_info ("cor: disk %s: reclaimed with epoch %" PRIu64 "; writable again", d->name, epoch);
  cor_emit_event (d, COR_EV_RECLAIMED, epoch, 0, NULL);
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

/* A mirror's own writes move its parent's identity, so the identity
 * pinned at mount no longer describes the parent: at a clean stop (no
 * guest request left), record it as it is now for the next mount to
 * verify (daemon.c, verify_mirror_parent), or "" when it cannot be asked
 * within a few seconds (that mount then cannot verify). */
#define SEAL_DEADLINE_NS (5 * NS_PER_SEC)
void
cor_seal_mirror (struct cor_disk *d)
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
    if (remote_repin (d->remote, false, d->parent_size, id, sizeof id, deadline, &err) == -1) {
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
