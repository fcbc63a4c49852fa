/* corfs: the FUSE low-level frontend.
 *
 * Notes on the thread model: libfuse's multi-threaded loop runs the
 * handlers below on a pool of worker threads, many at once (up to
 * FS_MAX_THREADS, see fs_run); every handler
 * calls into the engine (which has its own locking) and replies exactly
 * once, holding no lock.  The engine and the disk list do not change while
 * the session runs, so the handlers read them without locks.
 *
 * Inode numbers: 1 is the root directory, 2 + i is the engine's disk i.
 *
 * Caching: an O_DIRECT open gets direct_io (hypervisors' cache=none); a
 * buffered open keeps the page cache (only this daemon changes the disk).
 * Locks (POSIX, OFD, flock) are left to the kernel, which then handles
 * them locally: that is what QEMU's image locking needs on one host.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fs/fs-fuse.h"
#include "common/iobuf.h"
#include "common/log.h"
#include "cor/cor.h"
#include "fs/fs.h"
#include "fs/fs-internal.h"

#define ATTR_TIMEOUT 1.0

/* Background requests the kernel may have outstanding (readahead, async
 * direct I/O); set in fs_init.  Those beyond it wait in the kernel, where
 * no hold applies: at 64, libaio at queue depth 200 on a stalled parent
 * got its EIOs 64 per hold period.  Kept below FS_MAX_THREADS so that
 * synchronous requests still find workers. */
#define FS_MAX_BACKGROUND 192

/* Worker threads at most.  Every request a worker has not picked up
 * waits in the kernel's queue, where no hold applies: with libfuse's
 * default of 10 workers, 30 concurrent reads of a stalled parent ended
 * at 1, 2 and 3 times the hold.  Each blocked guest request holds one
 * worker, so there must be one for every request that can be in flight:
 * all the background ones plus synchronous ones from many callers (a
 * hypervisor's I/O threads, several VMs).  Idle workers above
 * FS_IDLE_THREADS exit, so the cost of the limit is paid only while
 * requests wait; beyond it, requests queue again. */
#define FS_MAX_THREADS (FS_MAX_BACKGROUND + 64)
#define FS_IDLE_THREADS 16


static struct cor_disk *
ino_disk (struct fs *fs, fuse_ino_t ino)
{
  if (ino < 2)
    return NULL;
  return cor_disk_get (fs->e, ino - 2);
}

static void
fill_attr (struct fs *fs, fuse_ino_t ino, struct stat *st)
{
  struct cor_disk *d = ino_disk (fs, ino);

  memset (st, 0, sizeof *st);
  st->st_ino = ino;
  st->st_uid = getuid ();
  st->st_gid = getgid ();
  st->st_atim = st->st_mtim = st->st_ctim = fs->mount_time;
  if (ino == FUSE_ROOT_ID) {
    st->st_mode = S_IFDIR | 0755;
    st->st_nlink = 2;
    return;
  }
  /* The stored mode, whatever the owner state: a read-only state is
   * enforced with EROFS (fs_open, cor_write), never through the mode,
   * which with default_permissions would refuse the O_RDWR open QEMU
   * makes of an incoming disk (docs/design.md) with EACCES. */
  uint32_t mode, uid, gid;
  cor_disk_attr (d, &mode, &uid, &gid);
  st->st_mode = S_IFREG | mode;
  st->st_uid = uid;
  st->st_gid = gid;
  st->st_nlink = 1;
  st->st_size = cor_disk_size (d);
  st->st_blksize = 4096;
  st->st_blocks = cor_disk_allocated (d) / 512;
}

static void
fs_init (void *userdata, struct fuse_conn_info *conn)
{
  /* Guests issue large requests; let the kernel send up to 1 MiB. */
  conn->max_write = 1 << 20;
  conn->max_readahead = 1 << 20;
  if (conn->capable & FUSE_CAP_ASYNC_DIO)
    conn->want |= FUSE_CAP_ASYNC_DIO;
  /* Readahead and async direct I/O put many reads in flight at once;
   * the kernel's default (12 background requests) would serialise them
   * behind slow parent fetches. */
  conn->max_background = FS_MAX_BACKGROUND;
  conn->congestion_threshold = FS_MAX_BACKGROUND * 3 / 4;
  /* Writeback caching would acknowledge writes before they reach us. */
  conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
  /* libfuse wants -o max_read both as a mount option and here, or it
   * fails INIT with EPROTO ("init() and fuse_session_new() requested
   * different maximum read size") and the loop ends at once. */
  conn->max_read = ((struct fs *) userdata)->max_read;
}

