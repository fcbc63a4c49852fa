/* corfs: the copy job (flatten --to FILE): copy the disk's current
 * contents to a standalone file, leaving the parent attached.
 *
 * Take a checkpoint, read the disk through the engine in 1 MiB pieces
 * and write non-zero pieces to FILE.partial (sparse, mode 0600, created
 * with O_EXCL|O_NOFOLLOW in FILE's directory, opened once without
 * following symlinks: copy-target.c), then fsync it, rename it over FILE
 * and fsync the directory: FILE is replaced only by a whole copy, and a
 * symlink at either name is never followed.  The partial file is
 * recorded in STATE/NAME.copy (its device, inode, the bytes made durable
 * so far and the checkpoint's generation); a copy to the same FILE
 * started again (after a failure or a restart) reopens that file only if
 * it is still the recorded one, copies again what the disk's changed
 * maps say was written since (or starts over when they cannot say), and
 * continues.
 *
 * Notes on the thread model: copy_open (copy-target.c) runs on the
 * starter's thread before the job's thread exists; every other hook here
 * on the job's thread (job.c), which alone then uses struct copy_job.
 * cor_read and cor_checkpoint take the engine's locks (d->lock,
 * d->owner_lock, meta's mutex) and cor_changed_extents calls add_extent
 * under meta's mutex (no I/O there); none with a lock of ours held.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "cor/cor.h"
#include "merge/merge-internal.h"

/* Copy reads and writes this much at a time; an all-zero piece is left a
 * hole in the file. */
#define COPY_PIECE (1 << 20)
/* A copy makes its progress durable (fdatasync, then the record) this
 * often, so that a copy started again continues from there. */
#define COPY_CHECKPOINT (256 << 20)

/* Make the first done bytes of the partial file durable and record them. */
static int
copy_checkpoint (struct job *j, uint64_t done)
{
  struct copy_job *c = j->priv;
  struct stat st;

  if (fdatasync (c->fd) == -1 || fstat (c->fd, &st) == -1)
    return -1;
  copy_record (j, &st, done);
  return 0;
}

/* A zero piece of a continued copy may hold data from the earlier run. */
static int
copy_zero (int fd, uint64_t off, size_t n)
{
  static const char zeros[COPY_PIECE];

  if (fallocate (fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, n) == 0)
    return 0;
  return errno == EOPNOTSUPP ? full_pwrite (fd, zeros, n, off) : -1;
}

/* Copy n bytes (at most COPY_PIECE) at off from the disk to the partial
 * file; a zero piece is left a hole, or punched where the file may hold
 * older data (punch).  0 or -1 (job_set_error). */
static int
copy_piece (struct job *j, uint64_t off, size_t n, bool punch)
{
  struct copy_job *c = j->priv;
  int err = 0;

  if (cor_read (j->d, c->buf, n, off, &err) != (ssize_t) n) {
    job_set_error (j, "reading the disk at offset %" PRIu64 ": %s", off,
                   strerror (err ? err : EIO));
    return -1;
  }
  if (!is_zero (c->buf, n) ? full_pwrite (c->fd, c->buf, n, off) == -1
      : punch && copy_zero (c->fd, off, n) == -1) {
    job_set_error (j, "%s: write at offset %" PRIu64 ": %s", c->partial, off,
                   strerror (errno));
    return -1;
  }
  return 0;
}

/* Changed extents, in blocks, collected (cor_changed_extents calls back
 * under the index's lock: no I/O there). */
struct extents {
  uint64_t (*v)[2];
  size_t n, cap;
};

static int
add_extent (void *opaque, uint64_t first, uint64_t nr)
{
  struct extents *x = opaque;

  if (x->n == x->cap) {
    size_t cap = x->cap ? 2 * x->cap : 64;
    void *v = realloc (x->v, cap * sizeof *x->v);
    if (!v)
      return -1;
    x->v = v;
    x->cap = cap;
  }
  x->v[x->n][0] = first;
  x->v[x->n][1] = nr;
  x->n++;
  return 0;
}

