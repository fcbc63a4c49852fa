/* corfs: a copy's target and partial file (flatten --to FILE): resolve
 * and check FILE, open FILE.partial (new, or the one an earlier copy of
 * the disk left), give it its cookie, and keep its record STATE/NAME.copy.
 *
 * FILE may not be in the state directory (the index, overlays, socket,
 * log; by inode, so no alias of it either), be the file:// parent, nor
 * exist as anything but a regular file.
 *
 * Notes on the thread model: copy_open is the copy kind's prepare hook,
 * on the starter's thread (one of ctl's job threads: it may block on a
 * hung filesystem) while the job is listed as starting and has no
 * thread; copy_record and copy_truncate run there too, and later on the
 * job's thread only.  No lock is taken here: struct copy_job is the
 * starter's until the thread starts, then the thread's; mg's state
 * directory fields never change after merge_new.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "common/log.h"
#include "cor/cor.h"
#include "merge/merge-internal.h"
#include "remote/remote.h"

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
void
copy_record (struct job *j, const struct stat *st, uint64_t done)
{
  struct copy_job *c = j->priv;
  struct copy_rec cr = { st->st_dev, st->st_ino, done, cor_disk_size (j->d), c->gen, "" };

  snprintf (cr.cookie, sizeof cr.cookie, "%s", c->cookie);

  if (copy_record_write (j->mg, c->record, &cr, c->to) == -1)
    log_warn ("merge: disk %s: recording the copy's progress in %s: %m (a copy started "
              "again will not continue %s)", cor_disk_name (j->d), c->record, c->partial);
}

/* Drop what the partial file holds from `from` on (a crashed run may have
 * written past its durable point): it reads zeros there, as the disk's
 * holes must. */
