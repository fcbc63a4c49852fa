/* corfs: `corfs mount --supervise`: a supervisor that holds the FUSE
 * connection, and the worker it starts and restarts.
 *
 * The supervisor does as little as it can, so that there is nothing in it
 * to crash: it takes the state directory's lock, creates the memory that
 * outlives a worker (a memfd, common/survive.h) and the worker's settings
 * (a sealed memfd holding `corfs mount`'s arguments: credentials never go
 * on a command line), mounts /dev/fuse (fs_premount), and then only
 * starts workers and waits.  No guest data, no network, no index.
 *
 * A worker is this binary run again (`corfs __worker`) with its
 * descriptors at fixed numbers (WORKER_FD_*); it parses the settings as
 * `corfs mount` did, writes its own pid into STATE/corfs.pid (the lock
 * stays the supervisor's), and serves the mount on the supervisor's
 * connection (src/fs/restart.c takes it over).
 *
 * Ends: a worker's exit, clean or not (SIGTERM/SIGINT to it, `corfs
 * unmount`, a failed start), ends the mount with its exit code; SIGTERM,
 * SIGINT or SIGHUP to the supervisor are passed to the worker, whose exit
 * then ends the mount.  A worker killed by a signal is replaced on the
 * same connection, unless it died before the connection was initialised
 * (nothing to take over) or workers keep dying at start (FAST_DEATHS).
 *
 * Notes on the thread model: the supervisor has one thread; every signal
 * it handles is blocked and taken with sigwaitinfo.  The worker runs the
 * daemon's (daemon.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/log.h"
#include "common/survive.h"
#include "common/util.h"
#include "daemon/daemon-internal.h"
#include "fs/fs.h"

#define SETTINGS_MAGIC "corfs-worker-settings 1\n"

/* Workers dying before they took the connection over, this many times
 * in a row, end the mount rather than loop. */
#define FAST_DEATHS 3

struct supervisor {
  int lock_fd, survive_fd, settings_fd, cwd_fd, fuse_fd;
  struct survive_header *hdr;   /* the first SURVIVE_SLOTS_OFF bytes, mapped */
  struct fs_premount *pm;
  pid_t worker;
  uint32_t serving_at_start;    /* survive_fs.serving when it started */
};

static struct survive_fs *
fs_part (struct supervisor *s)
{
  return (struct survive_fs *) ((char *) s->hdr + SURVIVE_FS_OFF);
}

/* The settings memfd: SETTINGS_MAGIC, the resolved state directory and
 * mountpoint (a worker must not resolve the mountpoint itself: it is
 * mounted, and nothing answers there until the worker does), then
 * `corfs mount`'s arguments; each string NUL-terminated; sealed.  -1
 * (logged) on failure. */
