/* corfs: the merge job: write the overlay back into an owned parent.
 *
 * Merge (docs/design.md rules 9 and 11), in passes over the dirty and suspect
 * maps:
 *   1. durably record "parent being modified" (record.merging) before the
 *      first write, and let the remote accept identity changes caused by
 *      our own writes;
 *   2. for each run of blocks needing it: cor_writeback (own the blocks,
 *      copy the present ones, flush the parent, clear the bits; a guest
 *      write waits and re-dirties them after), rate-limited;
 *   3. a pass that finds nothing to copy is the `synced` instant: commit
 *      the cleared bits (cor_flush), re-pin the parent's identity and
 *      clear record.merging in one record update, emit `synced`, stop.
 * A crash anywhere leaves bits dirty (or merging set), so running merge
 * again completes it.  A failed chunk keeps its bits and is retried after
 * a backoff; the job never gives up on its own.
 *
 * Notes on the thread model: merge_control runs on ctl's thread; the
 * hooks of merge_kind on the job's thread (job.c).  The record updates go
 * through cor_update_record, which takes d->owner_lock (then meta's
 * mutex); cor_writeback takes d->lock to own its blocks.  Neither is
 * called with mg->lock held, and the record callbacks below take no lock
 * of ours, so mg->lock (taken only inside job.c's helpers, and around
 * status_total's lock-free bitmap count) and the engine's locks are never
 * held together.  struct merge_job is the job's thread's, except
 * repin_pending (mg->lock), read by the next merge_control once the
 * thread is joined.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"
#include "cor/cor.h"
#include "merge/merge-internal.h"
#include "meta/meta.h"
#include "remote/remote.h"

/* Blocks handed to cor_writeback at a time: it copies them 1 MiB per
 * request, four requests at once, then flushes the parent once.  The
 * chunk is also what a guest write into it may wait for. */
#define CHUNK (4 << 20)
/* How long one chunk may retry inside the remote layer before the job
 * records the error (status, merge-error event) and backs off: short, so
 * that a failing parent shows at once; the job itself never gives up. */
#define CHUNK_DEADLINE_NS (2 * NS_PER_SEC)
/* Connecting and re-pinning may take longer. */
#define SETUP_DEADLINE_NS (30 * NS_PER_SEC)
#define BACKOFF_MIN_NS (200 * 1000000ULL)
#define BACKOFF_MAX_NS (30 * NS_PER_SEC)

struct merge_job {
  uint64_t nr, chunk;           /* the disk's blocks; blocks per cor_writeback */
  uint64_t blk;                 /* where the pass goes on */
  uint64_t copied;              /* bytes copied this pass */
  uint64_t backoff;             /* before retrying a failed chunk or synced */
  bool in_pass;                 /* false: the next step starts a pass */
  bool wrote;                   /* the thread may have written the parent */
  bool repin_pending;           /* mg->lock: ended unsynced, its re-pin failed */
};

uint64_t
merge_remaining_bytes (struct cor_disk *d)
{
  struct meta_disk *md = cor_disk_meta (d);
  return meta_count_union (md, META_DIRTY, META_SUSPECT) << cor_disk_block_shift (d);
}

/* ---- record updates, through cor_update_record (serialised with the
 * owner state transitions) ---- */

/* Merge writes the parent, and re-pins it, only while the disk is
 * active: checked here, under the owner lock that hand-off takes (which
 * refuses while record.merging is set), never from an earlier look. */
static int
require_active (const struct meta_record *rec, char *errbuf, size_t len)
{
  if (rec->state == META_ACTIVE)
    return 0;
  snprintf (errbuf, len, "the disk is %s, no longer active", meta_state_name (rec->state));
  return -1;
}

/* A grown disk has blocks past its parent's end, which a merge cannot
 * write (it never grows the parent).  ctl refuses it from a look at the
 * size, but a grow publishes its size only at its end, under the owner
 * lock: checked again here, under that lock, from the record (arg: the
 * disk, for its name).  The message is ctl's. */
