/* corfs: `corfs mount` and the daemon: the start-up order, the fork and
 * the readiness pipe, serving, and the stop sequence.
 *
 * Start-up, in this order (the parent waits on a readiness pipe and exits
 * non-zero with the daemon's error if any step fails):
 *   1. parse options and the config file; resolve every path with
 *      realpath() (the daemon changes directory to /); refuse a state
 *      directory others can write (check_state_dir); open the log
 *      (O_NOFOLLOW, like every file the daemon opens there);
 *   2. fork; the child starts a new session and logs to STATE/corfs.log;
 *   3. take STATE/corfs.pid with flock (it survives fork, and a file left
 *      by kill -9 holds no lock, so it never means "in use");
 *   4. open the index (LMDB is opened after forking, never before);
 *   5. attach every disk: those recorded in the index and those given;
 *      contact the parent unless every block is present;
 *   6. start the committer, the control socket and the metrics over HTTP
 *      (--metrics-listen), mount FUSE;
 *   7. tell systemd READY=1 (sd_notify, when NOTIFY_SOCKET is set) and
 *      write "OK" to the pipe; serve until unmounted or SIGTERM;
 *   8. tell systemd STOPPING=1; unmount; stop the HTTP metrics; stop the
 *      streamers, readahead and parent requests (cor_engine_quiesce); stop
 *      ctl and its long commands; merge jobs; final commit and clean
 *      close; release the lock.
 * Step 1 is mount-opts.c, config.c and state-dir.c; 3 is state-dir.c;
 * 5 is attach.c (daemon-internal.h lists the files).
 *
 * Secrets: the daemon is a fork of `corfs mount` (no exec), so it keeps
 * its argv; mount_parse redacts every --disk URL there in place before
 * forking (scrub_disk_arg).  The only programs started later are
 * libfuse's fusermount3 (mount options: fsname, subtype, -o options) and
 * the CLI's `fusermount3 -u`: neither carries a URL or credential, and
 * remotes get theirs from files (credentials-file, token-file, @FILE).
 *
 * Notes on the thread model: the main thread runs steps 1-8 and then the
 * FUSE loop, whose workers it starts; the committer and the control
 * thread are started with every signal blocked, so SIGTERM/SIGINT/SIGHUP
 * reach the FUSE loop's handlers, which end the loop cleanly.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "common/log.h"
#include "common/util.h"
#include "cor/cor.h"
#include "ctl/ctl.h"
#include "daemon/daemon-internal.h"
#include "fs/fs.h"
#include "merge/merge.h"
#include "meta/meta.h"

/* At exit, jobs (long commands, merge and copy jobs) get the hold and
 * this much more to end; one still running then is left (stop_daemon). */
#define STOP_GRACE_S 5

/* What the daemon runs, started in this order (steps 3-6) and stopped
 * by stop_daemon. */
struct daemon {
  int lock_fd;                  /* STATE/corfs.pid, locked; -1 */
  uint64_t hold_s;
  struct meta *m;
  struct cor_engine *e;
  struct merge *mg;
  struct ctl *ctl;
  struct metrics_http *http;    /* --metrics-listen; NULL */
  struct fs *fs;
  const struct worker_fds *w;   /* supervised: the supervisor's descriptors; NULL */
};

/* A supervised worker: the supervisor holds the lock; STATE/corfs.pid
 * names the worker (what `corfs unmount` and crash tests look at). */
static int
take_worker_lock (const struct worker_fds *w)
{
  char pid[32];

  snprintf (pid, sizeof pid, "%d\n", (int) getpid ());
  if (ftruncate (w->lock_fd, 0) == -1 || pwrite (w->lock_fd, pid, strlen (pid), 0) == -1) {
    log_error ("daemon: writing corfs.pid: %m");
    return -1;
  }
  return w->lock_fd;
}

/* Steps 3-5: the lock, the index, the engine, every disk.  0 or -1
 * (logged). */