static void
fs_lookup (fuse_req_t req, fuse_ino_t parent, const char *name)
{
  struct fs *fs = fuse_req_userdata (req);
  struct fuse_entry_param e;

  if (parent != FUSE_ROOT_ID)
    return (void) fuse_reply_err (req, ENOENT);
  for (size_t i = 0; i < cor_disk_count (fs->e); i++) {
    if (strcmp (cor_disk_name (cor_disk_get (fs->e, i)), name) == 0) {
      memset (&e, 0, sizeof e);
      e.ino = i + 2;
      e.attr_timeout = e.entry_timeout = ATTR_TIMEOUT;
      fill_attr (fs, e.ino, &e.attr);
      return (void) fuse_reply_entry (req, &e);
    }
  }
  fuse_reply_err (req, ENOENT);
}

static void
fs_getattr (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  struct fs *fs = fuse_req_userdata (req);
  struct stat st;

  if (ino != FUSE_ROOT_ID && !ino_disk (fs, ino))
    return (void) fuse_reply_err (req, ENOENT);
  fill_attr (fs, ino, &st);
  fuse_reply_attr (req, &st, ATTR_TIMEOUT);
}

static void
fs_setattr (fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
            struct fuse_file_info *fi)
{
  struct fs *fs = fuse_req_userdata (req);
  struct cor_disk *d = ino_disk (fs, ino);
  struct stat st;

  if (!d)
    return (void) fuse_reply_err (req, ino == FUSE_ROOT_ID ? EPERM : ENOENT);
  /* Growing (truncate, QEMU's block_resize): the new size is durable
   * before this reply tells the kernel (cor_disk_grow, which logs any
   * refusal: shrinking, a mirror, a parent-owned or incoming disk). */
  if ((to_set & FUSE_SET_ATTR_SIZE) && (uint64_t) attr->st_size != cor_disk_size (d)) {
    int err = 0;
    if (attr->st_size < 0 || cor_disk_grow (d, attr->st_size, &err) == -1)
      return (void) fuse_reply_err (req, err ? err : EINVAL);
  }
  /* chmod and chown are recorded in the index and survive remounts (a
   * management stack chowns a disk to the user its VMs run as).  Who may
   * change what is the kernel's check: the mount has default_permissions,
   * so only root changes the owner, and only the owner or root the mode. */
  if ((to_set & FUSE_SET_ATTR_MODE) && (attr->st_mode & (S_ISUID | S_ISGID | S_ISVTX))) {
    /* A disk image is never executed, and only the permission bits are
     * stored: refuse rather than drop the bits silently. */
    log_warn ("fs: disk %s: chmod %04o refused: setuid, setgid and sticky bits are "
              "not supported (only the permission bits 0777)", cor_disk_name (d),
              (unsigned) (attr->st_mode & 07777));
    return (void) fuse_reply_err (req, EPERM);
  }
  if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
    int err = 0;
    if (cor_disk_set_attr (d, to_set & FUSE_SET_ATTR_MODE ? (int64_t) (attr->st_mode & 0777) : -1,
                           to_set & FUSE_SET_ATTR_UID ? (int64_t) attr->st_uid : -1,
                           to_set & FUSE_SET_ATTR_GID ? (int64_t) attr->st_gid : -1,
                           &err) == -1)
      return (void) fuse_reply_err (req, err ? err : EIO);
  }
  /* Time changes are accepted and ignored: the disk has no stored times. */
  fill_attr (fs, ino, &st);
  fuse_reply_attr (req, &st, ATTR_TIMEOUT);
}

static void
fs_readdir (fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
            struct fuse_file_info *fi)
{
  struct fs *fs = fuse_req_userdata (req);
  size_t n = cor_disk_count (fs->e), used = 0;
  char *buf;