static int
refuse_grown (const struct meta_record *rec, void *arg, char *errbuf, size_t len)
{
  if (rec->disk_size <= rec->size)
    return 0;
  snprintf (errbuf, len, "disk %s: merge refused: the disk was grown to %" PRIu64
            " bytes, past its parent's %" PRIu64 "; flatten it (--to a new image) instead",
            cor_disk_name (arg), rec->disk_size, rec->size);
  return -1;
}

static int
set_merging (struct meta_record *rec, void *arg, char *errbuf, size_t len)
{
  if (require_active (rec, errbuf, len) == -1 || refuse_grown (rec, arg, errbuf, len) == -1)
    return -1;
  if (rec->merging)
    return 1;
  rec->merging = true;
  return 0;
}

static int
set_synced (struct meta_record *rec, void *arg, char *errbuf, size_t len)
{
  if (require_active (rec, errbuf, len) == -1)
    return -1;
  snprintf (rec->identity, sizeof rec->identity, "%s", (const char *) arg);
  rec->merging = false;
  return 0;
}

static int
set_parent_owned (struct meta_record *rec, void *arg, char *errbuf, size_t len)
{
  if (refuse_grown (rec, arg, errbuf, len) == -1)
    return -1;
  if (rec->parent_owned)
    return 1;
  rec->parent_owned = true;
  return 0;
}

/* ---- the job ---- */

/* The synced instant: make the cleared bits durable, re-pin the parent and
 * clear the merging mark.  0 or -1 (the job retries the pass). */
static int
synced (struct job *j)
{
  struct cor_disk *d = j->d;
  char id[META_ID_MAX], msg[256];
  int err;

  if (cor_flush (d, &err) == -1) {
    job_set_error (j, "commit at synced: %s", strerror (err));
    return -1;
  }
  /* Never accepting a parent found changed: that one is not what the
   * merge wrote into. */
  if (remote_repin (cor_disk_remote (d), false, cor_disk_size (d), id, sizeof id,
                    now_ns () + SETUP_DEADLINE_NS, &err) == -1) {
    char why[1280];
    remote_status (cor_disk_remote (d), why, sizeof why);
    job_set_error (j, "re-pinning the parent %s: %s", remote_url (cor_disk_remote (d)),
                   *why ? why : strerror (err));
    return -1;
  }
  if (cor_update_record (d, set_synced, id, msg, sizeof msg) == -1) {
    job_set_error (j, "recording synced: %s", msg);
    return -1;
  }
  /* A mirror writes its parent itself: it keeps accepting its writes. */
  remote_set_modifying (cor_disk_remote (d), cor_disk_mirror (d));
  return 0;
}

/* A disk that is no longer active (handed off, or aborted) is not ours
 * to write back: the job fails instead of retrying.  True if it did. */
static bool
stop_if_not_active (struct job *j)
{
  struct meta_record rec;

  meta_disk_record (cor_disk_meta (j->d), &rec);
  if (rec.state == META_ACTIVE)
    return false;
  job_set_error (j, "stopped: the disk is %s, no longer active; the parent is not written",
                 meta_state_name (rec.state));
  log_error ("merge: disk %s: %s", cor_disk_name (j->d), j->last_error);
  cor_emit (j->d, "merge-error", 0, 0, j->last_error);
  job_finish (j, J_FAILED);
  return true;
}

/* 1. "Parent being modified", durably, before the first write. */
static bool
merge_start (struct job *j)
{
  struct merge_job *m = j->priv;
  struct cor_disk *d = j->d;
  char msg[256];

  m->nr = cor_disk_nr_blocks (d);
  m->chunk = CHUNK >> cor_disk_block_shift (d);
  if (m->chunk == 0)
    m->chunk = 1;
  m->backoff = BACKOFF_MIN_NS;
  /* merge_control verified the parent; a reconnect since then found it
   * changed: not recorded as merging (a mount would then re-pin it). */
  if (remote_status (cor_disk_remote (d), NULL, 0) == REMOTE_CHANGED) {
    job_set_error (j, "parent %s changed before the first write",
                   remote_url (cor_disk_remote (d)));
    job_finish (j, J_FAILED);
    return false;
  }
  if (cor_update_record (d, set_merging, d, msg, sizeof msg) == -1) {
    job_set_error (j, "recording the merge: %s", msg);
    job_finish (j, J_FAILED);
    return false;
  }
  remote_set_modifying (cor_disk_remote (d), true);
  m->wrote = true;
  log_info ("merge: disk %s: merging %" PRIu64 " bytes into %s", cor_disk_name (d),
            merge_remaining_bytes (d), remote_url (cor_disk_remote (d)));
  return true;
}

