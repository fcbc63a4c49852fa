/* corfs: merge, flatten and copy jobs.
 *
 * Merge (DESIGN.md rules 9 and 11), in passes over the dirty and suspect
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
 * Flatten: start the streamer, wait for completion, then record the disk
 * standalone and release the parent for good.  Copy (--to FILE): read the
 * disk through the engine in 1 MiB pieces and write non-zero pieces to
 * FILE.partial (sparse, mode 0600, created with O_EXCL|O_NOFOLLOW), then
 * fsync it, rename it over FILE and fsync the directory: FILE is replaced
 * only by a whole copy, and a symlink at either name is never followed.
 * The partial file is recorded in STATE/NAME.copy (its device, inode and
 * the bytes made durable so far); a copy to the same FILE started again
 * (after a failure or a restart) reopens that file only if it is still
 * the recorded one, and continues.  FILE may not be in the state
 * directory (the index, overlays, socket, log) nor be a file:// parent.
 *
 * Notes on the thread model: one thread per job, created by
 * merge_control/merge_flatten (ctl's thread) and joined by the next job
 * on the same disk or by merge_free.  mg->lock protects the job list and
 * every job's state fields; it is never held across engine or remote
 * calls.  Jobs wait on mg->cond (pause, rate changes, cancel).  A copy's
 * partial file (fd, paths) is opened by the starter before the thread
 * exists, used only by the job's thread, and closed by whoever joins it.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "cor/cor.h"
#include "merge/merge.h"
#include "meta/meta.h"
#include "remote/remote.h"

/* Blocks handed to cor_writeback at a time: it copies them 1 MiB per
 * request, four requests at once, then flushes the parent once.  The
 * chunk is also what a guest write into it may wait for. */
#define CHUNK (4 << 20)
/* Copy reads and writes this much at a time; an all-zero piece is left a
 * hole in the file. */
#define COPY_PIECE (1 << 20)
/* A copy makes its progress durable (fdatasync, then the record) this
 * often, so that a copy started again continues from there. */
#define COPY_CHECKPOINT (256 << 20)
/* How long one chunk may retry inside the remote layer before the job
 * records the error (status, merge-error event) and backs off: short, so
 * that a failing parent shows at once; the job itself never gives up. */
#define CHUNK_DEADLINE_NS (2 * NS_PER_SEC)
/* Connecting and re-pinning may take longer. */
#define SETUP_DEADLINE_NS (30 * NS_PER_SEC)
#define BACKOFF_MIN_NS (200 * 1000000ULL)
#define BACKOFF_MAX_NS (30 * NS_PER_SEC)

enum kind { K_MERGE, K_FLATTEN, K_COPY };
enum jstate { J_RUNNING, J_PAUSED, J_SYNCED, J_CANCELLED, J_FAILED, J_DONE };
static const char *kind_names[] = { "merge", "flatten", "copy" };
static const char *state_names[] = { "running", "paused", "synced", "cancelled",
                                     "failed", "done" };

struct job {
  struct merge *mg;
  struct cor_disk *d;
  enum kind kind;
  pthread_t thread;
  char *to;                     /* K_COPY: the final name */
  char *partial;                /* K_COPY: to + ".partial", open as fd */
  char *record;                 /* K_COPY: STATE/NAME.copy */
  int fd;                       /* K_COPY */
  uint64_t start;               /* K_COPY: bytes already durable in partial */
  /* protected by mg->lock */
  enum jstate state;
  uint64_t rate, done, total, passes, errors;
  bool following;
  char last_error[512];
  struct job *next;
};

struct merge {
  pthread_mutex_t lock;         /* protects jobs and their state fields */
  pthread_cond_t cond;          /* state or rate changes */
  struct job *jobs;
  char *state_dir;              /* canonical; copies may not go there */
};

struct merge *
merge_new (const char *state_dir)
{
  struct merge *mg = calloc (1, sizeof *mg);

  if (!mg)
    return NULL;
  if (!(mg->state_dir = realpath (state_dir, NULL))) {
    free (mg);
    return NULL;
  }
  pthread_mutex_init (&mg->lock, NULL);
  cond_init_monotonic (&mg->cond);
  return mg;
}

