/* corfs: the flatten job in place: start the streamer, wait until every
 * block is present, then record the disk standalone and release the
 * parent for good.  merge_flatten also starts the copy to a file (--to
 * FILE, copy.c), which leaves the parent attached.
 *
 * Notes on the thread model: merge_flatten runs on one of ctl's job
 * threads (opening a copy's target may block); the hooks of flatten_kind
 * on the job's own thread (job.c).  cor_stream_start, cor_flush and
 * cor_update_record (d->owner_lock, then meta's mutex) are called with no
 * lock of ours held; mg->lock is taken only inside job.c's helpers.
 */
#include <stdio.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"
#include "cor/cor.h"
#include "merge/merge-internal.h"
#include "meta/meta.h"
#include "remote/remote.h"

/* How often the job looks whether the streamer has filled the disk. */
#define POLL_NS (200 * 1000000ULL)

/* Under cor_update_record's owner lock: only an active disk becomes
 * standalone. */
static int
set_standalone (struct meta_record *rec, void *arg, char *errbuf, size_t len)
{
  if (rec->state != META_ACTIVE) {
    snprintf (errbuf, len, "the disk is no longer active");
    return -1;
  }
  rec->complete = true;
  rec->state = META_STANDALONE;
  return 0;
}

static void
flatten_init_progress (struct job *j)
{
  j->total = cor_disk_size (j->d);
}

static bool
flatten_start (struct job *j)
{
  int err;

  if (cor_stream_start (j->d, &err) == -1) {
    job_set_error (j, "starting the stream: %s", strerror (err));
    job_finish (j, J_FAILED);
    return false;
  }
  return true;
}

/* Every block is present: make it durable, and detach the parent. */
static void
detach_parent (struct job *j)
{
  struct cor_disk *d = j->d;
  char msg[256];
  int err;

  if (cor_flush (d, &err) == -1) {
    job_set_error (j, "commit: %s", strerror (err));
    job_finish (j, J_FAILED);
    return;
  }
  if (cor_update_record (d, set_standalone, NULL, msg, sizeof msg) == -1) {
    job_set_error (j, "recording standalone: %s", msg);
    job_finish (j, J_FAILED);
    return;
  }
  remote_release (cor_disk_remote (d));
  job_set_done (j, j->total);
  log_info ("merge: disk %s: flattened: standalone, the parent is no longer used",
            cor_disk_name (d));
  cor_emit (d, "flattened", j->total, j->total, NULL);
  job_finish (j, J_DONE);
}

/* One look at the streamer's progress. */
static enum job_step
flatten_step (struct job *j)
{
  struct cor_disk *d = j->d;
  struct meta_disk *md = cor_disk_meta (d);

  if (meta_count (md, META_PRESENT) >= cor_disk_nr_blocks (d)) {
    detach_parent (j);
    return JOB_END;
  }
  if (!job_keep_going (j))
    return JOB_END;
  job_set_done (j, meta_count (md, META_PRESENT) << cor_disk_block_shift (d));
  job_sleep (j, POLL_NS);
  return JOB_MORE;
}

const struct job_kind flatten_kind = {
  .name = "flatten",
  .init_progress = flatten_init_progress,
  .start = flatten_start,
  .step = flatten_step,
};

int
merge_flatten (struct merge *mg, struct cor_disk *d, const char *to,
               char *errbuf, size_t len)
{
  struct meta_record rec;

  meta_disk_record (cor_disk_meta (d), &rec);
  if (!to && rec.state == META_STANDALONE) {
    snprintf (errbuf, len, "disk %s is already standalone", cor_disk_name (d));
    return -1;
  }
  if (!to && (rec.state != META_ACTIVE || rec.mirror)) {
    snprintf (errbuf, len, "disk %s: flatten needs an active writeback disk (it is %s%s)",
              cor_disk_name (d), meta_state_name (rec.state),
              rec.mirror ? ", in mirror mode: use pivot" : "");
    return -1;
  }
  return job_start (mg, d, to ? &copy_kind : &flatten_kind, 0, to, errbuf, len);
}