static int
open_disks (struct mount_opts *o, struct daemon *dm)
{
  char path[PATH_MAX];

  dm->lock_fd = dm->w ? take_worker_lock (dm->w) : lock_state (o->state);
  if (dm->lock_fd == -1)
    return -1;
  dm->hold_s = effective_hold_s (o);
  snprintf (path, sizeof path, "%s/index", o->state);
  if (meta_open (path, &dm->m) == -1) {
    log_error ("daemon: cannot open the index in %s: %m", path);
    return -1;
  }
  if (dm->w && meta_share (dm->m, dm->w->survive_fd) == -1)
    return -1;
  if (cor_engine_new (dm->m, &dm->e) == -1)
    return -1;
  return attach_disks (o, dm->m, dm->e, dm->hold_s);
}

/* Step 6: the engine's threads (committer, streamers), the merge jobs'
 * home, the control socket, and the FUSE mount.  0 or -1 (logged). */
static int
start_serving (struct mount_opts *o, struct daemon *dm)
{
  char path[PATH_MAX], fsname[PATH_MAX + 8];

  if (cor_engine_start (dm->e) == -1)
    return -1;
  if (!(dm->mg = merge_new (o->state)))
    return -1;
  snprintf (path, sizeof path, "%s/corfs.sock", o->state);
  if (ctl_start (dm->e, dm->mg, path, &dm->ctl) == -1)
    return -1;
  if (o->metrics_listen && metrics_http_start (dm->e, o->metrics_listen, &dm->http) == -1)
    return -1;
  snprintf (fsname, sizeof fsname, "corfs:%s", o->state);
  struct fs_config fcfg = {
    .mountpoint = o->mountpoint, .fsname = fsname,
    .options = (const char *const *) o->fuse_options, .debug = o->fuse_debug,
    .readahead_kb = o->readahead / 1024,
  };
  if (dm->w) {
    fcfg.supervised = true;
    fcfg.fuse_fd = dm->w->fuse_fd;
    fcfg.survive = dm->w->survive;
    fcfg.simulate_no_resend = dm->w->simulate_no_resend;
  }
  if (fs_mount (dm->e, &fcfg, &dm->fs) == -1)
    return -1;
  if (dm->w)
    ctl_set_supervise (dm->ctl, fs_restart_info, dm->fs);
  return 0;
}

/* Step 8, also after a failed start (any part may be NULL).  Order: the
 * FUSE session has ended, so no guest request is in flight.  The HTTP
 * metrics server goes before anything (its thread reads the engine's
 * status; stopping it waits for one scrape at most).  Then background
 * work (cor_engine_quiesce: streamers and readahead told to stop,
 * parent requests cancelled, exclusive commands and aborts give up), so
 * that nothing below waits out a stalled parent; then no more commands,
 * with the long ones still running joined (ctl_stop) before the FUSE
 * session goes; jobs and streamers (which emit events into ctl) before
 * ctl's memory; the engine's final commit last.  Jobs are waited for at
 * most the hold and STOP_GRACE_S more: one stuck in the kernel (flatten
 * --to a filesystem that does not answer) is logged and left running,
 * and then the engine, the jobs and ctl are not freed (that thread may
 * still use them; the process exits), though every disk still gets its
 * final commit and clean close.  Returns the number of jobs left; *ret
 * becomes 1 if the final commit failed. */
static size_t
stop_daemon (struct daemon *dm, int *ret)
{
  uint64_t jobs_deadline = now_ns () + (dm->hold_s + STOP_GRACE_S) * NS_PER_SEC;
  size_t left;

  metrics_http_stop (dm->http);
  cor_engine_quiesce (dm->e);
  left = ctl_stop (dm->ctl, jobs_deadline);
  fs_free (dm->fs);
  left += merge_stop (dm->mg, jobs_deadline);
  if (left) {
    log_error ("daemon: %zu job(s) still running at exit; the indexes are committed and "
               "closed, the overlays synced, and the daemon exits without them", left);
    if (cor_engine_finish (dm->e) == -1)
      *ret = 1;
  }
  else {
    merge_free (dm->mg);        /* jobs use the disks: before the engine */
    if (cor_engine_free (dm->e) == -1)
      *ret = 1;
    ctl_free (dm->ctl);
    meta_close (dm->m);
  }
  return left;
}