static int
make_settings (const struct mount_opts *o)
{
  int fd = memfd_create ("corfs-settings", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  size_t ls = strlen (o->state) + 1, lm = strlen (o->mountpoint) + 1;

  if (fd == -1 ||
      write (fd, SETTINGS_MAGIC, strlen (SETTINGS_MAGIC)) != (ssize_t) strlen (SETTINGS_MAGIC) ||
      write (fd, o->state, ls) != (ssize_t) ls || write (fd, o->mountpoint, lm) != (ssize_t) lm ||
      write (fd, o->raw_args, o->raw_len) != (ssize_t) o->raw_len ||
      fcntl (fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) == -1) {
    log_error ("supervise: the worker's settings: %m");
    if (fd >= 0)
      close (fd);
    return -1;
  }
  return fd;
}

static int
make_survive (struct supervisor *s)
{
  s->survive_fd = memfd_create ("corfs-survive", MFD_CLOEXEC);
  if (s->survive_fd == -1 || ftruncate (s->survive_fd, SURVIVE_SIZE) == -1) {
    log_error ("supervise: the state that outlives a worker: %m");
    return -1;
  }
  s->hdr = mmap (NULL, SURVIVE_SLOTS_OFF, PROT_READ | PROT_WRITE, MAP_SHARED,
                 s->survive_fd, 0);
  if (s->hdr == MAP_FAILED) {
    s->hdr = NULL;
    log_error ("supervise: mapping the state that outlives a worker: %m");
    return -1;
  }
  s->hdr->magic = SURVIVE_MAGIC;
  s->hdr->version = SURVIVE_VERSION;
  return 0;
}

/* In the child: the descriptors at their fixed numbers (through copies
 * above them, so that no source is overwritten first), the signal mask
 * back, and exec.  Does not return. */
static void
exec_worker (struct supervisor *s, int ready_fd, const sigset_t *oldmask)
{
  int src[] = { s->settings_fd, s->cwd_fd, s->fuse_fd, s->lock_fd, s->survive_fd, ready_fd };
  int n = ready_fd >= 0 ? 6 : 5, tmp[6];

  for (int i = 0; i < n; i++)
    if ((tmp[i] = fcntl (src[i], F_DUPFD_CLOEXEC, 64)) == -1)
      _exit (127);
  for (int i = 0; i < n; i++)
    if (dup2 (tmp[i], WORKER_FD_SETTINGS + i) == -1)
      _exit (127);
  close_range (WORKER_FD_SETTINGS + n, ~0U, 0);
  sigprocmask (SIG_SETMASK, oldmask, NULL);
  execl ("/proc/self/exe", "corfs", "__worker", (char *) NULL);
  dprintf (2, "corfs: supervise: starting the worker: %s\n", strerror (errno));
  _exit (127);
}

static int
start_worker (struct supervisor *s, int ready_fd, const sigset_t *oldmask)
{
  pid_t pid;

  fflush (NULL);
  pid = fork ();
  if (pid == -1) {
    log_error ("supervise: fork: %m");
    return -1;
  }
  if (pid == 0)
    exec_worker (s, ready_fd, oldmask);
  s->worker = pid;
  s->serving_at_start = __atomic_load_n (&fs_part (s)->serving, __ATOMIC_SEQ_CST);
  return 0;
}

/* The worker pid ended with status: -1 to start another, else the
 * mount's exit code.  *fast counts quick deaths in a row. */
static int
worker_ended (struct supervisor *s, int status, bool stopping, int *fast)
{
  if (WIFEXITED (status)) {
    log_info ("supervise: worker %d exited (%d); ending the mount", (int) s->worker,
              WEXITSTATUS (status));
    return WEXITSTATUS (status);
  }
  int sig = WIFSIGNALED (status) ? WTERMSIG (status) : 0;
  if (stopping) {
    log_info ("supervise: worker %d ended by signal %d while stopping", (int) s->worker, sig);
    return 1;
  }
  if (__atomic_load_n (&fs_part (s)->init_len, __ATOMIC_SEQ_CST) == 0) {
    log_error ("supervise: worker %d died (signal %d) before the FUSE connection was "
               "initialised; ending the mount", (int) s->worker, sig);
    return 1;
  }
  if (__atomic_load_n (&fs_part (s)->serving, __ATOMIC_SEQ_CST) == s->serving_at_start)
    ++*fast;
  else
    *fast = 0;
  if (*fast >= FAST_DEATHS) {
    log_error ("supervise: %d workers in a row died before they served; "
               "ending the mount", FAST_DEATHS);
    return 1;
  }
  log_warn ("supervise: worker %d killed by signal %d (%s); starting a new one on the "
            "same connection", (int) s->worker, sig, strsignal (sig));
  s->hdr->restarts++;
  return -1;
}

/* Start the first worker (which reports to ready_fd), then wait, restart
 * and stop as the head comment says.  The mount's exit code. */
static int
serve (struct supervisor *s, int ready_fd)
{
  sigset_t set, old;
  bool stopping = false;
  int fast = 0, r;

  sigemptyset (&set);
  sigaddset (&set, SIGTERM);
  sigaddset (&set, SIGINT);
  sigaddset (&set, SIGHUP);
  sigaddset (&set, SIGCHLD);
  sigprocmask (SIG_BLOCK, &set, &old);
  r = start_worker (s, ready_fd, &old);
  if (ready_fd >= 0)
    close (ready_fd);           /* the worker's to answer */
  if (r == -1)
    return 1;
  for (;;) {
    siginfo_t si;
    int sig = sigwaitinfo (&set, &si), status;
    pid_t pid;
    if (sig == -1)
      continue;                 /* EINTR */
    if (sig != SIGCHLD) {
      log_info ("supervise: %s: stopping worker %d", strsignal (sig), (int) s->worker);
      stopping = true;
      kill (s->worker, SIGTERM);
      continue;
    }
    while ((pid = waitpid (-1, &status, WNOHANG)) > 0) {
      if (pid != s->worker)
        continue;
      r = worker_ended (s, status, stopping, &fast);
      if (r >= 0)
        return r;
      if (start_worker (s, -1, &old) == -1)
        return 1;
    }
  }
}

int
supervise_main (struct mount_opts *o, int ready_fd, int cwd_fd)
{
  struct supervisor s = { .lock_fd = -1, .survive_fd = -1, .settings_fd = -1,
                          .cwd_fd = cwd_fd, .fuse_fd = -1 };
  char fsname[PATH_MAX + 8];
  int r = 1;

  snprintf (fsname, sizeof fsname, "corfs:%s", o->state);
  struct fs_config fcfg = {
    .mountpoint = o->mountpoint, .fsname = fsname,
    .options = (const char *const *) o->fuse_options, .debug = o->fuse_debug,
  };
  if ((s.lock_fd = lock_state (o->state)) >= 0 && make_survive (&s) == 0 &&
      (s.settings_fd = make_settings (o)) >= 0 &&
      fs_premount (&fcfg, &s.pm, &s.fuse_fd) == 0) {
    log_info ("supervise: supervisor %d holds the FUSE connection of %s",
              (int) getpid (), o->mountpoint);
    r = serve (&s, ready_fd);
    ready_fd = -1;
    fs_premount_end (s.pm);
    log_info ("supervise: %s unmounted; supervisor exits (%d)", o->mountpoint, r);
  }
  if (ready_fd >= 0) {
    dprintf (ready_fd, "ERR %s\n", *log_last_error () ? log_last_error ()
             : "the supervisor failed to start");
    close (ready_fd);
  }
  if (s.hdr)
    munmap (s.hdr, SURVIVE_SLOTS_OFF);
  if (s.survive_fd >= 0)
    close (s.survive_fd);
  if (s.settings_fd >= 0)
    close (s.settings_fd);
  if (s.lock_fd >= 0)
    close (s.lock_fd);
  return r;
}

/* ---- the worker's side ---- */

/* Read the settings memfd into an argv for mount_parse ("mount" first);
 * argv[-2] and argv[-1] (in the array returned in *basep) are the
 * resolved state directory and mountpoint.  -1 (logged). */
static int
read_settings (int fd, char **bufp, char ***basep, int *argcp)
{
  off_t size = lseek (fd, 0, SEEK_END);
  size_t ml = strlen (SETTINGS_MAGIC), n = 0;
  char *buf;
  char **argv;
  int argc = 1;

  if (size < (off_t) ml || !(buf = calloc (1, size + 1)))
    goto bad;
  if (pread (fd, buf, size, 0) != size || memcmp (buf, SETTINGS_MAGIC, ml)) {
    free (buf);
    goto bad;
  }
  for (off_t i = ml; i < size; i++)
    n += buf[i] == '\0';
  if (n < 2 || !(argv = calloc (n + 2, sizeof *argv))) {
    free (buf);
    goto bad;
  }
  argc = 0;
  for (off_t i = ml; i < size; i += strlen (buf + i) + 1) {
    argv[argc++] = buf + i;
    if (argc == 2)
      argv[argc++] = (char *) "mount";
  }
  *bufp = buf;
  *basep = argv;
  *argcp = argc - 2;
  return 0;
 bad:
  log_error ("worker: the supervisor's settings are unreadable (another version?)");
  return -1;
}

/* The survive memfd's header: ours? */
static int
check_survive (int fd, struct survive_fs **fsp)
{
  struct survive_header *h = mmap (NULL, SURVIVE_SLOTS_OFF, PROT_READ | PROT_WRITE,
                                   MAP_SHARED, fd, 0);

  if (h == MAP_FAILED) {
    log_error ("worker: mapping the supervisor's state: %m");
    return -1;
  }
  if (h->magic != SURVIVE_MAGIC || h->version != SURVIVE_VERSION) {
    log_error ("worker: the supervisor's state has version %u, this worker %d",
               h->version, SURVIVE_VERSION);
    munmap (h, SURVIVE_SLOTS_OFF);
    return -1;
  }
  *fsp = (struct survive_fs *) ((char *) h + SURVIVE_FS_OFF);
  return 0;
}

int
worker_main (void)
{
  struct mount_opts o;
  struct worker_fds w = { .fuse_fd = WORKER_FD_FUSE, .lock_fd = WORKER_FD_LOCK,
                          .survive_fd = WORKER_FD_SURVIVE, .ready_fd = -1 };
  char *buf = NULL, **argv = NULL;
  int argc, r = 1;

  if (fcntl (WORKER_FD_READY, F_GETFD) != -1) {
    w.ready_fd = WORKER_FD_READY;
    fcntl (w.ready_fd, F_SETFD, FD_CLOEXEC);
  }
  for (int fd = WORKER_FD_SETTINGS; fd <= WORKER_FD_SURVIVE; fd++)
    fcntl (fd, F_SETFD, FD_CLOEXEC);
  if (read_settings (WORKER_FD_SETTINGS, &buf, &argv, &argc) == -1 ||
      check_survive (WORKER_FD_SURVIVE, &w.survive) == -1)
    goto out;
  close (WORKER_FD_SETTINGS);
  /* Parsed and resolved from the directory `corfs mount` ran in. */
  memset (&o, 0, sizeof o);
  if (fchdir (WORKER_FD_CWD) == -1 || mount_parse (argc, argv + 2, &o) != 0) {
    log_error ("worker: the supervisor's settings do not parse");
    mount_opts_free (&o);
    goto out;
  }
  w.simulate_no_resend = getenv ("CORFS_SIMULATE_NO_RESEND") != NULL;
  if (o.verbose)
    log_level = LOG_LVL_DEBUG;
  free (o.state);
  free (o.mountpoint);
  o.state = strdup (argv[0]);
  o.mountpoint = strdup (argv[1]);
  if (o.state && o.mountpoint && chdir ("/") == 0) {
    close (WORKER_FD_CWD);
    r = worker_run (&o, &w);
    w.ready_fd = -1;
  }
  mount_opts_free (&o);
 out:
  if (w.ready_fd >= 0)
    dprintf (w.ready_fd, "ERR %s\n", *log_last_error () ? log_last_error ()
             : "the worker failed to start");
  free (argv);
  free (buf);
  return r;
}