static const char *
owner_state_name (enum meta_state s)
{
  switch (s) {
  case META_ACTIVE: return "active";
  case META_INCOMING: return "incoming";
  case META_ACTIVATING: return "activating";
  case META_HANDED_OFF: return "handed-off";
  case META_STANDALONE: return "standalone";
  }
  return "in an unknown state";
}

static bool
finished (enum jstate s)
{
  return s != J_RUNNING && s != J_PAUSED;
}

static void
job_free (struct job *j)
{
  if (j->fd >= 0)
    close (j->fd);
  free (j->to);
  free (j->partial);
  free (j->record);
  free (j);
}

void
merge_free (struct merge *mg)
{
  if (!mg)
    return;
  pthread_mutex_lock (&mg->lock);
  for (struct job *j = mg->jobs; j; j = j->next)
    if (!finished (j->state))
      j->state = J_CANCELLED;
  pthread_cond_broadcast (&mg->cond);
  pthread_mutex_unlock (&mg->lock);
  while (mg->jobs) {
    struct job *j = mg->jobs;
    mg->jobs = j->next;
    pthread_join (j->thread, NULL);
    job_free (j);
  }
  pthread_cond_destroy (&mg->cond);
  pthread_mutex_destroy (&mg->lock);
  free (mg->state_dir);
  free (mg);
}

/* Must be called with mg->lock held. */
static struct job *
find_job_unlocked (struct merge *mg, struct cor_disk *d)
{
  for (struct job *j = mg->jobs; j; j = j->next)
    if (j->d == d)
      return j;
  return NULL;
}

/* Must be called with mg->lock held.  Sleep until abs_ns or a change. */
static void
wait_unlocked (struct merge *mg, uint64_t abs_ns)
{
  struct timespec ts = { abs_ns / NS_PER_SEC, abs_ns % NS_PER_SEC };
  pthread_cond_timedwait (&mg->cond, &mg->lock, &ts);
}

/* Wait while paused; false if the job was cancelled. */
static bool
keep_going (struct job *j)
{
  bool ok;

  pthread_mutex_lock (&j->mg->lock);
  while (j->state == J_PAUSED)
    pthread_cond_wait (&j->mg->cond, &j->mg->lock);
  ok = j->state == J_RUNNING;
  pthread_mutex_unlock (&j->mg->lock);
  return ok;
}

static void
set_error (struct job *j, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));
static void
set_error (struct job *j, const char *fmt, ...)
{
  va_list ap;

  pthread_mutex_lock (&j->mg->lock);
  va_start (ap, fmt);
  vsnprintf (j->last_error, sizeof j->last_error, fmt, ap);
  va_end (ap);
  j->errors++;
  pthread_mutex_unlock (&j->mg->lock);
}

static void
finish (struct job *j, enum jstate s)
{
  pthread_mutex_lock (&j->mg->lock);
  if (j->state == J_RUNNING || j->state == J_PAUSED || s == J_FAILED)
    j->state = s;
  pthread_cond_broadcast (&j->mg->cond);
  pthread_mutex_unlock (&j->mg->lock);
}

static uint64_t
next_to_merge (struct meta_disk *md, uint64_t from)
{
  uint64_t a = meta_next (md, META_DIRTY, true, from);
  uint64_t b = meta_next (md, META_SUSPECT, true, from);
  return a < b ? a : b;
}

static uint64_t
remaining_bytes (struct cor_disk *d)
{
  struct meta_disk *md = cor_disk_meta (d);
  return meta_count_union (md, META_DIRTY, META_SUSPECT) << cor_disk_block_shift (d);
}

/* Record updates, through cor_update_record (serialised with the owner
 * state transitions). */
/* Merge writes the parent, and re-pins it, only while the disk is
 * active: checked here, under the owner lock that hand-off takes (which
 * refuses while record.merging is set), never from an earlier look. */
static int
require_active (const struct meta_record *rec, char *errbuf, size_t len)
{
  if (rec->state == META_ACTIVE)
    return 0;
  snprintf (errbuf, len, "the disk is %s, no longer active", owner_state_name (rec->state));
  return -1;
}