/* Step 7: tell `corfs mount` waiting on ready_fd that the mount serves
 * (or, with ok false, why the daemon failed to start), and close it. */
static void
report_ready (int ready_fd, bool ok)
{
  if (ok) {
    if (write (ready_fd, "OK\n", 3) != 3) { /* the parent will see EOF */ }
  }
  else {
    const char *msg = log_last_error ();
    dprintf (ready_fd, "ERR %s\n", *msg ? msg : "daemon failed to start");
  }
  close (ready_fd);
}

/* Step 7 for systemd (a Type=notify unit; nothing without
 * NOTIFY_SOCKET): READY=1 once the mount serves.  By then the kernel
 * mount exists and every disk is attached, its parent contacted (unless
 * every block is present); requests arriving before the FUSE loop
 * starts wait in the kernel for its INIT reply, not on any parent.  A
 * daemon that forked (no --foreground) names itself the main process,
 * which a unit allows with NotifyAccess=all; corfs@.service runs it in
 * the foreground instead. */
static void
notify_ready (const struct mount_opts *o, const struct daemon *dm)
{
  int r;

  if (o->foreground)
    r = sd_notifyf (0, "READY=1\nSTATUS=serving %zu disk(s) on %s",
                    cor_disk_count (dm->e), o->mountpoint);
  else
    r = sd_notifyf (0, "READY=1\nMAINPID=%d\nSTATUS=serving %zu disk(s) on %s",
                    (int) getpid (), cor_disk_count (dm->e), o->mountpoint);
  if (r < 0)
    log_warn ("daemon: sd_notify READY=1: %s", strerror (-r));
}

/* Step 8 for systemd: the mount is going (unmounted, or SIGTERM from
 * `systemctl stop`); the final commit follows. */
static void
notify_stopping (const struct mount_opts *o)
{
  int r = sd_notifyf (0, "STOPPING=1\nSTATUS=unmounting %s, final commit", o->mountpoint);

  if (r < 0)
    log_warn ("daemon: sd_notify STOPPING=1: %s", strerror (-r));
}

/* Steps 3-8, in the daemon process.  ready_fd is the pipe to the parent
 * (-1 in the foreground). */
static int
run_daemon (struct mount_opts *o, int ready_fd, const struct worker_fds *w)
{
  struct daemon dm = { .lock_fd = -1, .hold_s = DEFAULT_HOLD_S, .w = w };
  size_t left;
  int ret = 1;

  if (open_disks (o, &dm) == 0 && start_serving (o, &dm) == 0) {
    log_info ("daemon: serving %zu disk(s) on %s (state %s, hold %" PRIu64 " s)",
              cor_disk_count (dm.e), o->mountpoint, o->state, dm.hold_s);
    notify_ready (o, &dm);
    if (ready_fd >= 0) {
      report_ready (ready_fd, true);
      ready_fd = -1;
    }
    ret = fs_run (dm.fs) == 0 ? 0 : 1;
    notify_stopping (o);
    log_info ("daemon: unmounting %s", o->mountpoint);
  }
  else
    sd_notifyf (0, "STATUS=failed to start: %s", log_last_error ());
  left = stop_daemon (&dm, &ret);
  if (ready_fd >= 0)
    report_ready (ready_fd, false);
  if (ret == 0)
    log_info ("daemon: clean exit");
  if (dm.lock_fd >= 0)
    close (dm.lock_fd);         /* releases the state directory (supervised: the
                                 * supervisor's copy keeps it) */
  if (left) {
    /* A thread stuck in the kernel is still running: end the process at
     * once (exit_group), running no exit handlers, which could free what
     * that thread uses or wait for it (a leak checker stopping every
     * thread hangs on one that cannot be stopped). */
    fflush (NULL);
    _exit (ret);
  }
  return ret;
}