static void
begin_pass (struct job *j, struct merge_job *m)
{
  pthread_mutex_lock (&j->mg->lock);
  j->passes++;
  j->total = j->done + merge_remaining_bytes (j->d);
  pthread_mutex_unlock (&j->mg->lock);
  m->blk = 0;
  m->copied = 0;
  m->in_pass = true;
}

/* cor_writeback failed at m->blk: record it, back off, and try the same
 * blocks again; or stop if the disk is no longer ours. */
static enum job_step
chunk_failed (struct job *j, struct merge_job *m, int err)
{
  struct cor_disk *d = j->d;

  if (stop_if_not_active (j))
    return JOB_END;
  if (err == EOPNOTSUPP)
    job_set_error (j, "offset %" PRIu64 ": the parent %s offers no flush: what was "
                   "written to it cannot be made durable, so nothing is marked merged",
                   m->blk << cor_disk_block_shift (d), remote_url (cor_disk_remote (d)));
  else
    job_set_error (j, "offset %" PRIu64 ": %s", m->blk << cor_disk_block_shift (d),
                   strerror (err));
  cor_emit (d, "merge-error", 0, 0, j->last_error);
  log_warn ("merge: disk %s: %s; retrying in %.1f s", cor_disk_name (d),
            j->last_error, m->backoff / 1e9);
  job_sleep (j, m->backoff);
  m->backoff = m->backoff * 2 > BACKOFF_MAX_NS ? BACKOFF_MAX_NS : m->backoff * 2;
  return JOB_MORE;
}

/* 2. Copy the run [m->blk, end), within the rate. */
static enum job_step
copy_run (struct job *j, struct merge_job *m, uint64_t end)
{
  int64_t r;
  int err;

  if (!job_keep_going (j))
    return JOB_END;
  job_throttle (j);
  r = cor_writeback (j->d, m->blk, end, now_ns () + CHUNK_DEADLINE_NS, &err);
  if (r == -1)
    return chunk_failed (j, m, err);
  m->backoff = BACKOFF_MIN_NS;
  m->copied += r;
  job_charge (j, r);
  m->blk = end;
  return JOB_MORE;
}

/* A pass found no more runs past m->blk: 3. the synced instant if none is
 * left at all, otherwise another pass (the guest wrote behind us). */
static enum job_step
end_pass (struct job *j, struct merge_job *m)
{
  struct cor_disk *d = j->d;
  uint64_t end;

  m->in_pass = false;
  if (cor_next_unsettled_run (d, 0, 1, &end) >= m->nr) {
    if (synced (j) == 0) {
      log_info ("merge: disk %s: synced: the parent equals the disk (%" PRIu64
                " bytes merged in %" PRIu64 " passes)", cor_disk_name (d), j->done,
                j->passes);
      cor_emit (d, "synced", j->done, j->done, NULL);
      job_finish (j, J_SYNCED);
      return JOB_END;
    }
    if (stop_if_not_active (j))
      return JOB_END;
    job_sleep (j, m->backoff);
    return JOB_MORE;
  }
  pthread_mutex_lock (&j->mg->lock);
  j->following = m->copied > 0 && j->passes > 1;
  pthread_mutex_unlock (&j->mg->lock);
  return JOB_MORE;
}

static enum job_step
merge_step (struct job *j)
{
  struct merge_job *m = j->priv;
  uint64_t end;

  if (!m->in_pass)
    begin_pass (j, m);
  m->blk = cor_next_unsettled_run (j->d, m->blk, m->chunk, &end);
  if (m->blk >= m->nr)
    return end_pass (j, m);
  return copy_run (j, m, end);
}

