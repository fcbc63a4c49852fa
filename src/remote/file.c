/* corfs: file:// parents (a local image).
 *
 * Notes on the thread model: called from any thread concurrently.  A
 * file has no connections, so no pool (pool.c): one fd, opened lazily
 * under h->lock, serves every thread with pread(2)/pwrite(2), each use
 * holding h->fd_lock for reading; closing it (release, which re-pin also
 * calls, and make_writable) holds it for writing, so it waits for the
 * uses in flight and no thread can be left with a closed fd whose number
 * the process reused for something else.  Lock order: fd_lock, then
 * lock; both are below the remote wrappers' (which hold none across a
 * backend call).
 *
 * Identity: device, inode, size and mtime (docs/design.md rule 9).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "remote/remote-internal.h"

struct rfile {
  char *path;
  bool writable;
  pthread_rwlock_t fd_lock;     /* read: using fd; write: closing it */
  pthread_mutex_t lock;         /* protects fd and size while opening */
  int fd;                       /* -1 until opened */
  int64_t size;
};

static bool
rfile_handles (const char *url)
{
  return strncmp (url, "file://", 7) == 0;
}

static int
rfile_open (struct remote *r, const struct remote_config *cfg, void **hp, int *err)
{
  const char *path = cfg->url + 7;
  struct rfile *h;

  if (path[0] != '/') {
    log_error ("rfile: disk %s: file URL must be file:///ABSOLUTE/PATH, got %s",
               cfg->disk, cfg->url);
    *err = EINVAL;
    return -1;
  }
  h = calloc (1, sizeof *h);
  if (!h || !(h->path = strdup (path))) {
    free (h);
    *err = ENOMEM;
    return -1;
  }
  h->fd = -1;
  h->writable = cfg->writable;
  pthread_mutex_init (&h->lock, NULL);
  pthread_rwlock_init (&h->fd_lock, NULL);
  *hp = h;
  return 0;
}

static void
rfile_close (void *hv)
{
  struct rfile *h = hv;

  if (h->fd >= 0)
    close (h->fd);
  pthread_mutex_destroy (&h->lock);
  pthread_rwlock_destroy (&h->fd_lock);
  free (h->path);
  free (h);
}

/* Open the file and compute its identity into id.  The fd (*sizep: the
 * size), or -1 with *err. */