/* A copy started again continues at c->start, but the disk may have been
 * written in [0, c->start) since those bytes were copied: copy again what
 * changed since the recorded generation c->gen.  1 if that cannot be
 * known (no generation recorded, or the index no longer has it: the copy
 * starts over), 0 when done, -1 on failure (job_set_error). */
static int
copy_changed (struct job *j)
{
  struct copy_job *c = j->priv;
  struct cor_disk *d = j->d;
  unsigned shift = cor_disk_block_shift (d);
  struct extents x = { NULL, 0, 0 };
  bool widened;
  int r = 0;

  if (c->gen == 0 || cor_changed_extents (d, c->gen, &widened, add_extent, &x) == -1) {
    free (x.v);
    return 1;
  }
  for (size_t i = 0; i < x.n && r == 0; i++) {
    uint64_t off = x.v[i][0] << shift, end = (x.v[i][0] + x.v[i][1]) << shift;
    if (end > c->start)
      end = c->start;
    for (; off < end && r == 0; off += COPY_PIECE) {
      if (!job_keep_going (j))
        r = -1;
      else
        r = copy_piece (j, off, end - off < COPY_PIECE ? end - off : COPY_PIECE, true);
    }
  }
  if (r == 0 && x.n > 0)
    log_info ("merge: disk %s: the copy to %s copied again %zu extents written since its "
              "last run", cor_disk_name (d), c->to, x.n);
  free (x.v);
  return r;
}

/* Before the first byte is read: a checkpoint, so that the changed maps
 * say from here on what a copy started again must read afresh; then, for
 * a continued copy, what changed since its last run.  Without the
 * checkpoint (the index's filesystem is full, or the disk stayed busy
 * past the hold) the copy still runs, only it cannot be continued: a
 * copy started again starts over.  0 or -1. */
static int
copy_prepare (struct job *j)
{
  struct copy_job *c = j->priv;
  char msg[512];
  uint32_t gen = cor_checkpoint (j->d, msg, sizeof msg);
  int r = 0;

  if (gen == 0)
    log_warn ("merge: disk %s: the copy to %s goes on without a checkpoint (%s): if it "
              "is interrupted, the next copy starts over", cor_disk_name (j->d), c->to, msg);
  if (c->start > 0 && (r = copy_changed (j)) == 1) {
    log_info ("merge: disk %s: the copy to %s starts over: what changed since its last "
              "run is not known", cor_disk_name (j->d), c->to);
    c->start = 0;
    /* The record must never claim more than the file holds: it goes
     * first (rewritten at the next checkpoint). */
    if ((unlink (c->record) == -1 && errno != ENOENT) || copy_truncate (j, 0) == -1) {
      job_set_error (j, "%s: %s", c->partial, strerror (errno));
      return -1;
    }
  }
  if (r == -1)
    return -1;
  /* [0, start) is current as of gen now, once durable. */
  c->gen = gen;
  if (c->start > 0 && copy_checkpoint (j, c->start) == -1) {
    job_set_error (j, "%s: %s", c->partial, strerror (errno));
    return -1;
  }
  return 0;
}

/* The copy failed (last_error says why). */
static void
copy_failed (struct job *j)
{
  struct copy_job *c = j->priv;

  log_error ("merge: disk %s: copy to %s failed: %s", cor_disk_name (j->d), c->to,
             j->last_error);
  cor_emit (j->d, "copy-failed", 0, 0, j->last_error);
  job_finish (j, J_FAILED);
}

static void
copy_init_progress (struct job *j)
{
  struct copy_job *c = j->priv;

  j->total = cor_disk_size (j->d);
  j->done = c->start;
}