/* A merge that ended before synced (cancelled, or failed) has moved the
 * parent's identity with its own writes (file:// includes the mtime, NBD
 * hashes sampled blocks): the pin is still the image before the merge,
 * and a merge started again would find the parent "changed".  Its
 * writes are over (cor_writeback returned), so pin what the parent is
 * now, on a fresh connection, never adopting a parent already found
 * changed (a swap noticed meanwhile stays refused).  Done only while the
 * disk is still active (hand-off and abort pin the parent themselves),
 * and not at shutdown (record.merging makes the next mount accept the
 * moved identity).  Where the re-pin fails (parent unreachable), the
 * identity check keeps accepting our own writes and the next merge start
 * re-pins first (repin_pending). */
static void
repin_after_merge (struct job *j)
{
  struct merge_job *m = j->priv;
  struct cor_disk *d = j->d;
  struct meta_record rec;
  char id[META_ID_MAX];
  bool closing;
  int err;

  pthread_mutex_lock (&j->mg->lock);
  closing = j->mg->closing || j->state == J_SYNCED;
  pthread_mutex_unlock (&j->mg->lock);
  meta_disk_record (cor_disk_meta (d), &rec);
  if (closing || rec.state != META_ACTIVE)
    return;
  if (remote_repin (cor_disk_remote (d), false, cor_disk_size (d), id, sizeof id,
                    now_ns () + SETUP_DEADLINE_NS, &err) == -1) {
    char why[1280];
    remote_status (cor_disk_remote (d), why, sizeof why);
    log_warn ("merge: disk %s: the merge stopped before synced; re-pinning the parent %s "
              "failed (%s): it is re-pinned when the merge is started again",
              cor_disk_name (d), remote_url (cor_disk_remote (d)), *why ? why : strerror (err));
    pthread_mutex_lock (&j->mg->lock);
    m->repin_pending = true;
    pthread_mutex_unlock (&j->mg->lock);
    return;
  }
  /* A mirror writes its parent itself: it keeps accepting its writes. */
  remote_set_modifying (cor_disk_remote (d), rec.mirror);
}

static void
merge_finish (struct job *j)
{
  struct merge_job *m = j->priv;

  if (m->wrote)
    repin_after_merge (j);
}

static int
merge_prepare (struct job *j, const void *arg, char *errbuf, size_t len)
{
  if (!(j->priv = calloc (1, sizeof (struct merge_job)))) {
    snprintf (errbuf, len, "out of memory");
    return -1;
  }
  return 0;
}

static void
merge_init_progress (struct job *j)
{
  j->total = merge_remaining_bytes (j->d);
}

static uint64_t
merge_status_total (struct job *j)
{
  return j->done + merge_remaining_bytes (j->d);
}

static void
merge_free_priv (struct job *j)
{
  free (j->priv);
}

const struct job_kind merge_kind = {
  .name = "merge",
  .prepare = merge_prepare,
  .init_progress = merge_init_progress,
  .start = merge_start,
  .step = merge_step,
  .finish = merge_finish,
  .status_total = merge_status_total,
  .free = merge_free_priv,
};

/* ---- merge_control ---- */

/* Before a merge starts again on d: wait for the previous merge's thread
 * (a cancel returns before it stops writing and re-pins the parent) and
 * free it.  True if that merge could not re-pin the parent. */
static bool
settle_old_merge (struct merge *mg, struct cor_disk *d)
{
  struct job *old = job_take_finished (mg, d, &merge_kind);
  bool pending;

  if (!old)
    return false;
  pending = ((struct merge_job *) old->priv)->repin_pending;
  job_free (old);
  return pending;
}

/* May d be merged into its parent?  Records nothing: a refused merge
 * leaves the record as it was (record_parent_owned records the
 * declaration once every check has passed).  0 or -1 (errbuf). */