static int
file_open_identify (struct remote *r, struct rfile *h, char *id, size_t len,
                    int64_t *sizep, int *err)
{
  struct stat st;
  /* O_NONBLOCK: a FIFO (or a device that waits for a peer) at the path
   * must not block the open without a deadline; such parents are refused
   * below, and the flag is cleared for the rest. */
  int fd = open (h->path, (h->writable ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NONBLOCK);

  if (fd == -1 || fstat (fd, &st) == -1) {
    *err = errno;
    remote_note_error (r, "open %s: %m", h->path);
    if (fd >= 0)
      close (fd);
    return -1;
  }
  if (S_ISBLK (st.st_mode)) {
    st.st_size = lseek (fd, 0, SEEK_END);
    if (st.st_size == -1) {
      *err = errno;
      remote_note_error (r, "size of %s: %m", h->path);
      close (fd);
      return -1;
    }
  }
  else if (!S_ISREG (st.st_mode)) {
    *err = EINVAL;
    remote_note_error (r, "%s is not a regular file or block device", h->path);
    close (fd);
    return -1;
  }
  if (fcntl (fd, F_SETFL, fcntl (fd, F_GETFL) & ~O_NONBLOCK) == -1) {
    *err = errno;
    remote_note_error (r, "%s: %m", h->path);
    close (fd);
    return -1;
  }
  if (remote_check_size (r, h->path, st.st_size, err) == -1) {
    close (fd);
    return -1;
  }
  snprintf (id, len, "file:dev=%" PRIu64 ",ino=%" PRIu64 ",size=%" PRIu64
            ",mtime=%" PRId64 ".%09ld", (uint64_t) st.st_dev, (uint64_t) st.st_ino,
            (uint64_t) st.st_size, (int64_t) st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
  *sizep = st.st_size;
  return fd;
}

/* Open the file if not yet open; returns the fd or -1 with *err. */
static int
rfile_connect (struct remote *r, struct rfile *h, int *err)
{
  char id[256];
  int64_t size;
  int fd, ret;

  pthread_mutex_lock (&h->lock);
  if (h->fd >= 0) {
    ret = h->fd;
    goto out;
  }
  fd = file_open_identify (r, h, id, sizeof id, &size, err);
  if (fd == -1) {
    ret = -1;
    goto out;
  }
  if (remote_check_identity (r, id, err) == -1) {
    close (fd);
    ret = -1;
    goto out;
  }
  h->fd = ret = fd;
  h->size = size;
  remote_note_connected (r, false);
 out:
  pthread_mutex_unlock (&h->lock);
  return ret;
}

/* The fd for one use, with fd_lock held for reading; rfile_put after. */
static int
rfile_get (struct remote *r, struct rfile *h, int *err)
{
  int fd;

  pthread_rwlock_rdlock (&h->fd_lock);
  fd = rfile_connect (r, h, err);
  if (fd == -1)
    pthread_rwlock_unlock (&h->fd_lock);
  return fd;
}

static void
rfile_put (struct rfile *h)
{
  pthread_rwlock_unlock (&h->fd_lock);
}

static int64_t
rfile_get_size (struct remote *r, void *hv, uint64_t deadline_ns, int *err)
{
  struct rfile *h = hv;

  int64_t size;

  if (rfile_get (r, h, err) == -1)
    return -1;
  size = h->size;
  rfile_put (h);
  return size;
}

/* A new open: the path may name another file than the open fd. */
static int64_t
rfile_identify (struct remote *r, void *hv, uint64_t deadline_ns, char *id, size_t len,
                int *err)
{
  int64_t size;
  int fd = file_open_identify (r, hv, id, len, &size, err);

  if (fd == -1)
    return -1;
  close (fd);
  return size;
}

static int
rfile_pread (struct remote *r, void *hv, void *buf, size_t count,
             uint64_t offset, uint64_t deadline_ns, int *err)
{
  struct rfile *h = hv;
  int fd = rfile_get (r, h, err), ret = 0;

  if (fd == -1)
    return -1;
  if (full_pread (fd, buf, count, offset) == -1) {
    *err = errno;
    remote_note_error (r, "pread %zu bytes at offset %" PRIu64 ": %m", count, offset);
    ret = -1;
  }
  rfile_put (h);
  return ret;
}

/* Holes of a local file read as zeros (lseek SEEK_HOLE/SEEK_DATA). */
static int
rfile_zero_extents (struct remote *r, void *hv, uint64_t offset, uint64_t count,
                    uint64_t deadline_ns, struct remote_extent **v, size_t *n,
                    int *err)
{
  struct rfile *h = hv;
  uint64_t end = offset + count, pos = offset;
  int fd = rfile_get (r, h, err), ret = 0;

  if (fd == -1)
    return -1;
  while (pos < end) {
    off_t hole = lseek (fd, pos, SEEK_HOLE), data;
    if (hole == -1)
      break;                    /* ENXIO: past the end; else cannot tell */
    if ((uint64_t) hole >= end || (uint64_t) hole >= (uint64_t) h->size)
      break;
    data = lseek (fd, hole, SEEK_DATA);
    if (data == -1 && errno != ENXIO)
      break;
    uint64_t hend = data == -1 ? (uint64_t) h->size : (uint64_t) data;
    if (hend > end)
      hend = end;
    if (remote_extent_append (v, n, hole, hend - hole) == -1) {
      *err = ENOMEM;
      ret = -1;
      break;
    }
    pos = hend;
  }
  rfile_put (h);
  return ret;
}

static void
rfile_release (void *hv)
{
  struct rfile *h = hv;

  pthread_rwlock_wrlock (&h->fd_lock);
  pthread_mutex_lock (&h->lock);
  if (h->fd >= 0) {
    close (h->fd);
    h->fd = -1;
  }
  pthread_mutex_unlock (&h->lock);
  pthread_rwlock_unlock (&h->fd_lock);
}

static int
rfile_pwrite (struct remote *r, void *hv, const void *buf, size_t count,
              uint64_t offset, uint64_t deadline_ns, int *err)
{
  struct rfile *h = hv;
  int fd;

  if (!h->writable) {
    *err = EROFS;
    return -1;
  }
  if ((fd = rfile_get (r, h, err)) == -1)
    return -1;
  if (full_pwrite (fd, buf, count, offset) == -1) {
    *err = errno;
    remote_note_error (r, "pwrite %zu bytes at offset %" PRIu64 ": %m", count, offset);
    rfile_put (h);
    return -1;
  }
  rfile_put (h);
  return 0;
}

/* A punched hole reads as zeros (a block device zeroes the range, or
 * refuses: EOPNOTSUPP, and the wrapper writes zeros). */
static int
rfile_zero (struct remote *r, void *hv, uint64_t offset, uint64_t count,
            uint64_t deadline_ns, int *err)
{
  struct rfile *h = hv;
  int fd, ret = 0;

  if (!h->writable) {
    *err = EROFS;
    return -1;
  }
  if ((fd = rfile_get (r, h, err)) == -1)
    return -1;
  if (fallocate (fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, count) == -1) {
    *err = errno == EOPNOTSUPP || errno == ENOSYS ? EOPNOTSUPP : errno;
    if (*err != EOPNOTSUPP)
      remote_note_error (r, "punching %" PRIu64 " bytes at offset %" PRIu64 ": %m",
                         count, offset);
    ret = -1;
  }
  rfile_put (h);
  return ret;
}

static int
rfile_flush (struct remote *r, void *hv, bool all, uint64_t deadline_ns, int *err)
{
  struct rfile *h = hv;
  int fd = rfile_get (r, h, err), ret = 0;

  if (fd == -1)
    return -1;
  if (fdatasync (fd) == -1) {
    /* The kernel reports a writeback error to one fdatasync on this file
     * description only: the next one, a retry or another flusher's, gets
     * 0 although the writes issued before now may be lost.  So tell the
     * wrapper, which fails every flush that must cover them. */
    *err = errno;
    remote_note_lost_writes (r, now_ns ());
    remote_note_error (r, "fdatasync: %m");
    ret = -1;
  }
  rfile_put (h);
  return ret;
}

static int
rfile_make_writable (struct remote *r, void *hv, uint64_t deadline_ns, int *err)
{
  struct rfile *h = hv;

  int fd;

  pthread_rwlock_wrlock (&h->fd_lock);
  pthread_mutex_lock (&h->lock);
  if (!h->writable) {
    h->writable = true;
    if (h->fd >= 0) {           /* reopen read-write on next use */
      close (h->fd);
      h->fd = -1;
    }
  }
  pthread_mutex_unlock (&h->lock);
  pthread_rwlock_unlock (&h->fd_lock);
  if ((fd = rfile_get (r, h, err)) == -1)
    return -1;
  rfile_put (h);
  return 0;
}

/* Not access(W_OK), which is always true for root: the mode's write bits
 * and whether the filesystem is mounted read-write. */
static int
rfile_parent_writable (struct remote *r, void *hv, uint64_t deadline_ns, int *err)
{
  struct rfile *h = hv;
  struct stat st;
  struct statvfs sv;

  if (stat (h->path, &st) == -1 || statvfs (h->path, &sv) == -1) {
    *err = errno;
    return -1;
  }
  return (st.st_mode & 0222) && !(sv.f_flag & ST_RDONLY);
}

/* fdatasync makes the whole file stable, whoever wrote it. */
static int
rfile_flush_covers_all (struct remote *r, void *hv, uint64_t deadline_ns, int *err)
{
  return 1;
}

const struct remote_ops rfile_ops = {
  .parent_writable = rfile_parent_writable,
  .pwrite = rfile_pwrite,
  .zero = rfile_zero,
  .flush = rfile_flush,
  .flush_covers_all = rfile_flush_covers_all,
  .make_writable = rfile_make_writable,
  .zero_extents = rfile_zero_extents,
  .release = rfile_release,
  .name = "file",
  .handles = rfile_handles,
  .open = rfile_open,
  .close = rfile_close,
  .get_size = rfile_get_size,
  .identify = rfile_identify,
  .pread = rfile_pread,
};