static bool
copy_start (struct job *j)
{
  struct copy_job *c = j->priv;

  c->off = c->checkpoint = 0;
  if (!(c->buf = malloc (COPY_PIECE))) {
    job_set_error (j, "out of memory");
    copy_failed (j);
    return false;
  }
  c->off = c->checkpoint = c->start;
  if (copy_prepare (j) == -1) {
    if (job_keep_going (j))
      copy_failed (j);
    /* else the daemon is stopping */
    return false;
  }
  c->off = c->checkpoint = c->start;
  if (c->start)
    log_info ("merge: disk %s: continuing the copy to %s at offset %" PRIu64,
              cor_disk_name (j->d), c->to, c->start);
  return true;
}

/* Whole and durable: only now may it replace FILE (without the cookie,
 * which only a partial file needs).  size is the disk's size the last
 * piece was copied up to: a disk grown during the copy (cor_disk_grow)
 * reads zeros past its old end, which copy_piece leaves holes, so the
 * file is sized here, before the fsync that makes it whole. */
static void
copy_complete (struct job *j, uint64_t size)
{
  struct copy_job *c = j->priv;

  if (c->cookie[0] == 'x')
    fremovexattr (c->fd, COOKIE_XATTR);
  if (ftruncate (c->fd, size) == -1 || fsync (c->fd) == -1) {
    job_set_error (j, "%s: %s", c->partial, strerror (errno));
    copy_failed (j);            /* copy_free closes c->fd */
    return;
  }
  if (close (c->fd) == -1) {
    c->fd = -1;
    job_set_error (j, "%s: %s", c->partial, strerror (errno));
    copy_failed (j);
    return;
  }
  c->fd = -1;
  if (renameat (c->dirfd, c->pbase, c->dirfd, c->base) == -1 || fsync (c->dirfd) == -1) {
    job_set_error (j, "renaming %s to %s: %s", c->partial, c->to, strerror (errno));
    copy_failed (j);
    return;
  }
  unlink (c->record);
  log_info ("merge: disk %s: copied to %s", cor_disk_name (j->d), c->to);
  cor_emit (j->d, "copy-complete", size, size, c->to);
  job_finish (j, J_DONE);
}

/* The next piece, and a checkpoint every COPY_CHECKPOINT bytes.  The size
 * is read afresh at every step: a disk grown meanwhile is copied to its
 * new end. */
static enum job_step
copy_step (struct job *j)
{
  struct copy_job *c = j->priv;
  uint64_t size = cor_disk_size (j->d);
  size_t n = size - c->off < COPY_PIECE ? size - c->off : COPY_PIECE;

  if (c->off >= size) {
    copy_complete (j, size);
    return JOB_END;
  }
  if (!job_keep_going (j))
    return JOB_END;
  /* Past start the file is all holes (copy_truncate): no punching. */
  if (copy_piece (j, c->off, n, false) == -1) {
    copy_failed (j);
    return JOB_END;
  }
  c->off += n;
  if (c->off - c->checkpoint >= COPY_CHECKPOINT && c->off < size) {
    if (copy_checkpoint (j, c->off) == -1) {
      job_set_error (j, "%s: %s", c->partial, strerror (errno));
      copy_failed (j);
      return JOB_END;
    }
    c->checkpoint = c->off;
  }
  job_set_done (j, c->off);
  return JOB_MORE;
}

/* Keep what is durable for a copy started again. */
static void
copy_finish (struct job *j)
{
  struct copy_job *c = j->priv;

  if (c->fd >= 0 && c->checkpoint < c->off && copy_checkpoint (j, c->off) == 0)
    c->checkpoint = c->off;
  free (c->buf);
  c->buf = NULL;
}

static void
copy_free (struct job *j)
{
  struct copy_job *c = j->priv;

  if (!c)
    return;
  if (c->fd >= 0)
    close (c->fd);
  if (c->dirfd >= 0)
    close (c->dirfd);
  free (c->to);
  free (c->partial);
  free (c->record);
  free (c->buf);
  free (c);
}

const struct job_kind copy_kind = {
  .name = "copy",
  .prepare = copy_open,
  .init_progress = copy_init_progress,
  .start = copy_start,
  .step = copy_step,
  .finish = copy_finish,
  .free = copy_free,
};