static int
check_mergeable (struct cor_disk *d, const struct meta_record *rec, bool parent_owned,
                 char *errbuf, size_t len)
{
  if (rec->state == META_STANDALONE) {
    snprintf (errbuf, len, "disk %s is standalone (flattened): it has no parent to merge into",
              cor_disk_name (d));
    return -1;
  }
  if (rec->state != META_ACTIVE) {
    /* Incoming: the source still writes the parent, and a merge would
     * turn the identity check off under it; handed off: the disk is no
     * longer ours to write anywhere. */
    snprintf (errbuf, len, "disk %s is %s: only an active disk can be merged into its "
              "parent", cor_disk_name (d), meta_state_name (rec->state));
    return -1;
  }
  if (rec->format[0] && strcmp (rec->format, "raw") != 0) {
    /* A qcow2 parent's clusters are not at the disk's offsets. */
    snprintf (errbuf, len, "disk %s: merge refused: its parent %s is a %s image, and corfs "
              "writes only raw parents (flatten, or flatten --to FILE, makes a raw copy)",
              cor_disk_name (d), rec->url, rec->format);
    return -1;
  }
  if (remote_nr_sources (cor_disk_remote (d)) > 0 || rec->sources[0] ||
      remote_identity_is_set (rec->identity)) {
    /* A set's sources are copies that only serve reads, and a parent-owned
     * disk is refused several sources at every later mount. */
    snprintf (errbuf, len, "disk %s: merge refused: it reads a set of sources, which corfs "
              "never writes (flatten, or flatten --to FILE, instead)", cor_disk_name (d));
    return -1;
  }
  if (!rec->parent_owned && !parent_owned) {
    snprintf (errbuf, len, "disk %s: merge writes into the parent %s; declare that this "
              "disk owns it with --parent-owned (never for a golden image that other "
              "overlays read)", cor_disk_name (d), rec->url);
    return -1;
  }
  return refuse_grown (rec, d, errbuf, len);
}

/* The --parent-owned declaration, recorded only after every check (a
 * refused merge must not leave the disk parent-owned: that refuses some
 * later mounts).  0 or -1. */
static int
record_parent_owned (struct cor_disk *d, const struct meta_record *rec, char *errbuf,
                     size_t len)
{
  if (rec->parent_owned)
    return 0;
  return cor_update_record (d, set_parent_owned, d, errbuf, len) == -1 ? -1 : 0;
}

/* The parent must be writable, and still the pinned image before the
 * merge turns the identity check off for its own writes
 * (remote_set_modifying): a swap not yet noticed would be adopted by the
 * first reconnect, and written into.  After a merge that stopped before
 * synced and could not re-pin, the parent moved by our own writes is
 * pinned now instead (never adopting one found changed).  0 or -1. */
static int
check_parent (struct merge *mg, struct cor_disk *d, const struct meta_record *rec,
              char *errbuf, size_t len)
{
  struct remote *r = cor_disk_remote (d);
  char id[META_ID_MAX], why[1280];
  int err;

  if (remote_make_writable (r, now_ns () + SETUP_DEADLINE_NS, &err) == -1) {
    remote_status (r, why, sizeof why);
    snprintf (errbuf, len, "disk %s: parent %s cannot be written: %s", cor_disk_name (d),
              rec->url, *why ? why : strerror (err));
    return -1;
  }
  if (settle_old_merge (mg, d)
      ? remote_repin (r, false, cor_disk_size (d), id, sizeof id,
                      now_ns () + SETUP_DEADLINE_NS, &err) == -1
      : remote_verify (r, NULL, now_ns () + SETUP_DEADLINE_NS, &err) == -1) {
    remote_status (r, why, sizeof why);
    snprintf (errbuf, len, "disk %s: merge refused: parent %s %s: %s", cor_disk_name (d),
              rec->url, err == ESTALE ? "is not the pinned image" : "cannot be checked",
              *why ? why : strerror (err));
    return -1;
  }
  return 0;
}

int
merge_control (struct merge *mg, struct cor_disk *d, const char *action,
               bool parent_owned, uint64_t rate, char *errbuf, size_t len)
{
  struct meta_record rec;

  if (strcmp (action, "start") != 0)
    return job_control (mg, d, &merge_kind, action, rate, errbuf, len);
  /* start, or steer the running merge's rate */
  if (job_resume (mg, d, &merge_kind, rate))
    return 0;
  meta_disk_record (cor_disk_meta (d), &rec);
  if (check_mergeable (d, &rec, parent_owned, errbuf, len) == -1 ||
      check_parent (mg, d, &rec, errbuf, len) == -1 ||
      record_parent_owned (d, &rec, errbuf, len) == -1)
    return -1;
  return job_start (mg, d, &merge_kind, rate, NULL, errbuf, len);
}