static int
set_merging (struct meta_record *rec, void *arg, char *errbuf, size_t len)
{
  if (require_active (rec, errbuf, len) == -1)
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

static int
set_parent_owned (struct meta_record *rec, void *arg, char *errbuf, size_t len)
{
  if (rec->parent_owned)
    return 1;
  rec->parent_owned = true;
  return 0;
}

/* The synced instant: make the cleared bits durable, re-pin the parent and
 * clear the merging mark.  0 or -1 (the job retries the pass). */
static int
synced (struct job *j)
{
  struct cor_disk *d = j->d;
  char id[META_ID_MAX], msg[256];
  int err;

  if (cor_flush (d, &err) == -1) {
    set_error (j, "commit at synced: %s", strerror (err));
    return -1;
  }
  if (remote_repin (cor_disk_remote (d), id, sizeof id,
                    now_ns () + SETUP_DEADLINE_NS, &err) == -1) {
    set_error (j, "re-pinning the parent: %s", strerror (err));
    return -1;
  }
  if (cor_update_record (d, set_synced, id, msg, sizeof msg) == -1) {
    set_error (j, "recording synced: %s", msg);
    return -1;
  }
  remote_set_modifying (cor_disk_remote (d), false);
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
  set_error (j, "stopped: the disk is %s, no longer active; the parent is not written",
             owner_state_name (rec.state));
  log_error ("merge: disk %s: %s", cor_disk_name (j->d), j->last_error);
  cor_emit (j->d, "merge-error", 0, 0, j->last_error);
  finish (j, J_FAILED);
  return true;
}

static void
run_merge (struct job *j)
{
  struct cor_disk *d = j->d;
  struct meta_disk *md = cor_disk_meta (d);
  uint64_t nr = cor_disk_nr_blocks (d), chunk = CHUNK >> cor_disk_block_shift (d);
  uint64_t backoff = BACKOFF_MIN_NS, tokens_ns = now_ns ();
  double tokens = 0;
  char msg[256];

  if (chunk == 0)
    chunk = 1;
  /* 1. "Parent being modified", durably, before the first write. */
  if (cor_update_record (d, set_merging, NULL, msg, sizeof msg) == -1) {
    set_error (j, "recording the merge: %s", msg);
    finish (j, J_FAILED);
    return;
  }
  remote_set_modifying (cor_disk_remote (d), true);
  log_info ("merge: disk %s: merging %" PRIu64 " bytes into %s", cor_disk_name (d),
            remaining_bytes (d), remote_url (cor_disk_remote (d)));

  for (;;) {
    uint64_t blk = 0, copied_this_pass = 0;
    pthread_mutex_lock (&j->mg->lock);
    j->passes++;
    j->total = j->done + remaining_bytes (d);
    pthread_mutex_unlock (&j->mg->lock);

    while ((blk = next_to_merge (md, blk)) < nr) {
      uint64_t end = blk + 1;
      int err;
      while (end < nr && end - blk < chunk && next_to_merge (md, end) == end)
        end++;
      if (!keep_going (j))
        return;
      /* Rate limit: a token bucket refilled at j->rate bytes/s. */
      for (;;) {
        uint64_t rate, now = now_ns ();
        pthread_mutex_lock (&j->mg->lock);
        rate = j->rate;
        if (rate) {
          tokens += (double) (now - tokens_ns) / NS_PER_SEC * rate;
          if (tokens > rate)
            tokens = rate;
        }
        tokens_ns = now;
        if (rate == 0 || tokens >= 0 || j->state != J_RUNNING) {
          pthread_mutex_unlock (&j->mg->lock);
          break;
        }
        wait_unlocked (j->mg, now + 100 * 1000000ULL);
        pthread_mutex_unlock (&j->mg->lock);
      }
      int64_t r = cor_writeback (d, blk, end, now_ns () + CHUNK_DEADLINE_NS, &err);
      if (r == -1 && stop_if_not_active (j))
        return;
      if (r == -1) {
        if (err == EOPNOTSUPP)
          set_error (j, "offset %" PRIu64 ": the parent %s offers no flush: what was "
                     "written to it cannot be made durable, so nothing is marked merged",
                     blk << cor_disk_block_shift (d), remote_url (cor_disk_remote (d)));
        else
          set_error (j, "offset %" PRIu64 ": %s", blk << cor_disk_block_shift (d),
                     strerror (err));
        cor_emit (d, "merge-error", 0, 0, j->last_error);
        log_warn ("merge: disk %s: %s; retrying in %.1f s", cor_disk_name (d),
                  j->last_error, backoff / 1e9);
        pthread_mutex_lock (&j->mg->lock);
        wait_unlocked (j->mg, now_ns () + backoff);
        pthread_mutex_unlock (&j->mg->lock);
        backoff = backoff * 2 > BACKOFF_MAX_NS ? BACKOFF_MAX_NS : backoff * 2;
        continue;               /* the same blocks again */
      }
      backoff = BACKOFF_MIN_NS;
      tokens -= r;
      copied_this_pass += r;
      pthread_mutex_lock (&j->mg->lock);
      j->done += r;
      pthread_mutex_unlock (&j->mg->lock);
      blk = end;
    }
    if (next_to_merge (md, 0) >= nr) {
      /* 3. Nothing left to copy: the synced instant. */
      if (synced (j) == 0) {
        log_info ("merge: disk %s: synced: the parent equals the disk (%" PRIu64
                  " bytes merged in %" PRIu64 " passes)", cor_disk_name (d), j->done,
                  j->passes);
        cor_emit (d, "synced", j->done, j->done, NULL);
        finish (j, J_SYNCED);
        return;
      }
      if (stop_if_not_active (j))
        return;
      pthread_mutex_lock (&j->mg->lock);
      wait_unlocked (j->mg, now_ns () + backoff);
      pthread_mutex_unlock (&j->mg->lock);
      continue;
    }
    /* The guest wrote behind us: another pass. */
    pthread_mutex_lock (&j->mg->lock);
    j->following = copied_this_pass > 0 && j->passes > 1;
    pthread_mutex_unlock (&j->mg->lock);
  }
}

static void
run_flatten (struct job *j)
{
  struct cor_disk *d = j->d;
  struct meta_disk *md = cor_disk_meta (d);
  char msg[256];
  int err;

  if (cor_stream_start (d, &err) == -1) {
    set_error (j, "starting the stream: %s", strerror (err));
    finish (j, J_FAILED);
    return;
  }
  while (meta_count (md, META_PRESENT) < cor_disk_nr_blocks (d)) {
    if (!keep_going (j))
      return;
    pthread_mutex_lock (&j->mg->lock);
    j->done = meta_count (md, META_PRESENT) << cor_disk_block_shift (d);
    wait_unlocked (j->mg, now_ns () + 200 * 1000000ULL);
    pthread_mutex_unlock (&j->mg->lock);
  }
  if (cor_flush (d, &err) == -1) {
    set_error (j, "commit: %s", strerror (err));
    finish (j, J_FAILED);
    return;
  }
  if (cor_update_record (d, set_standalone, NULL, msg, sizeof msg) == -1) {
    set_error (j, "recording standalone: %s", msg);
    finish (j, J_FAILED);
    return;
  }
  remote_release (cor_disk_remote (d));
  pthread_mutex_lock (&j->mg->lock);
  j->done = j->total;
  pthread_mutex_unlock (&j->mg->lock);
  log_info ("merge: disk %s: flattened: standalone, the parent is no longer used",
            cor_disk_name (d));
  cor_emit (d, "flattened", j->total, j->total, NULL);
  finish (j, J_DONE);
}

/* The record of a copy's partial file: "dev ino done to" on one line,
 * replaced atomically (written aside, fsync'd, renamed). */
static int
copy_record_write (const char *record, dev_t dev, ino_t ino, uint64_t done, const char *to)
{
  char tmp[PATH_MAX + 8];
  FILE *f;
  int ok;

  snprintf (tmp, sizeof tmp, "%s.tmp", record);
  if (!(f = fopen (tmp, "we")))
    return -1;
  fprintf (f, "%ju %ju %" PRIu64 " %s\n", (uintmax_t) dev, (uintmax_t) ino, done, to);
  ok = fflush (f) == 0 && fsync (fileno (f)) == 0;
  if (fclose (f) != 0 || !ok || rename (tmp, record) == -1) {
    int e = errno;
    unlink (tmp);
    errno = e;
    return -1;
  }
  return 0;
}

/* 0 with the record's fields, or -1 (none, or unreadable). */
static int
copy_record_read (const char *record, dev_t *dev, ino_t *ino, uint64_t *done,
                  char *to, size_t len)
{
  FILE *f = fopen (record, "re");
  uintmax_t dv, in;
  uint64_t dn;
  char line[PATH_MAX + 128];
  int n = -1;

  if (!f)
    return -1;
  if (fgets (line, sizeof line, f) && sscanf (line, "%ju %ju %" SCNu64 " %n", &dv, &in, &dn, &n) == 3 &&
      n > 0 && line[n] == '/') {
    line[strcspn (line, "\n")] = '\0';
    snprintf (to, len, "%s", line + n);
    *dev = dv;
    *ino = in;
    *done = dn;
    n = 0;
  }
  else
    n = -1;
  fclose (f);
  return n;
}

/* fsync the directory holding path (the rename must be durable too). */
static int
fsync_parent_dir (const char *path)
{
  char dir[PATH_MAX];
  const char *slash = strrchr (path, '/');
  int fd, r;

  snprintf (dir, sizeof dir, "%.*s", slash && slash != path ? (int) (slash - path) : 1,
            slash && slash != path ? path : "/");
  if ((fd = open (dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) == -1)
    return -1;
  r = fsync (fd);
  close (fd);
  return r;
}

/* Record the partial file and its durable progress.  Only a copy started
 * again needs the record: failing to write it (the state directory's
 * filesystem is full) is logged, and the copy goes on. */
static void
copy_record (struct job *j, const struct stat *st, uint64_t done)
{
  if (copy_record_write (j->record, st->st_dev, st->st_ino, done, j->to) == -1)
    log_warn ("merge: disk %s: recording the copy's progress in %s: %m (a copy started "
              "again will not continue %s)", cor_disk_name (j->d), j->record, j->partial);
}

/* Make the first done bytes of the partial file durable and record them. */
static int
copy_checkpoint (struct job *j, uint64_t done)
{
  struct stat st;

  if (fdatasync (j->fd) == -1 || fstat (j->fd, &st) == -1)
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

static void
run_copy (struct job *j)
{
  struct cor_disk *d = j->d;
  uint64_t size = cor_disk_size (d), off = j->start, checkpoint = j->start;
  char *buf = malloc (COPY_PIECE);
  int err = 0;

  if (!buf) {
    set_error (j, "out of memory");
    goto fail;
  }
  if (j->start)
    log_info ("merge: disk %s: continuing the copy to %s at offset %" PRIu64,
              cor_disk_name (d), j->to, j->start);
  while (off < size) {
    size_t n = size - off < COPY_PIECE ? size - off : COPY_PIECE;
    if (!keep_going (j))
      goto out;
    if (cor_read (d, buf, n, off, &err) != (ssize_t) n) {
      set_error (j, "reading the disk at offset %" PRIu64 ": %s", off, strerror (err ? err : EIO));
      goto fail;
    }
    if (!is_zero (buf, n) ? full_pwrite (j->fd, buf, n, off) == -1
        : j->start > 0 && copy_zero (j->fd, off, n) == -1) {
      set_error (j, "%s: write at offset %" PRIu64 ": %s", j->partial, off, strerror (errno));
      goto fail;
    }
    off += n;
    if (off - checkpoint >= COPY_CHECKPOINT && off < size) {
      if (copy_checkpoint (j, off) == -1) {
        set_error (j, "%s: %s", j->partial, strerror (errno));
        goto fail;
      }
      checkpoint = off;
    }
    pthread_mutex_lock (&j->mg->lock);
    j->done = off;
    pthread_mutex_unlock (&j->mg->lock);
  }
  /* Whole and durable: only now may it replace FILE. */
  if (fsync (j->fd) == -1 || close (j->fd) == -1) {
    j->fd = -1;
    set_error (j, "%s: %s", j->partial, strerror (errno));
    goto fail;
  }
  j->fd = -1;
  if (rename (j->partial, j->to) == -1 || fsync_parent_dir (j->to) == -1) {
    set_error (j, "renaming %s to %s: %s", j->partial, j->to, strerror (errno));
    goto fail;
  }
  unlink (j->record);
  log_info ("merge: disk %s: copied to %s", cor_disk_name (d), j->to);
  cor_emit (d, "copy-complete", size, size, j->to);
  finish (j, J_DONE);
  goto out;
 fail:
  log_error ("merge: disk %s: copy to %s failed: %s", cor_disk_name (d), j->to, j->last_error);
  cor_emit (d, "copy-failed", 0, 0, j->last_error);
  finish (j, J_FAILED);
 out:
  /* Keep what is durable for a copy started again. */
  if (j->fd >= 0 && checkpoint < off && copy_checkpoint (j, off) == 0)
    checkpoint = off;
  free (buf);
}

static void *
job_thread (void *arg)
{
  struct job *j = arg;

  switch (j->kind) {
  case K_MERGE: run_merge (j); break;
  case K_FLATTEN: run_flatten (j); break;
  case K_COPY: run_copy (j); break;
  }
  return NULL;
}

/* Is path (canonical) dir itself or inside it? */
static bool
path_within (const char *path, const char *dir)
{
  size_t n = strlen (dir);
  return strncmp (path, dir, n) == 0 && (path[n] == '\0' || path[n] == '/' || n == 1);
}

/* Refuse a copy target that would replace what the disk runs on: a file
 * in the state directory (index, overlays, socket, log, records) or the
 * file:// parent, by name or, where it exists, by what it resolves to
 * (the rename replaces only the name, but a copy named after either is
 * a mistake).  canon receives the canonical target.  0 or -1 (errbuf). */
static int
copy_target_check (struct merge *mg, struct cor_disk *d, const char *to, char *canon,
                   size_t canon_len, char *errbuf, size_t len)
{
  const char *slash = strrchr (to, '/'), *base = slash ? slash + 1 : to;
  char dir[PATH_MAX], rdir[PATH_MAX], rto[PATH_MAX];
  struct remote *r = cor_disk_remote (d);
  struct stat st, pst;

  if (!slash || !*base || !strcmp (base, ".") || !strcmp (base, "..")) {
    snprintf (errbuf, len, "--to %s: not a file name", to);
    return -1;
  }
  snprintf (dir, sizeof dir, "%.*s", slash == to ? 1 : (int) (slash - to), to);
  if (!realpath (dir, rdir)) {
    snprintf (errbuf, len, "--to %s: %s: %s", to, dir, strerror (errno));
    return -1;
  }
  snprintf (canon, canon_len, "%s/%s", strcmp (rdir, "/") ? rdir : "", base);
  bool exists = lstat (canon, &st) == 0;
  if (exists && S_ISDIR (st.st_mode)) {
    snprintf (errbuf, len, "--to %s is a directory", to);
    return -1;
  }
  if (path_within (canon, mg->state_dir) ||
      (exists && realpath (canon, rto) && path_within (rto, mg->state_dir))) {
    snprintf (errbuf, len, "--to %s is in the state directory %s: refusing to replace "
              "the daemon's own files", to, mg->state_dir);
    return -1;
  }
  if (!strcmp (remote_backend (r), "file")) {
    const char *ppath = remote_url (r) + strlen ("file://");
    bool same = !strcmp (canon, ppath) || (exists && realpath (canon, rto) && !strcmp (rto, ppath));
    if (!same && stat (ppath, &pst) == 0 && stat (canon, &st) == 0)
      same = st.st_dev == pst.st_dev && st.st_ino == pst.st_ino;
    if (!same && realpath (ppath, rto))
      same = !strcmp (canon, rto);
    if (same) {
      snprintf (errbuf, len, "--to %s is the disk's parent %s: refusing to replace it",
                to, remote_url (r));
      return -1;
    }
  }
  return 0;
}

/* Open the partial file of a copy to `to` for j: a new one (O_EXCL, never
 * through a symlink, 0600), or the one this disk's earlier copy to the
 * same file left, if its device and inode are still the recorded ones.
 * 0 or -1 (errbuf). */
static int
copy_open (struct merge *mg, struct cor_disk *d, struct job *j, const char *to,
           char *errbuf, size_t len)
{
  char canon[PATH_MAX + 256], rec_to[PATH_MAX + 256];
  dev_t dev = 0;
  ino_t ino = 0;
  uint64_t done = 0;
  struct stat st;

  if (copy_target_check (mg, d, to, canon, sizeof canon, errbuf, len) == -1)
    return -1;
  if (asprintf (&j->partial, "%s.partial", canon) == -1 ||
      asprintf (&j->record, "%s/%s.copy", mg->state_dir, cor_disk_name (d)) == -1 ||
      !(j->to = strdup (canon))) {
    snprintf (errbuf, len, "out of memory");
    return -1;
  }
  j->fd = open (j->partial, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (j->fd >= 0) {
    if (fstat (j->fd, &st) == -1 || ftruncate (j->fd, cor_disk_size (d)) == -1) {
      snprintf (errbuf, len, "%s: %s", j->partial, strerror (errno));
      close (j->fd);
      j->fd = -1;
      unlink (j->partial);
      return -1;
    }
    j->d = d;
    copy_record (j, &st, 0);
    return 0;
  }
  if (errno != EEXIST) {
    snprintf (errbuf, len, "%s: %s", j->partial, strerror (errno));
    return -1;
  }
  /* It exists: continue it only if it is the one we recorded. */
  if (copy_record_read (j->record, &dev, &ino, &done, rec_to, sizeof rec_to) == -1 ||
      strcmp (rec_to, j->to) != 0 ||
      (j->fd = open (j->partial, O_WRONLY | O_NOFOLLOW | O_CLOEXEC)) == -1 ||
      fstat (j->fd, &st) == -1 || !S_ISREG (st.st_mode) ||
      st.st_dev != dev || st.st_ino != ino) {
    snprintf (errbuf, len, "%s exists and is not the partial copy that disk %s left "
              "there: remove it to copy to %s", j->partial, cor_disk_name (d), j->to);
    return -1;
  }
  if (ftruncate (j->fd, cor_disk_size (d)) == -1) {
    snprintf (errbuf, len, "%s: %s", j->partial, strerror (errno));
    return -1;
  }
  j->start = done <= cor_disk_size (d) ? done : 0;
  return 0;
}

/* Start a job of kind on d (replacing a finished one).  0 or -1 (errbuf). */
static int
start_job (struct merge *mg, struct cor_disk *d, enum kind kind, uint64_t rate,
           const char *to, char *errbuf, size_t len)
{
  struct job *j, *old, **pp;

  pthread_mutex_lock (&mg->lock);
  old = find_job_unlocked (mg, d);
  if (old && !finished (old->state)) {
    snprintf (errbuf, len, "disk %s: a %s job is %s", cor_disk_name (d),
              kind_names[old->kind], state_names[old->state]);
    pthread_mutex_unlock (&mg->lock);
    return -1;
  }
  if (old) {
    for (pp = &mg->jobs; *pp != old; pp = &(*pp)->next)
      ;
    *pp = old->next;
  }
  pthread_mutex_unlock (&mg->lock);
  if (old) {
    pthread_join (old->thread, NULL);
    job_free (old);
  }
  j = calloc (1, sizeof *j);
  if (!j) {
    snprintf (errbuf, len, "out of memory");
    return -1;
  }
  j->fd = -1;
  if (to && copy_open (mg, d, j, to, errbuf, len) == -1) {
    job_free (j);
    return -1;
  }
  j->mg = mg;
  j->d = d;
  j->kind = kind;
  j->state = J_RUNNING;
  j->rate = rate == UINT64_MAX ? 0 : rate;
  j->total = kind == K_MERGE ? remaining_bytes (d) : cor_disk_size (d);
  j->done = j->start;
  pthread_mutex_lock (&mg->lock);
  if (thread_create_nosig (&j->thread, job_thread, j) == -1) {
    pthread_mutex_unlock (&mg->lock);
    snprintf (errbuf, len, "cannot start a thread: %s", strerror (errno));
    job_free (j);
    return -1;
  }
  j->next = mg->jobs;
  mg->jobs = j;
  pthread_mutex_unlock (&mg->lock);
  return 0;
}

int
merge_control (struct merge *mg, struct cor_disk *d, const char *action,
               bool parent_owned, uint64_t rate, char *errbuf, size_t len)
{
  struct meta_disk *md = cor_disk_meta (d);
  struct meta_record rec;
  struct job *j;
  int err;

  if (strcmp (action, "start") != 0) {
    int ret = 0;
    pthread_mutex_lock (&mg->lock);
    j = find_job_unlocked (mg, d);
    if (!j || j->kind != K_MERGE || finished (j->state))
      ret = -1;
    else if (!strcmp (action, "pause") && j->state == J_RUNNING)
      j->state = J_PAUSED;
    else if (!strcmp (action, "resume") && j->state == J_PAUSED)
      j->state = J_RUNNING;
    else if (!strcmp (action, "cancel"))
      j->state = J_CANCELLED;
    else if (!strcmp (action, "rate") && rate != UINT64_MAX)
      j->rate = rate;
    else
      ret = -1;
    if (ret == 0 && rate != UINT64_MAX)
      j->rate = rate;
    if (ret == -1)
      snprintf (errbuf, len, "disk %s: cannot %s the merge: %s", cor_disk_name (d), action,
                !j || j->kind != K_MERGE ? "no merge is running"
                : state_names[j->state]);
    pthread_cond_broadcast (&mg->cond);
    pthread_mutex_unlock (&mg->lock);
    return ret;
  }
  /* start, or steer the running merge's rate */
  pthread_mutex_lock (&mg->lock);
  j = find_job_unlocked (mg, d);
  if (j && j->kind == K_MERGE && !finished (j->state)) {
    if (rate != UINT64_MAX)
      j->rate = rate;
    if (j->state == J_PAUSED)
      j->state = J_RUNNING;
    pthread_cond_broadcast (&mg->cond);
    pthread_mutex_unlock (&mg->lock);
    return 0;
  }
  pthread_mutex_unlock (&mg->lock);

  meta_disk_record (md, &rec);
  if (rec.state == META_STANDALONE) {
    snprintf (errbuf, len, "disk %s is standalone (flattened): it has no parent to merge into",
              cor_disk_name (d));
    return -1;
  }
  if (rec.state != META_ACTIVE) {
    /* Incoming: the source still writes the parent, and a merge would
     * turn the identity check off under it; handed off: the disk is no
     * longer ours to write anywhere. */
    snprintf (errbuf, len, "disk %s is %s: only an active disk can be merged into its "
              "parent", cor_disk_name (d), owner_state_name (rec.state));
    return -1;
  }
  if (!rec.parent_owned) {
    if (!parent_owned) {
      snprintf (errbuf, len, "disk %s: merge writes into the parent %s; declare that this "
                "disk owns it with --parent-owned (never for a golden image that other "
                "overlays read)", cor_disk_name (d), rec.url);
      return -1;
    }
    if (cor_update_record (d, set_parent_owned, NULL, errbuf, len) == -1)
      return -1;
  }
  if (remote_make_writable (cor_disk_remote (d), now_ns () + SETUP_DEADLINE_NS, &err) == -1) {
    char why[1280];
    remote_status (cor_disk_remote (d), why, sizeof why);
    snprintf (errbuf, len, "disk %s: parent %s cannot be written: %s", cor_disk_name (d),
              rec.url, *why ? why : strerror (err));
    return -1;
  }
  return start_job (mg, d, K_MERGE, rate, NULL, errbuf, len);
}

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
              cor_disk_name (d), rec.state == META_HANDED_OFF ? "handed off"
              : rec.state == META_INCOMING ? "incoming" : "not active",
              rec.mirror ? ", in mirror mode: use pivot" : "");
    return -1;
  }
  return start_job (mg, d, to ? K_COPY : K_FLATTEN, 0, to, errbuf, len);
}

void
merge_status (struct merge *mg, struct cor_disk *d, struct merge_status *st)
{
  struct job *j;

  memset (st, 0, sizeof *st);
  st->kind = "none";
  st->state = "";
  pthread_mutex_lock (&mg->lock);
  j = find_job_unlocked (mg, d);
  if (j) {
    st->kind = kind_names[j->kind];
    st->state = state_names[j->state];
    st->done_bytes = j->done;
    st->total_bytes = j->kind == K_MERGE ? j->done + remaining_bytes (d) : j->total;
    st->passes = j->passes;
    st->errors = j->errors;
    st->following = j->following;
    snprintf (st->last_error, sizeof st->last_error, "%s", j->last_error);
  }
  pthread_mutex_unlock (&mg->lock);
}