  if (ino != FUSE_ROOT_ID)
    return (void) fuse_reply_err (req, ENOTDIR);
  buf = malloc (size);
  if (!buf)
    return (void) fuse_reply_err (req, ENOMEM);
  /* Entries: 0 ".", 1 "..", 2 + i disk i; off is the next entry's index. */
  for (size_t i = off; i < n + 2; i++) {
    struct stat st = { 0 };
    const char *name = i == 0 ? "." : i == 1 ? ".." : cor_disk_name (cor_disk_get (fs->e, i - 2));
    size_t len;
    st.st_ino = i < 2 ? FUSE_ROOT_ID : i;
    st.st_mode = i < 2 ? S_IFDIR : S_IFREG;
    len = fuse_add_direntry (req, buf + used, size - used, name, &st, i + 1);
    if (len > size - used)
      break;
    used += len;
  }
  fuse_reply_buf (req, buf, used);
  free (buf);
}

/* The kernel sizes a FUSE mount's readahead as the smaller of its
 * default (128 KiB) and what INIT asked for, so only a write to the
 * mount's bdi after INIT can raise it; sequential buffered readers (cp,
 * dd, an nbdkit export of the disk) then get 1 MiB requests, several in
 * flight, instead of 128 KiB ones one after another.  Any request after
 * INIT (the kernel holds them until INIT's reply is processed) is late
 * enough: the first open does it.  Best effort: without root or sysfs
 * the mount works with the kernel's default. */
static void
tune_readahead (struct fs *fs)
{
  char path[96];
  FILE *f;

  if (!fs->readahead_kb || !fs->bdi[0] ||
      __atomic_exchange_n (&fs->readahead_set, 1, __ATOMIC_SEQ_CST))
    return;
  snprintf (path, sizeof path, "/sys/class/bdi/%s/read_ahead_kb", fs->bdi);
  if (!(f = fopen (path, "w")) || fprintf (f, "%u\n", fs->readahead_kb) < 0 ||
      fclose (f) == EOF) {
    log_debug ("fs: cannot set the readahead in %s: %m (the kernel's default stays)", path);
    return;
  }
  log_debug ("fs: readahead %u KiB (%s)", fs->readahead_kb, path);
}

/* The "MAJOR:MINOR" of the mount on mountpoint (the newest one there),
 * from /proc/self/mountinfo: asking the mount itself (stat) would need
 * the loop that is not running yet. */
static void
find_bdi (struct fs *fs, const char *mountpoint)
{
  FILE *f = fopen ("/proc/self/mountinfo", "r");
  char *line = NULL;
  size_t n = 0;

  if (!f)
    return;
  while (getline (&line, &n, f) != -1) {
    char dev[32], mnt[4096];
    /* ID PARENT MAJOR:MINOR ROOT MOUNTPOINT ...  A mount point with
     * blanks (escaped there as \040) is not found: default readahead. */
    if (sscanf (line, "%*d %*d %31s %*s %4095s", dev, mnt) == 2 &&
        strcmp (mnt, mountpoint) == 0)
      snprintf (fs->bdi, sizeof fs->bdi, "%s", dev);
  }
  free (line);
  fclose (f);
}

static void
fs_open (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  struct fs *fs = fuse_req_userdata (req);
  struct cor_disk *d = ino_disk (fs, ino);

  tune_readahead (fs);
  if (!d)
    return (void) fuse_reply_err (req, ino == FUSE_ROOT_ID ? EISDIR : ENOENT);
  if (fi->flags & O_TRUNC)
    return (void) fuse_reply_err (req, EPERM);
  if ((fi->flags & O_ACCMODE) != O_RDONLY && !cor_disk_openable_rw (d))
    return (void) fuse_reply_err (req, EROFS);
  if (fi->flags & O_DIRECT)
    fi->direct_io = 1;
  else
    fi->keep_cache = 1;
  /* Remember whether this handle may write: its close must flush. */
  fi->fh = (fi->flags & O_ACCMODE) != O_RDONLY;
  fuse_reply_open (req, fi);
}

static void
reply_early (void *req, const char *data, size_t n)
{
  fuse_reply_buf (req, data, n);
}

/* A cold read replies from the buffer the parent's data arrived in, as
 * soon as it arrives (before it is stored: cor_read_ref's deliver), with
 * no read back from the overlay.  A warm one reads the overlay into
 * a buffer: splicing it into /dev/fuse (fuse_reply_data with an fd
 * buffer) measured 3 to 4 times the CPU per 1 MiB read on this kernel. */