int
copy_truncate (struct job *j, uint64_t from)
{
  struct copy_job *c = j->priv;

  return ftruncate (c->fd, from) == -1 || ftruncate (c->fd, cor_disk_size (j->d)) == -1
    ? -1 : 0;
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

/* Resolve and check a copy target for c: c->to (canonical), c->partial,
 * c->dirfd (its directory, opened once: every later step is relative to
 * it), c->base and c->pbase.  Refused: a target in the state directory
 * (index, overlays, socket, log, records; by name, and by inode through
 * any alias), the file:// parent (by name, through a symlink, or by
 * inode), and an existing FILE that is not a regular file (a device, or
 * a symlink such as /dev/vg/lv, would be replaced by a file).  0 or -1
 * (errbuf). */
static int
copy_target_check (struct merge *mg, struct cor_disk *d, struct copy_job *c, const char *to,
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
  if (asprintf (&c->to, "%s/%s", strcmp (rdir, "/") ? rdir : "", base) == -1 ||
      asprintf (&c->partial, "%s.partial", c->to) == -1) {
    c->to = c->partial = NULL;
    snprintf (errbuf, len, "out of memory");
    return -1;
  }
  c->base = strrchr (c->to, '/') + 1;
  c->pbase = strrchr (c->partial, '/') + 1;
  if (path_within (c->to, mg->state_dir))
    return refuse_state_dir (mg, to, errbuf, len);
  if ((c->dirfd = open_target_dir (mg, rdir, to, errbuf, len)) == -1)
    return -1;
  bool exists = fstatat (c->dirfd, c->base, &st, AT_SYMLINK_NOFOLLOW) == 0;
  if (!strcmp (remote_backend (r), "file")) {
    const char *ppath = remote_url (r) + strlen ("file://");
    bool same = !strcmp (c->to, ppath) ||
      (exists && realpath (c->to, rto) && !strcmp (rto, ppath));
    if (!same && exists && stat (ppath, &pst) == 0)
      same = st.st_dev == pst.st_dev && st.st_ino == pst.st_ino;
    if (!same && realpath (ppath, rto))
      same = !strcmp (c->to, rto);
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

/* Does c->fd carry the cookie of record cr?  (Kept in c->cookie.) */
static bool
cookie_matches (struct copy_job *c, const struct copy_rec *cr)
{
  copy_cookie_get (c->fd, cr->cookie, c->cookie, sizeof c->cookie);
  return strcmp (c->cookie, cr->cookie) == 0;
}

/* Create the partial file c->partial (O_EXCL, never through a symlink,
 * 0600, its name made durable) with its cookie, and record it.  0, 1 if
 * one is there already, or -1 (errbuf). */
static int
create_partial (struct job *j, struct copy_job *c, int flags, char *errbuf, size_t len)
{
  struct stat st;

  c->fd = openat (c->dirfd, c->pbase, flags | O_CREAT | O_EXCL, 0600);
  if (c->fd == -1) {
    if (errno == EEXIST)
      return 1;
    snprintf (errbuf, len, "%s: %s", c->partial, strerror (errno));
    return -1;
  }
  fcntl (c->fd, F_SETFL, O_WRONLY);
  copy_cookie_set (c->fd, c->cookie, sizeof c->cookie);
  if (fstat (c->fd, &st) == -1 || ftruncate (c->fd, cor_disk_size (j->d)) == -1 ||
      fsync (c->fd) == -1 || fsync (c->dirfd) == -1) {
    snprintf (errbuf, len, "%s: %s", c->partial, strerror (errno));
    close (c->fd);
    c->fd = -1;
    unlinkat (c->dirfd, c->pbase, 0);
    return -1;
  }
  copy_record (j, &st, 0);
  return 0;
}

/* The partial file exists: continue it only if it is the one this disk's
 * earlier copy to the same file left (recorded device, inode and
 * cookie).  Checked to be a regular file before it is opened, and opened
 * non-blocking: a FIFO or a device put there is refused, never waited
 * on.  0 or -1 (errbuf). */
static int
reopen_partial (struct job *j, struct copy_job *c, int flags, char *errbuf, size_t len)
{
  char rec_to[PATH_MAX + 256];
  struct copy_rec cr;
  uint64_t size = cor_disk_size (j->d);
  struct stat st;

  if (copy_record_read (c->record, &cr, rec_to, sizeof rec_to) == -1 ||
      strcmp (rec_to, c->to) != 0 ||
      fstatat (c->dirfd, c->pbase, &st, AT_SYMLINK_NOFOLLOW) == -1 || !S_ISREG (st.st_mode) ||
      st.st_dev != cr.dev || st.st_ino != cr.ino ||
      (c->fd = openat (c->dirfd, c->pbase, flags)) == -1 ||
      fstat (c->fd, &st) == -1 || !S_ISREG (st.st_mode) ||
      st.st_dev != cr.dev || st.st_ino != cr.ino || !cookie_matches (c, &cr)) {
    snprintf (errbuf, len, "%s exists and is not the partial copy that disk %s left "
              "there: remove it to copy to %s", c->partial, cor_disk_name (j->d), c->to);
    return -1;
  }
  fcntl (c->fd, F_SETFL, O_WRONLY);
  /* Continue from the durable point of a copy of this disk (same size);
   * past it the file is dropped (copy_truncate), so a hole in the disk
   * reads zeros in the copy whatever the last run left there. */
  c->start = cr.size == size && cr.done <= size ? cr.done : 0;
  c->gen = cr.gen;
  if (copy_truncate (j, c->start) == -1) {
    snprintf (errbuf, len, "%s: %s", c->partial, strerror (errno));
    return -1;
  }
  return 0;
}

/* The copy kind's prepare hook: check the target `to` (arg), then open
 * its partial file, new or continued.  0 or -1 (errbuf). */
int
copy_open (struct job *j, const void *arg, char *errbuf, size_t len)
{
  const char *to = arg;
  const int flags = O_WRONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK;
  struct copy_job *c = calloc (1, sizeof *c);

  if (!c) {
    snprintf (errbuf, len, "out of memory");
    return -1;
  }
  c->fd = c->dirfd = -1;
  j->priv = c;
  if (copy_target_check (j->mg, j->d, c, to, errbuf, len) == -1)
    return -1;
  j->target = c->to;
  if (asprintf (&c->record, "%s/%s.copy", j->mg->state_dir, cor_disk_name (j->d)) == -1) {
    c->record = NULL;
    snprintf (errbuf, len, "out of memory");
    return -1;
  }
  switch (create_partial (j, c, flags, errbuf, len)) {
  case 0: return 0;
  case 1: return reopen_partial (j, c, flags, errbuf, len);
  default: return -1;
  }
}