int
worker_run (struct mount_opts *o, const struct worker_fds *w)
{
  return run_daemon (o, w->ready_fd, w);
}

/* Step 2, in the child: a session of its own, stdin/stdout on
 * /dev/null, stderr and the log on logfd; then the daemon (or, with
 * --supervise, the supervisor).  Does not return. */
static void
run_child (struct mount_opts *o, int logfd, int ready_fd, int cwd_fd)
{
  int nullfd;

  setsid ();
  if (chdir ("/") == -1) { /* cannot fail for / */ }
  nullfd = open ("/dev/null", O_RDWR);
  if (nullfd >= 0) {
    dup2 (nullfd, 0);
    dup2 (nullfd, 1);
    dup2 (logfd >= 0 ? logfd : nullfd, 2);
    if (nullfd > 2)
      close (nullfd);
  }
  if (logfd >= 0)
    log_set_fd (logfd);
  /* exit, not _exit: atexit handlers (LeakSanitizer) run in the daemon. */
  exit (o->supervise ? supervise_main (o, ready_fd, cwd_fd) : run_daemon (o, ready_fd, NULL));
}

/* In `corfs mount`: wait for the daemon pid's word on the readiness pipe
 * fd (EOF if it died without one).  The exit code. */
static int
wait_ready (const struct mount_opts *o, pid_t pid, int fd)
{
  char msg[2048];
  ssize_t n, total = 0;

  while ((n = read (fd, msg + total, sizeof msg - 1 - total)) > 0)
    total += n;
  close (fd);
  msg[total] = '\0';
  if (strncmp (msg, "OK", 2) == 0)
    return 0;
  msg[strcspn (msg, "\n")] = '\0';
  if (strncmp (msg, "ERR ", 4) == 0)
    fprintf (stderr, "corfs: mount failed: %s\n", msg + 4);
  else {
    int status;
    waitpid (pid, &status, 0);
    fprintf (stderr, "corfs: mount failed: the daemon exited during start-up "
             "(see %s/corfs.log)\n", o->state);
  }
  return 1;
}

int
mount_main (struct mount_opts *o)
{
  int pipefd[2], logfd, cwd_fd = -1;
  pid_t pid;
  char path[PATH_MAX];

  if (o->verbose)
    log_level = LOG_LVL_DEBUG;
  /* Supervised workers parse the settings where `corfs mount` ran. */
  if (o->supervise && (cwd_fd = open (".", O_PATH | O_DIRECTORY | O_CLOEXEC)) == -1) {
    perror ("corfs: the current directory");
    return 1;
  }
  if (mount_resolve (o) == -1)
    return 1;
  if (o->foreground)
    return o->supervise ? supervise_main (o, -1, cwd_fd) : run_daemon (o, -1, NULL);

  /* Opened here, not in the child, so that a failure is reported. */
  snprintf (path, sizeof path, "%s/corfs.log", o->state);
  logfd = open (path, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (logfd == -1) {
    fprintf (stderr, "corfs: log file %s: %s\n", path, strerror (errno));
    return 1;
  }
  if (pipe2 (pipefd, O_CLOEXEC) == -1) {
    perror ("corfs: pipe");
    return 1;
  }
  fflush (NULL);
  pid = fork ();
  if (pid == -1) {
    perror ("corfs: fork");
    return 1;
  }
  if (pid == 0) {
    close (pipefd[0]);
    run_child (o, logfd, pipefd[1], cwd_fd);
  }
  close (pipefd[1]);
  close (logfd);
  return wait_ready (o, pid, pipefd[0]);
}