static void
fs_read (fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
         struct fuse_file_info *fi)
{
  struct fs *fs = fuse_req_userdata (req);
  struct cor_disk *d = ino_disk (fs, ino);
  /* A buffered reader has the kernel's readahead (tuned at mount). */
  struct cor_read_ref ref = { .deliver = reply_early, .opaque = req,
                              .kernel_reads_ahead = !(fi->flags & O_DIRECT) };
  char *buf;
  ssize_t n;
  int err = 0;

  if (!d)
    return (void) fuse_reply_err (req, ENOENT);
  n = cor_read_ref (d, size, off, &ref, &err);
  if (n == -1)
    return (void) fuse_reply_err (req, err ? err : EIO);
  if (ref.delivered) {
    cor_read_ref_release (&ref);
    return;
  }
  if (ref.buf) {
    fuse_reply_buf (req, ref.buf + ref.skip, n);
    cor_read_ref_release (&ref);
    return;
  }
  if (n == 0)
    return (void) fuse_reply_buf (req, NULL, 0);   /* at or past the end */
  if (!(buf = iobuf_get (n)))
    return (void) fuse_reply_err (req, ENOMEM);
  if (cor_read_ref_copy (d, &ref, buf, n, off, &err) == -1)
    fuse_reply_err (req, EIO);
  else
    fuse_reply_buf (req, buf, n);
  iobuf_put (buf, n);
}

static void
fs_write (fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size,
          off_t off, struct fuse_file_info *fi)
{
  struct fs *fs = fuse_req_userdata (req);
  struct cor_disk *d = ino_disk (fs, ino);
  int err = 0;

  if (!d)
    return (void) fuse_reply_err (req, ENOENT);
  if (cor_write (d, buf, size, off, &err) == -1)
    return (void) fuse_reply_err (req, err ? err : EIO);
  fuse_reply_write (req, size);
}

static void
fs_fsync (fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
  struct fs *fs = fuse_req_userdata (req);
  struct cor_disk *d = ino_disk (fs, ino);
  int err = 0;

  /* fsync and fdatasync both mean "data and index durable" (rule 3):
   * QEMU's flush arrives as a datasync fsync. */
  if (!d)
    return (void) fuse_reply_err (req, ENOENT);
  if (cor_flush (d, &err) == -1)
    return (void) fuse_reply_err (req, err ? err : EIO);
  fuse_reply_err (req, 0);
}

static void
fs_flush (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  struct fs *fs = fuse_req_userdata (req);
  struct cor_disk *d = ino_disk (fs, ino);
  int err = 0;

  if (d && fi->fh && cor_flush (d, &err) == -1)
    return (void) fuse_reply_err (req, err ? err : EIO);
  fuse_reply_err (req, 0);
}

static void
fs_fallocate (fuse_req_t req, fuse_ino_t ino, int mode, off_t offset,
              off_t length, struct fuse_file_info *fi)
{
  struct fs *fs = fuse_req_userdata (req);
  struct cor_disk *d = ino_disk (fs, ino);
  int err = 0;

  if (!d)
    return (void) fuse_reply_err (req, ENOENT);
  if (offset < 0 || length <= 0)
    return (void) fuse_reply_err (req, EINVAL);
  if (mode == 0) {
    /* Preallocation: every byte of the disk exists already. */
    if ((uint64_t) offset + length > cor_disk_size (d))
      return (void) fuse_reply_err (req, EFBIG);
    return (void) fuse_reply_err (req, cor_disk_writable (d) ? 0 : EROFS);
  }
  if (mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) ||
      mode == FALLOC_FL_ZERO_RANGE || mode == (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)) {
    /* Both leave the range reading as zeros, which is what guests
     * (QEMU's write-zeroes with unmap) rely on. */
    if (cor_zero (d, offset, length, &err) == -1)
      return (void) fuse_reply_err (req, err ? err : EIO);
    return (void) fuse_reply_err (req, 0);
  }
  fuse_reply_err (req, EOPNOTSUPP);
}

static void
fs_lseek (fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
          struct fuse_file_info *fi)
{
  struct fs *fs = fuse_req_userdata (req);
  struct cor_disk *d = ino_disk (fs, ino);
  int64_t r;
  int err = 0;

