/* corfs: the state directory: who may write it, its absolute path (the
 * daemon changes directory to /), and its lock, STATE/corfs.pid.
 *
 * The lock is a flock on the pid file: it survives fork, and a file left
 * by kill -9 holds no lock, so it never means "in use" by itself.
 * Runs on the main thread only (mount_resolve before the fork,
 * lock_state in the daemon before any other thread starts). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "daemon/daemon-internal.h"

/* The state directory holds the control socket (its 0600 mode is what
 * keeps other users from commanding the daemon), the pid file, the
 * overlays and the log, all opened by the daemon, often root.  Whoever
 * can write the directory can replace any of them: swap the socket for a
 * server of their own, or plant symlinks the daemon would write through.
 * So it must belong to the daemon's user and be writable by no one else.
 * (A symlink given as --state is resolved once, by realpath; the
 * directory it leads to is what is checked and used.)  0 or -1 (printed). */
static int
check_state_dir (const char *path)
{
  struct stat st;

  if (lstat (path, &st) == -1) {
    fprintf (stderr, "corfs: state directory %s: %s\n", path, strerror (errno));
    return -1;
  }
  if (!S_ISDIR (st.st_mode)) {
    fprintf (stderr, "corfs: state directory %s is not a directory\n", path);
    return -1;
  }
  if (st.st_uid != geteuid () || (st.st_mode & (S_IWGRP | S_IWOTH))) {
    fprintf (stderr, "corfs: state directory %s has mode %04o and owner uid %u: it must "
             "belong to the daemon's user (uid %u) and be writable by no one else, "
             "or other users could replace its control socket, pid file, overlays or "
             "log (chown it, chmod go-w it, or use another directory)\n", path,
             (unsigned) (st.st_mode & 07777), (unsigned) st.st_uid, (unsigned) geteuid ());
    return -1;
  }
  return 0;
}

/* (daemon-internal.h) */
int
mount_resolve (struct mount_opts *o)
{
  char buf[PATH_MAX];
  struct stat st;

  if (mkdir (o->state, 0700) == -1 && errno != EEXIST) {
    fprintf (stderr, "corfs: state directory %s: %s\n", o->state, strerror (errno));
    return -1;
  }
  if (!realpath (o->state, buf) || stat (buf, &st) == -1 || !S_ISDIR (st.st_mode)) {
    fprintf (stderr, "corfs: state directory %s: %s\n", o->state,
             errno ? strerror (errno) : "not a directory");
    return -1;
  }
  if (check_state_dir (buf) == -1)
    return -1;
  free (o->state);
  o->state = strdup (buf);
  if (strlen (o->state) + sizeof "/corfs.sock" > 108) {
    fprintf (stderr, "corfs: state directory path %s is too long: the control socket "
             "path must fit in 107 bytes\n", o->state);
    return -1;
  }
  if (!realpath (o->mountpoint, buf)) {
    fprintf (stderr, "corfs: mountpoint %s: %s\n", o->mountpoint, strerror (errno));
    return -1;
  }
  if (stat (buf, &st) == -1 || !S_ISDIR (st.st_mode)) {
    fprintf (stderr, "corfs: mountpoint %s is not a directory\n", o->mountpoint);
    return -1;
  }
  free (o->mountpoint);
  o->mountpoint = strdup (buf);
  return 0;
}

/* Is the daemon named in the lock file (fd) dying?  A daemon killed with
 * SIGKILL is a zombie (or gone) as soon as its main thread has exited,
 * but its other threads, some inside the FUSE or I/O code, may hold its
 * files (and so the lock) a little longer.  Waits for the lock, at most
 * LOCK_DYING_WAIT_S; true if it got it.  A live holder is never waited
 * for: that is another daemon on this state directory. */
#define LOCK_DYING_WAIT_S 10
static bool
holder_dying (int fd)
{
  uint64_t deadline = now_ns () + LOCK_DYING_WAIT_S * NS_PER_SEC;
  char buf[32] = "", path[64], stat[512];

  errno = EWOULDBLOCK;          /* what the caller reports on false */
  if (pread (fd, buf, sizeof buf - 1, 0) <= 0)
    return false;
  long pid = strtol (buf, NULL, 10);
  if (pid <= 0)
    return false;
  snprintf (path, sizeof path, "/proc/%ld/stat", pid);
  while (now_ns () < deadline) {
    FILE *f = fopen (path, "re");
    if (f) {
      /* The state follows the last ')' (the name may hold any byte). */
      size_t n = fread (stat, 1, sizeof stat - 1, f);
      fclose (f);
      stat[n] = '\0';
      char *rp = strrchr (stat, ')');
      if (rp && rp[1] == ' ' && rp[2] != 'Z' && rp[2] != 'X') {
        errno = EWOULDBLOCK;
        return false;           /* alive */
      }
    }
    if (flock (fd, LOCK_EX | LOCK_NB) == 0)
      return true;
    if (errno != EWOULDBLOCK)
      return false;
    usleep (50000);
  }
  errno = EWOULDBLOCK;
  return false;
}

/* (daemon-internal.h) */
int
lock_state (const char *state)
{
  char path[PATH_MAX], pid[32];
  int fd;

  snprintf (path, sizeof path, "%s/corfs.pid", state);
  /* O_NOFOLLOW: never write through a symlink found in the state dir. */
  fd = open (path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd == -1) {
    log_error ("daemon: %s: %m", path);
    return -1;
  }
  if (flock (fd, LOCK_EX | LOCK_NB) == -1 && (errno != EWOULDBLOCK || !holder_dying (fd))) {
    char other[32] = "";
    ssize_t n = pread (fd, other, sizeof other - 1, 0);
    if (n > 0)
      other[strcspn (other, "\n")] = '\0';
    if (errno == EWOULDBLOCK || errno == EAGAIN)
      log_error ("daemon: state directory %s is in use by another corfs daemon (pid %s)",
                 state, n > 0 ? other : "?");
    else
      log_error ("daemon: locking %s: %m", path);
    close (fd);
    return -1;
  }
  snprintf (pid, sizeof pid, "%d\n", (int) getpid ());
  if (ftruncate (fd, 0) == -1 || pwrite (fd, pid, strlen (pid), 0) == -1) {
    log_error ("daemon: writing %s: %m", path);
    close (fd);
    return -1;
  }
  return fd;
}
