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
 * standalone and release the parent for good.
 *
 * Copy (--to FILE): take a checkpoint, read the disk through the engine
 * in 1 MiB pieces and write non-zero pieces to FILE.partial (sparse, mode
 * 0600, created with O_EXCL|O_NOFOLLOW in FILE's directory, opened once
 * without following symlinks), then fsync it, rename it over FILE and
 * fsync the directory: FILE is replaced only by a whole copy, and a
 * symlink at either name is never followed.  The partial file is recorded
 * in STATE/NAME.copy (its device, inode, the bytes made durable so far and
 * the checkpoint's generation); a copy to the same FILE started again
 * (after a failure or a restart) reopens that file only if it is still
 * the recorded one, copies again what the disk's changed maps say was
 * written since (or starts over when they cannot say), and continues.
 * FILE may not be in the state directory (the index, overlays, socket,
 * log; by inode, so no alias of it either), be the file:// parent, nor
 * exist as anything but a regular file.
 *
 * Notes on the thread model: one thread per job, created by
 * merge_control (ctl's thread) or merge_flatten (one of ctl's job
 * threads: opening a copy's target may block) and joined by the next job
 * on the same disk, by merge_stop (at exit, until a deadline: a job
 * stuck in the kernel is left running, and nothing it uses is freed) or
 * by merge_free (after ctl_stop: no starter is left).
 * A job is listed, as starting, before its starter opens anything, so
 * two starters cannot both start a job on one disk.  mg->lock protects
 * the job list and every job's state fields; it is never held across
 * engine, remote or file system calls.  Jobs wait on mg->cond (pause,
 * rate changes, cancel).  A copy's partial file and directory (fds,
 * paths) are opened by the starter before the thread exists, used only
 * by the job's thread, and closed by whoever frees the job.
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
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/xattr.h>
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
/* J_STARTING: listed (so that no other job starts on the disk) while
 * its starter opens a copy's target; no thread yet. */
enum jstate { J_RUNNING, J_PAUSED, J_SYNCED, J_CANCELLED, J_FAILED, J_DONE, J_STARTING };
static const char *kind_names[] = { "merge", "flatten", "copy" };
static const char *state_names[] = { "running", "paused", "synced", "cancelled",
                                     "failed", "done", "starting" };

struct job {
  struct merge *mg;
  struct cor_disk *d;
  enum kind kind;
  pthread_t thread;
  bool started;                 /* thread exists (to join) */
  char *to;                     /* K_COPY: the final name (canonical) */
  char *partial;                /* K_COPY: to + ".partial", open as fd */
  const char *base, *pbase;     /* K_COPY: their names in dirfd */
  int dirfd;                    /* K_COPY: their directory */
  char *record;                 /* K_COPY: STATE/NAME.copy */
  int fd;                       /* K_COPY */
  uint64_t start;               /* K_COPY: bytes already durable in partial */
  uint32_t gen;                 /* K_COPY: [0, start) is current as of it (0: unknown) */
  char cookie[40];              /* K_COPY: the partial file's (copy_cookie_set) */
  /* protected by mg->lock */
  enum jstate state;
  uint64_t rate, done, total, passes, errors;
  bool following;
  bool wrote;                   /* K_MERGE: its thread may have written the parent */
  bool repin_pending;           /* K_MERGE: ended unsynced, its re-pin failed */
  char last_error[512];
  struct job *next;
};

struct merge {
  pthread_mutex_t lock;         /* protects jobs and their state fields */
  pthread_cond_t cond;          /* state or rate changes */
  struct job *jobs;
  char *state_dir;              /* canonical; copies may not go there */
  dev_t state_dev;              /* its device and inode: nor through an alias */
  ino_t state_ino;
  bool closing;                 /* merge_stop/free: jobs end without re-pinning */
};

struct merge *
merge_new (const char *state_dir)
{
  struct merge *mg = calloc (1, sizeof *mg);

  if (!mg)
    return NULL;
  struct stat st;

  if (!(mg->state_dir = realpath (state_dir, NULL)) || stat (mg->state_dir, &st) == -1) {
    free (mg->state_dir);
    free (mg);
    return NULL;
  }
  mg->state_dev = st.st_dev;
  mg->state_ino = st.st_ino;
  pthread_mutex_init (&mg->lock, NULL);
  cond_init_monotonic (&mg->cond);
  return mg;
}

static bool
finished (enum jstate s)
{
  return s != J_RUNNING && s != J_PAUSED && s != J_STARTING;
}

static void
job_free (struct job *j)
{
  if (j->fd >= 0)
    close (j->fd);
  if (j->dirfd >= 0)
    close (j->dirfd);
  free (j->to);
  free (j->partial);
  free (j->record);
  free (j);
}

size_t
merge_stop (struct merge *mg, uint64_t deadline_ns)
{
  struct job *list;
  size_t left = 0;

  if (!mg)
    return 0;
  /* The list is taken whole: a starter that ctl_stop left stuck may still
   * list a job later, and must not race with this walk (the process is
   * exiting then: what it starts is never joined). */
  pthread_mutex_lock (&mg->lock);
  mg->closing = true;
  for (struct job *j = mg->jobs; j; j = j->next)
    if (!finished (j->state))
      j->state = J_CANCELLED;
  pthread_cond_broadcast (&mg->cond);
  list = mg->jobs;
  mg->jobs = NULL;
  pthread_mutex_unlock (&mg->lock);
  for (struct job **pp = &list; *pp;) {
    struct job *j = *pp;
    if (j->started && !thread_join_until (j->thread, deadline_ns)) {
      log_error ("merge: disk %s: the %s job%s%s is still running at exit (stuck in the "
                 "kernel, on a filesystem that does not answer?); the daemon exits without "
                 "it", cor_disk_name (j->d), kind_names[j->kind], j->to ? " to " : "",
                 j->to ? j->to : "");
      left++;
      pp = &j->next;
      continue;
    }
    *pp = j->next;
    job_free (j);
  }
  return left;
}

void
merge_free (struct merge *mg)
{
  if (!mg)
    return;
  pthread_mutex_lock (&mg->lock);
  mg->closing = true;
  for (struct job *j = mg->jobs; j; j = j->next)
    if (!finished (j->state))
      j->state = J_CANCELLED;
  pthread_cond_broadcast (&mg->cond);
  pthread_mutex_unlock (&mg->lock);
  while (mg->jobs) {
    struct job *j = mg->jobs;
    mg->jobs = j->next;
    if (j->started)
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
  snprintf (errbuf, len, "the disk is %s, no longer active", meta_state_name (rec->state));
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
  /* Never accepting a parent found changed: that one is not what the
   * merge wrote into. */
  if (remote_repin (cor_disk_remote (d), false, cor_disk_size (d), id, sizeof id,
                    now_ns () + SETUP_DEADLINE_NS, &err) == -1) {
    char why[1280];
    remote_status (cor_disk_remote (d), why, sizeof why);
    set_error (j, "re-pinning the parent %s: %s", remote_url (cor_disk_remote (d)),
               *why ? why : strerror (err));
    return -1;
  }
  if (cor_update_record (d, set_synced, id, msg, sizeof msg) == -1) {
    set_error (j, "recording synced: %s", msg);
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
  set_error (j, "stopped: the disk is %s, no longer active; the parent is not written",
             meta_state_name (rec.state));
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
  /* merge_control verified the parent; a reconnect since then found it
   * changed: not recorded as merging (a mount would then re-pin it). */
  if (remote_status (cor_disk_remote (d), NULL, 0) == REMOTE_CHANGED) {
    set_error (j, "parent %s changed before the first write", remote_url (cor_disk_remote (d)));
    finish (j, J_FAILED);
    return;
  }
  /* 1. "Parent being modified", durably, before the first write. */
  if (cor_update_record (d, set_merging, NULL, msg, sizeof msg) == -1) {
    set_error (j, "recording the merge: %s", msg);
    finish (j, J_FAILED);
    return;
  }
  remote_set_modifying (cor_disk_remote (d), true);
  j->wrote = true;
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

/* The record of a copy's partial file, one line
 * "dev ino done gen size cookie to": the partial file's device and inode,
 * the bytes of it that are durable, the disk's change generation that
 * those bytes are current as of (a checkpoint taken before they were
 * read; 0: none), the disk's size, and a cookie that binds the record to
 * that very file (see copy_cookie).  Replaced atomically (written aside,
 * fsync'd, renamed, the state directory fsync'd). */
struct copy_rec {
  uintmax_t dev, ino;
  uint64_t done, size;
  uint32_t gen;
  char cookie[40];
};

#define COOKIE_XATTR "user.corfs.copy"

/* A device and inode number alone may name another file by now: ours
 * deleted, a new one given the same inode.  So the partial file also
 * carries a random cookie in a user xattr ("x" + 16 hex digits), or,
 * where the filesystem has no user xattrs, the record keeps its birth
 * time ("b" + seconds.nanoseconds); "-" where it has neither.
 *
 * The cookie of the open file fd, of the kind (the first letter of) kind
 * says. */
static void
copy_cookie_get (int fd, const char *kind, char *cookie, size_t len)
{
  char v[17];
  struct statx stx;

  snprintf (cookie, len, "-");
  if (kind[0] == 'x') {
    if (fgetxattr (fd, COOKIE_XATTR, v, 16) == 16) {
      v[16] = '\0';
      snprintf (cookie, len, "x%s", v);
    }
  }
  else if (kind[0] == 'b' && statx (fd, "", AT_EMPTY_PATH, STATX_BTIME, &stx) == 0 &&
           (stx.stx_mask & STATX_BTIME))
    snprintf (cookie, len, "b%" PRId64 ".%09" PRIu32, (int64_t) stx.stx_btime.tv_sec,
              stx.stx_btime.tv_nsec);
}

/* fsync a directory (a rename or a new name in it must be durable too). */
static int
fsync_dir (const char *dir)
{
  int fd = open (dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), r;

  if (fd == -1)
    return -1;
  r = fsync (fd);
  close (fd);
  return r;
}

/* Give the new partial file fd a cookie. */
static void
copy_cookie_set (int fd, char *cookie, size_t len)
{
  uint64_t rnd;

  if (getrandom (&rnd, sizeof rnd, 0) == (ssize_t) sizeof rnd) {
    snprintf (cookie, len, "x%016" PRIx64, rnd);
    if (fsetxattr (fd, COOKIE_XATTR, cookie + 1, 16, 0) == 0)
      return;
  }
  copy_cookie_get (fd, "b", cookie, len);
}

static int
copy_record_write (struct merge *mg, const char *record, const struct copy_rec *cr,
                   const char *to)
{
  char tmp[PATH_MAX + 8];
  FILE *f;
  int ok;

  snprintf (tmp, sizeof tmp, "%s.tmp", record);
  if (!(f = fopen (tmp, "we")))
    return -1;
  fprintf (f, "%ju %ju %" PRIu64 " %" PRIu32 " %" PRIu64 " %s %s\n", cr->dev, cr->ino,
           cr->done, cr->gen, cr->size, cr->cookie, to);
  ok = fflush (f) == 0 && fsync (fileno (f)) == 0;
  if (fclose (f) != 0 || !ok || rename (tmp, record) == -1) {
    int e = errno;
    unlink (tmp);
    errno = e;
    return -1;
  }
  return fsync_dir (mg->state_dir);
}

/* 0 with the record's fields, or -1 (none, or unreadable). */
static int
copy_record_read (const char *record, struct copy_rec *cr, char *to, size_t len)
{
  FILE *f = fopen (record, "re");
  char line[PATH_MAX + 128];
  int n = -1;

  if (!f)
    return -1;
  if (fgets (line, sizeof line, f) &&
      sscanf (line, "%ju %ju %" SCNu64 " %" SCNu32 " %" SCNu64 " %39s %n", &cr->dev,
              &cr->ino, &cr->done, &cr->gen, &cr->size, cr->cookie, &n) == 6 && n > 0 &&
      line[n] == '/') {
    line[strcspn (line, "\n")] = '\0';
    snprintf (to, len, "%s", line + n);
    n = 0;
  }
  else
    n = -1;
  fclose (f);
  return n;
}

/* Record the partial file and its durable progress.  Only a copy started
 * again needs the record: failing to write it (the state directory's
 * filesystem is full) is logged, and the copy goes on. */
static void
copy_record (struct job *j, const struct stat *st, uint64_t done)
{
  struct copy_rec cr = { st->st_dev, st->st_ino, done, cor_disk_size (j->d), j->gen, "" };

  snprintf (cr.cookie, sizeof cr.cookie, "%s", j->cookie);

  if (copy_record_write (j->mg, j->record, &cr, j->to) == -1)
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

/* Copy n bytes (at most COPY_PIECE) at off from the disk to the partial
 * file; a zero piece is left a hole, or punched where the file may hold
 * older data (punch).  0 or -1 (set_error). */
static int
copy_piece (struct job *j, char *buf, uint64_t off, size_t n, bool punch)
{
  int err = 0;

  if (cor_read (j->d, buf, n, off, &err) != (ssize_t) n) {
    set_error (j, "reading the disk at offset %" PRIu64 ": %s", off, strerror (err ? err : EIO));
    return -1;
  }
  if (!is_zero (buf, n) ? full_pwrite (j->fd, buf, n, off) == -1
      : punch && copy_zero (j->fd, off, n) == -1) {
    set_error (j, "%s: write at offset %" PRIu64 ": %s", j->partial, off, strerror (errno));
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

/* A copy started again continues at j->start, but the disk may have been
 * written in [0, j->start) since those bytes were copied: copy again what
 * changed since the recorded generation j->gen.  1 if that cannot be
 * known (no generation recorded, or the index no longer has it: the copy
 * starts over), 0 when done, -1 on failure (set_error). */
static int
copy_changed (struct job *j, char *buf)
{
  struct cor_disk *d = j->d;
  unsigned shift = cor_disk_block_shift (d);
  struct extents x = { NULL, 0, 0 };
  bool widened;
  int r = 0;

  if (j->gen == 0 || cor_changed_extents (d, j->gen, &widened, add_extent, &x) == -1) {
    free (x.v);
    return 1;
  }
  for (size_t i = 0; i < x.n && r == 0; i++) {
    uint64_t off = x.v[i][0] << shift, end = (x.v[i][0] + x.v[i][1]) << shift;
    if (end > j->start)
      end = j->start;
    for (; off < end && r == 0; off += COPY_PIECE) {
      if (!keep_going (j))
        r = -1;
      else
        r = copy_piece (j, buf, off, end - off < COPY_PIECE ? end - off : COPY_PIECE, true);
    }
  }
  if (r == 0 && x.n > 0)
    log_info ("merge: disk %s: the copy to %s copied again %zu extents written since its "
              "last run", cor_disk_name (d), j->to, x.n);
  free (x.v);
  return r;
}

/* Drop what the partial file holds from `from` on (a crashed run may have
 * written past its durable point): it reads zeros there, as the disk's
 * holes must. */
static int
copy_truncate (struct job *j, uint64_t from)
{
  return ftruncate (j->fd, from) == -1 || ftruncate (j->fd, cor_disk_size (j->d)) == -1
    ? -1 : 0;
}

/* Before the first byte is read: a checkpoint, so that the changed maps
 * say from here on what a copy started again must read afresh; then, for
 * a continued copy, what changed since its last run.  Without the
 * checkpoint (the index's filesystem is full, or the disk stayed busy
 * past the hold) the copy still runs, only it cannot be continued: a
 * copy started again starts over.  0 or -1. */
static int
copy_prepare (struct job *j, char *buf)
{
  char msg[512];
  uint32_t gen = cor_checkpoint (j->d, msg, sizeof msg);
  int r = 0;

  if (gen == 0)
    log_warn ("merge: disk %s: the copy to %s goes on without a checkpoint (%s): if it "
              "is interrupted, the next copy starts over", cor_disk_name (j->d), j->to, msg);
  if (j->start > 0 && (r = copy_changed (j, buf)) == 1) {
    log_info ("merge: disk %s: the copy to %s starts over: what changed since its last "
              "run is not known", cor_disk_name (j->d), j->to);
    j->start = 0;
    /* The record must never claim more than the file holds: it goes
     * first (rewritten at the next checkpoint). */
    if ((unlink (j->record) == -1 && errno != ENOENT) || copy_truncate (j, 0) == -1) {
      set_error (j, "%s: %s", j->partial, strerror (errno));
      return -1;
    }
  }
  if (r == -1)
    return -1;
  /* [0, start) is current as of gen now, once durable. */
  j->gen = gen;
  if (j->start > 0 && copy_checkpoint (j, j->start) == -1) {
    set_error (j, "%s: %s", j->partial, strerror (errno));
    return -1;
  }
  return 0;
}

static void
run_copy (struct job *j)
{
  struct cor_disk *d = j->d;
  uint64_t size = cor_disk_size (d), off, checkpoint;
  char *buf = malloc (COPY_PIECE);

  if (!buf) {
    set_error (j, "out of memory");
    off = checkpoint = 0;
    goto fail;
  }
  off = checkpoint = j->start;
  if (copy_prepare (j, buf) == -1) {
    if (!keep_going (j))
      goto out;                 /* the daemon is stopping */
    goto fail;
  }
  off = checkpoint = j->start;
  if (j->start)
    log_info ("merge: disk %s: continuing the copy to %s at offset %" PRIu64,
              cor_disk_name (d), j->to, j->start);
  while (off < size) {
    size_t n = size - off < COPY_PIECE ? size - off : COPY_PIECE;
    if (!keep_going (j))
      goto out;
    /* Past start the file is all holes (copy_truncate): no punching. */
    if (copy_piece (j, buf, off, n, false) == -1)
      goto fail;
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
  /* Whole and durable: only now may it replace FILE (without the cookie,
   * which only a partial file needs). */
  if (j->cookie[0] == 'x')
    fremovexattr (j->fd, COOKIE_XATTR);
  if (fsync (j->fd) == -1 || close (j->fd) == -1) {
    j->fd = -1;
    set_error (j, "%s: %s", j->partial, strerror (errno));
    goto fail;
  }
  j->fd = -1;
  if (renameat (j->dirfd, j->pbase, j->dirfd, j->base) == -1 || fsync (j->dirfd) == -1) {
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
    j->repin_pending = true;
    pthread_mutex_unlock (&j->mg->lock);
    return;
  }
  /* A mirror writes its parent itself: it keeps accepting its writes. */
  remote_set_modifying (cor_disk_remote (d), rec.mirror);
}

static void *
job_thread (void *arg)
{
  struct job *j = arg;

  switch (j->kind) {
  case K_MERGE:
    run_merge (j);
    if (j->wrote)
      repin_after_merge (j);
    break;
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

static int
refuse_state_dir (struct merge *mg, const char *to, char *errbuf, size_t len)
{
  snprintf (errbuf, len, "--to %s is in the state directory %s: refusing to replace "
            "the daemon's own files", to, mg->state_dir);
  return -1;
}

/* Open the directory dir (canonical: realpath's answer) one component at
 * a time, never through a symlink (a component swapped for one since
 * realpath fails), and refuse it if it or any directory above it is the
 * state directory by device and inode: a bind mount of the state
 * directory has another name but the same inode.  An fd, or -1 (errbuf). */
static int
open_target_dir (struct merge *mg, const char *dir, const char *to, char *errbuf, size_t len)
{
  char buf[PATH_MAX], *save = NULL;
  const char *comp;
  int fd = open ("/", O_PATH | O_DIRECTORY | O_CLOEXEC), next;
  struct stat st;

  snprintf (buf, sizeof buf, "%s", dir);
  for (comp = strtok_r (buf, "/", &save);; comp = strtok_r (NULL, "/", &save)) {
    if (fd == -1 || fstat (fd, &st) == -1) {
      snprintf (errbuf, len, "--to %s: opening the directory %s: %s", to, dir,
                strerror (errno));
      if (fd >= 0)
        close (fd);
      return -1;
    }
    if (st.st_dev == mg->state_dev && st.st_ino == mg->state_ino) {
      close (fd);
      return refuse_state_dir (mg, to, errbuf, len);
    }
    /* O_PATH on the way (search permission is enough), a real fd for
     * the directory itself (fsync needs one). */
    next = comp ? openat (fd, comp, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
      : openat (fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (!comp && next >= 0) {
      close (fd);
      return next;
    }
    int e = errno;
    close (fd);
    fd = next;
    errno = e;
  }
}

static const char *
file_type_name (mode_t m)
{
  return S_ISDIR (m) ? "a directory" : S_ISLNK (m) ? "a symlink" : S_ISBLK (m) ?
    "a block device" : S_ISCHR (m) ? "a character device" : S_ISFIFO (m) ? "a FIFO" :
    S_ISSOCK (m) ? "a socket" : "not a regular file";
}

/* Resolve and check a copy target for j: j->to (canonical), j->partial,
 * j->dirfd (its directory, opened once: every later step is relative to
 * it), j->base and j->pbase.  Refused: a target in the state directory
 * (index, overlays, socket, log, records; by name, and by inode through
 * any alias), the file:// parent (by name, through a symlink, or by
 * inode), and an existing FILE that is not a regular file (a device, or
 * a symlink such as /dev/vg/lv, would be replaced by a file).  0 or -1
 * (errbuf). */
static int
copy_target_check (struct merge *mg, struct cor_disk *d, struct job *j, const char *to,
                   char *errbuf, size_t len)
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
  if (asprintf (&j->to, "%s/%s", strcmp (rdir, "/") ? rdir : "", base) == -1 ||
      asprintf (&j->partial, "%s.partial", j->to) == -1) {
    j->to = j->partial = NULL;
    snprintf (errbuf, len, "out of memory");
    return -1;
  }
  j->base = strrchr (j->to, '/') + 1;
  j->pbase = strrchr (j->partial, '/') + 1;
  if (path_within (j->to, mg->state_dir))
    return refuse_state_dir (mg, to, errbuf, len);
  if ((j->dirfd = open_target_dir (mg, rdir, to, errbuf, len)) == -1)
    return -1;
  bool exists = fstatat (j->dirfd, j->base, &st, AT_SYMLINK_NOFOLLOW) == 0;
  if (!strcmp (remote_backend (r), "file")) {
    const char *ppath = remote_url (r) + strlen ("file://");
    bool same = !strcmp (j->to, ppath) ||
      (exists && realpath (j->to, rto) && !strcmp (rto, ppath));
    if (!same && exists && stat (ppath, &pst) == 0)
      same = st.st_dev == pst.st_dev && st.st_ino == pst.st_ino;
    if (!same && realpath (ppath, rto))
      same = !strcmp (j->to, rto);
    if (same) {
      snprintf (errbuf, len, "--to %s is the disk's parent %s: refusing to replace it",
                to, remote_url (r));
      return -1;
    }
  }
  if (exists && !S_ISREG (st.st_mode)) {
    snprintf (errbuf, len, "--to %s exists and is %s: refusing to replace it with the "
              "copy (remove it, or name a regular file)", to, file_type_name (st.st_mode));
    return -1;
  }
  return 0;
}

/* Does j->fd carry the cookie of record cr?  (Kept in j->cookie.) */
static bool
cookie_matches (struct job *j, const struct copy_rec *cr)
{
  copy_cookie_get (j->fd, cr->cookie, j->cookie, sizeof j->cookie);
  return strcmp (j->cookie, cr->cookie) == 0;
}

/* Open the partial file of a copy to `to` for j: a new one (O_EXCL, never
 * through a symlink, 0600, its name made durable), or the one this disk's
 * earlier copy to the same file left, if its device and inode are still
 * the recorded ones.  Opened non-blocking and checked to be a regular
 * file first: a FIFO or a device put there is refused, never waited on.
 * 0 or -1 (errbuf). */
static int
copy_open (struct merge *mg, struct cor_disk *d, struct job *j, const char *to,
           char *errbuf, size_t len)
{
  char rec_to[PATH_MAX + 256];
  struct copy_rec cr;
  uint64_t size = cor_disk_size (d);
  struct stat st;
  const int flags = O_WRONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK;

  j->d = d;
  j->mg = mg;
  if (copy_target_check (mg, d, j, to, errbuf, len) == -1)
    return -1;
  if (asprintf (&j->record, "%s/%s.copy", mg->state_dir, cor_disk_name (d)) == -1) {
    j->record = NULL;
    snprintf (errbuf, len, "out of memory");
    return -1;
  }
  j->fd = openat (j->dirfd, j->pbase, flags | O_CREAT | O_EXCL, 0600);
  if (j->fd >= 0) {
    fcntl (j->fd, F_SETFL, O_WRONLY);
    copy_cookie_set (j->fd, j->cookie, sizeof j->cookie);
    if (fstat (j->fd, &st) == -1 || ftruncate (j->fd, size) == -1 || fsync (j->fd) == -1 ||
        fsync (j->dirfd) == -1) {
      snprintf (errbuf, len, "%s: %s", j->partial, strerror (errno));
      close (j->fd);
      j->fd = -1;
      unlinkat (j->dirfd, j->pbase, 0);
      return -1;
    }
    copy_record (j, &st, 0);
    return 0;
  }
  if (errno != EEXIST) {
    snprintf (errbuf, len, "%s: %s", j->partial, strerror (errno));
    return -1;
  }
  /* It exists: continue it only if it is the one we recorded. */
  if (copy_record_read (j->record, &cr, rec_to, sizeof rec_to) == -1 ||
      strcmp (rec_to, j->to) != 0 ||
      fstatat (j->dirfd, j->pbase, &st, AT_SYMLINK_NOFOLLOW) == -1 || !S_ISREG (st.st_mode) ||
      st.st_dev != cr.dev || st.st_ino != cr.ino ||
      (j->fd = openat (j->dirfd, j->pbase, flags)) == -1 ||
      fstat (j->fd, &st) == -1 || !S_ISREG (st.st_mode) ||
      st.st_dev != cr.dev || st.st_ino != cr.ino || !cookie_matches (j, &cr)) {
    snprintf (errbuf, len, "%s exists and is not the partial copy that disk %s left "
              "there: remove it to copy to %s", j->partial, cor_disk_name (d), j->to);
    return -1;
  }
  fcntl (j->fd, F_SETFL, O_WRONLY);
  /* Continue from the durable point of a copy of this disk (same size);
   * past it the file is dropped (copy_truncate), so a hole in the disk
   * reads zeros in the copy whatever the last run left there. */
  j->start = cr.size == size && cr.done <= size ? cr.done : 0;
  j->gen = cr.gen;
  if (copy_truncate (j, j->start) == -1) {
    snprintf (errbuf, len, "%s: %s", j->partial, strerror (errno));
    return -1;
  }
  return 0;
}

/* Unlist j (a job that never started). */
static void
unlist (struct merge *mg, struct job *j)
{
  pthread_mutex_lock (&mg->lock);
  for (struct job **pp = &mg->jobs; *pp; pp = &(*pp)->next)
    if (*pp == j) {
      *pp = j->next;
      break;
    }
  pthread_mutex_unlock (&mg->lock);
}

/* Start a job of kind on d (replacing a finished one).  The new job is
 * listed first, as starting, so that a job started meanwhile from another
 * thread (flatten runs on one of ctl's job threads) is refused; then a
 * copy's target is opened, without mg->lock.  0 or -1 (errbuf). */
static int
start_job (struct merge *mg, struct cor_disk *d, enum kind kind, uint64_t rate,
           const char *to, char *errbuf, size_t len)
{
  struct job *j, *old, **pp;

  if (!(j = calloc (1, sizeof *j))) {
    snprintf (errbuf, len, "out of memory");
    return -1;
  }
  j->fd = j->dirfd = -1;
  j->mg = mg;
  j->d = d;
  j->kind = kind;
  j->state = J_STARTING;
  pthread_mutex_lock (&mg->lock);
  old = find_job_unlocked (mg, d);
  if (old && !finished (old->state)) {
    snprintf (errbuf, len, "disk %s: a %s job is %s", cor_disk_name (d),
              kind_names[old->kind], state_names[old->state]);
    pthread_mutex_unlock (&mg->lock);
    free (j);
    return -1;
  }
  if (old) {
    for (pp = &mg->jobs; *pp != old; pp = &(*pp)->next)
      ;
    *pp = old->next;
  }
  j->next = mg->jobs;
  mg->jobs = j;
  pthread_mutex_unlock (&mg->lock);
  if (old) {
    pthread_join (old->thread, NULL);
    job_free (old);
  }
  if (to && copy_open (mg, d, j, to, errbuf, len) == -1) {
    unlist (mg, j);
    job_free (j);
    return -1;
  }
  pthread_mutex_lock (&mg->lock);
  j->rate = rate == UINT64_MAX ? 0 : rate;
  j->total = kind == K_MERGE ? remaining_bytes (d) : cor_disk_size (d);
  j->done = j->start;
  j->state = J_RUNNING;
  if (thread_create_nosig (&j->thread, job_thread, j) == -1) {
    pthread_mutex_unlock (&mg->lock);
    snprintf (errbuf, len, "cannot start a thread: %s", strerror (errno));
    unlist (mg, j);
    job_free (j);
    return -1;
  }
  j->started = true;
  pthread_mutex_unlock (&mg->lock);
  return 0;
}

/* Before a merge starts again on d: wait for the previous merge's thread
 * (a cancel returns before it stops writing and re-pins the parent) and
 * free it.  True if that merge could not re-pin the parent. */
static bool
settle_old_merge (struct merge *mg, struct cor_disk *d)
{
  struct job *old;
  bool pending;

  pthread_mutex_lock (&mg->lock);
  old = find_job_unlocked (mg, d);
  if (!old || old->kind != K_MERGE || !finished (old->state) || !old->started) {
    pthread_mutex_unlock (&mg->lock);
    return false;
  }
  for (struct job **pp = &mg->jobs; *pp; pp = &(*pp)->next)
    if (*pp == old) {
      *pp = old->next;
      break;
    }
  pthread_mutex_unlock (&mg->lock);
  pthread_join (old->thread, NULL);
  pending = old->repin_pending;
  job_free (old);
  return pending;
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
    if (!j || j->kind != K_MERGE || finished (j->state) || j->state == J_STARTING)
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
  if (j && j->kind == K_MERGE && !finished (j->state) && j->state != J_STARTING) {
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
              "parent", cor_disk_name (d), meta_state_name (rec.state));
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
  /* The parent must still be the pinned image before the merge turns the
   * identity check off for its own writes (remote_set_modifying): a
   * swap not yet noticed would be adopted by the first reconnect, and
   * written into.  After a merge that stopped before synced and could not
   * re-pin, the parent moved by our own writes is pinned now instead
   * (never adopting one found changed). */
  char id[META_ID_MAX];
  if (settle_old_merge (mg, d)
      ? remote_repin (cor_disk_remote (d), false, cor_disk_size (d), id, sizeof id,
                      now_ns () + SETUP_DEADLINE_NS, &err) == -1
      : remote_verify (cor_disk_remote (d), NULL, now_ns () + SETUP_DEADLINE_NS, &err) == -1) {
    char why[1280];
    remote_status (cor_disk_remote (d), why, sizeof why);
    snprintf (errbuf, len, "disk %s: merge refused: parent %s %s: %s", cor_disk_name (d),
              rec.url, err == ESTALE ? "is not the pinned image" : "cannot be checked",
              *why ? why : strerror (err));
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
              cor_disk_name (d), meta_state_name (rec.state),
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