  if (!d)
    return (void) fuse_reply_err (req, ENOENT);
  if (whence != SEEK_DATA && whence != SEEK_HOLE)
    return (void) fuse_reply_err (req, EINVAL);
  if (off < 0)
    return (void) fuse_reply_err (req, ENXIO);
  r = cor_seek (d, off, whence == SEEK_DATA, &err);
  if (r == -1)
    return (void) fuse_reply_err (req, err ? err : EIO);
  fuse_reply_lseek (req, r);
}

static void
fs_release (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  fuse_reply_err (req, 0);
}

static void
fs_statfs (fuse_req_t req, fuse_ino_t ino)
{
  struct fs *fs = fuse_req_userdata (req);
  struct statvfs sv = { 0 };
  uint64_t total = 0;

  for (size_t i = 0; i < cor_disk_count (fs->e); i++)
    total += cor_disk_size (cor_disk_get (fs->e, i));
  sv.f_bsize = sv.f_frsize = 4096;
  sv.f_blocks = total / 4096;
  sv.f_files = cor_disk_count (fs->e) + 1;
  sv.f_namemax = 64;
  fuse_reply_statfs (req, &sv);
}

static const struct fuse_lowlevel_ops fs_ops = {
  .init = fs_init,
  .lookup = fs_lookup,
  .getattr = fs_getattr,
  .setattr = fs_setattr,
  .readdir = fs_readdir,
  .open = fs_open,
  .read = fs_read,
  .write = fs_write,
  .flush = fs_flush,
  .release = fs_release,
  .fsync = fs_fsync,
  .statfs = fs_statfs,
  .fallocate = fs_fallocate,
  .lseek = fs_lseek,
};

/* The engine's invalidation callback (activation): drop every cached
 * page of the disk's file, so no read is answered from before the
 * switch-over.  Called from the control thread, never from a handler. */
static void
invalidate (void *opaque, size_t disk_index)
{
  struct fs *fs = opaque;
  int r = fuse_lowlevel_notify_inval_inode (fs->se, disk_index + 2, 0, 0);

  if (r < 0 && r != -ENOENT)   /* ENOENT: the kernel has no such inode cached */
    log_warn ("fs: dropping the page cache of disk %zu: %s", disk_index, strerror (-r));
}

/* fsname for an -o option: libfuse splits options at commas and takes a
 * backslash as an escape, so a state path with a comma would end the
 * option there and the rest would be read as options of its own (say
 * ",allow_other").  Escape both.  Caller frees; NULL on ENOMEM. */
static char *
escape_option_value (const char *v)
{
  char *out = malloc (2 * strlen (v) + 1), *p = out;

  if (!out)
    return NULL;
  for (; *v; v++) {
    if (*v == ',' || *v == '\\')
      *p++ = '\\';
    *p++ = *v;
  }
  *p = '\0';
  return out;
}

/* The max_read=N among the -o options (each a comma-separated list; the
 * last one wins, as in libfuse's parser), or 0.  A value libfuse
 * cannot parse makes fuse_session_new fail: 0 is fine then. */
static unsigned
option_max_read (const char *const *options)
{
  static const char key[] = "max_read=";
  unsigned v = 0;

  for (size_t i = 0; options && options[i]; i++)
    for (const char *p = options[i]; p; p = strchr (p, ',') ? strchr (p, ',') + 1 : NULL)
      if (!strncmp (p, key, sizeof key - 1))
        v = strtoul (p + sizeof key - 1, NULL, 10);
  return v;
}

int
fs_session_args (const struct fs_config *cfg, struct fuse_args *args)
{
  char *opt = NULL, *fsname = escape_option_value (cfg->fsname);
  int r = -1;

  if (!fsname)
    return -1;
  if (asprintf (&opt, "-ofsname=%s,subtype=corfs,default_permissions", fsname) < 0) {
    opt = NULL;
    goto out;
  }
  if (fuse_opt_add_arg (args, "corfs") == -1 || fuse_opt_add_arg (args, opt) == -1)
    goto out;
  if (cfg->debug && fuse_opt_add_arg (args, "-d") == -1)
    goto out;
  for (size_t i = 0; cfg->options && cfg->options[i]; i++)
    if (fuse_opt_add_arg (args, "-o") == -1 ||
        fuse_opt_add_arg (args, cfg->options[i]) == -1)
      goto out;
  r = 0;
 out:
  free (opt);
  free (fsname);
  return r;
}

/* Supervised, the kernel mount is the supervisor's: libfuse serves the
 * connection it holds (restart.c) and never unmounts. */
static int
session_mount (struct fs *fs, const struct fs_config *cfg)
{
  if (!cfg->supervised) {
    if (fuse_session_mount (fs->se, cfg->mountpoint) == -1)
      return -1;
    fs->mounted = true;
    return 0;
  }
  if (fs_restart_attach (fs, cfg->fuse_fd) == -1)
    return -1;
  fs->fuse_fd = cfg->fuse_fd;
  fs->survive = cfg->survive;
  fs->simulate_no_resend = cfg->simulate_no_resend;
  return 0;
}

int
fs_mount (struct cor_engine *e, const struct fs_config *cfg, struct fs **fsp)
{
  struct fs *fs = calloc (1, sizeof *fs);
  struct fuse_args args = FUSE_ARGS_INIT (0, NULL);

  if (!fs)
    return -1;
  fs->e = e;
  fs->max_read = option_max_read (cfg->options);
  fs->fuse_fd = -1;
  clock_gettime (CLOCK_REALTIME, &fs->mount_time);
  if (fs_session_args (cfg, &args) == -1)
    goto err;
  fs->se = fuse_session_new (&args, &fs_ops, sizeof fs_ops, fs);
  if (!fs->se) {
    log_error ("fs: cannot create the FUSE session (bad -o option?)");
    goto err;
  }
  if (fuse_set_signal_handlers (fs->se) == -1) {
    log_error ("fs: cannot install signal handlers");
    goto err_session;
  }
  if (session_mount (fs, cfg) == -1) {
    log_error ("fs: mount on %s failed", cfg->mountpoint);
    goto err_signals;
  }
  fs->readahead_kb = cfg->readahead_kb;
  find_bdi (fs, cfg->mountpoint);
  cor_set_invalidate_fn (e, invalidate, fs);
  fuse_opt_free_args (&args);
  *fsp = fs;
  return 0;

 err_signals:
  fuse_remove_signal_handlers (fs->se);
 err_session:
  fuse_session_destroy (fs->se);
 err:
  fuse_opt_free_args (&args);
  free (fs);
  return -1;
}

int
fs_run (struct fs *fs)
{
  /* clone_fd (a /dev/fuse fd per thread) measured the same here: warm
   * random 4 KiB O_DIRECT reads at iodepth 32, 56.5k vs 57.5k and 77.6k
   * vs 78.0k IOPS in alternated runs; kept off. */
  struct fuse_loop_config *cfg = fuse_loop_cfg_create ();
  int r;

  if (!cfg) {
    log_error ("fs: configuring the FUSE loop: out of memory");
    return -1;
  }
  /* Supervised, never clone_fd: requests read on a cloned fd die with
   * ECONNABORTED along with the worker, and the kernel cannot resend
   * them. */
  fuse_loop_cfg_set_clone_fd (cfg, 0);
  fuse_loop_cfg_set_idle_threads (cfg, FS_IDLE_THREADS);
  fuse_loop_cfg_set_max_threads (cfg, FS_MAX_THREADS);
  /* The loop returns the signal number when SIGTERM/SIGINT/SIGHUP ended
   * it (a clean stop), and a negative errno on failure. */
  if (fs->survive && fs_restart_takeover (fs) == -1) {
    fuse_loop_cfg_destroy (cfg);
    return -1;
  }
  r = fuse_session_loop_mt (fs->se, cfg);
  fuse_loop_cfg_destroy (cfg);
  if (r < 0)
    log_error ("fs: the FUSE loop failed: %s", strerror (-r));
  return r < 0 ? -1 : 0;
}

void
fs_free (struct fs *fs)
{
  if (!fs)
    return;
  cor_set_invalidate_fn (fs->e, NULL, NULL);
  fuse_remove_signal_handlers (fs->se);
  if (fs->mounted)
    fuse_session_unmount (fs->se);
  fuse_session_destroy (fs->se);
  free (fs);
}
