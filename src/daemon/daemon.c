/* corfs: `corfs mount` and the daemon.
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
 *   6. start the committer and the control socket, mount FUSE;
 *   7. write "OK" to the pipe; serve until unmounted or SIGTERM;
 *   8. unmount; stop the streamers, readahead and parent requests
 *      (cor_engine_quiesce); stop ctl and its long commands; merge jobs;
 *      final commit and clean close; release the lock.
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
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "common/log.h"
#include "common/util.h"
#include "cor/cor.h"
#include "ctl/ctl.h"
#include "daemon/daemon.h"
#include "fs/fs.h"
#include "merge/merge.h"
#include "meta/meta.h"
#include "remote/remote.h"

#define DEFAULT_BLOCK_SIZE (64 * 1024)
#define DEFAULT_READAHEAD (4 << 20)
#define DEFAULT_HOLD_S 20
#define DEFAULT_CONNECT_TIMEOUT_S 10
#define REQUEST_TIMEOUT_S 30
/* At exit, jobs (long commands, merge and copy jobs) get the hold and
 * this much more to end; one still running then is left (run_daemon). */
#define STOP_GRACE_S 5

static void
mount_usage (FILE *f)
{
  fprintf (f,
"Usage: corfs mount --state DIR [--disk NAME=URL]... [OPTIONS] MOUNTPOINT\n"
"\n"
"Start the corfs daemon: each disk appears as the regular file MOUNTPOINT/NAME,\n"
"sized as its parent.  Blocks are read from the parent on first access and\n"
"kept in a local overlay in DIR; writes stay in the overlay.  Returns once the\n"
"mount serves (or exits non-zero with the daemon's error).\n"
"\n"
"  --state DIR            state directory: index, overlays, control socket, log\n"
"                         (created 0700 if missing; one daemon per directory;\n"
"                         must be the daemon user's and not group/other-writable)\n"
"  --disk NAME=URL        add a disk; NAME is [A-Za-z0-9._-]+.  URL is one of\n"
"                           nbd://HOST[:PORT]/EXPORT\n"
"                           nbd+unix:///EXPORT?socket=PATH\n"
"                           file:///PATH\n"
"                         --disk NAME=@FILE reads the URL from FILE: use it for\n"
"                         secrets (an inline URL is redacted in the process's\n"
"                         command line once parsed, but is visible until then)\n"
"                         Disks recorded in DIR come back without --disk.\n"
"  --config FILE          INI config file (see conf/corfs.conf)\n"
"  --block-size SIZE      block size of new disks, 4K..4M, power of two\n"
"                         (default 64K; recorded per disk, K/M/G = 1024^n)\n"
"  --hold SECONDS         how long a guest request waits for an unreachable\n"
"                         parent before it fails with EIO (1 to %d, default %d;\n"
"                         at most half the kernel's FUSE request timeout,\n"
"                         fs.fuse.default_request_timeout or max_request_timeout,\n"
"                         if one is set: the default is lowered to fit)\n"
"  --connect-timeout SECONDS  one connection attempt to a parent (1 to %d,\n"
"                         default %d)\n"
"  --readahead SIZE       most data fetched ahead of a sequential reader\n"
"                         (default 4M; 0: fetch only what is read).  Also the\n"
"                         kernel's readahead for buffered readers of the mount\n"
"                         (as root; 0 leaves the kernel's 128K)\n"
"  --parent-owned         record that this disk owns its parent (for merge)\n"
"  --incoming             attach new disks as the destination of a migration:\n"
"                         reads come from the parent and are not kept, writes\n"
"                         fail with EROFS until `corfs activate`\n"
  "  --repin NAME           disk NAME's record has no parent identity (written by\n"
"                         an older corfs) although blocks are present: such a\n"
"                         mount is refused, since a swapped parent would go\n"
"                         unnoticed; --repin trusts the parent as it is now\n"
"                         and pins it (only if it is the image the disk came from)\n"
"  --stream=on|off|paused fill the overlay in the background (default on);\n"
"                         `corfs stream` steers it while mounted\n"
"  --write-mode=writeback|mirror\n"
"                         writeback (default): writes stay in the overlay;\n"
"                         mirror: every write also goes to the parent before it\n"
"                         is acknowledged (needs --parent-owned, and a parent\n"
"                         that can flush); then\n"
"                         `corfs pivot` or `corfs abort`\n"
"  -f, --foreground       stay in the foreground, log to stderr\n"
"  -o OPT                 extra FUSE mount option; allow_other lets users other\n"
"                         than the daemon's open the disks (new disks are 0600,\n"
"                         owned by the daemon's user; chmod/chown are kept)\n"
"  -v, --verbose          debug logging\n"
"  -d                     FUSE protocol debugging (implies -f)\n"
"  -h, --help             this help\n"
"\n"
"Stop it with `corfs unmount MOUNTPOINT`, fusermount3 -u, or SIGTERM.\n",
           HOLD_MAX_S, DEFAULT_HOLD_S, CONNECT_TIMEOUT_MAX_S, DEFAULT_CONNECT_TIMEOUT_S);
}

size_t
argv_redact (const char *s, char *out, size_t len)
{
  const char *sep = strstr (s, "://"), *p, *end;
  size_t n = 0;

  /* What is kept: scheme://, the host[:port] after the authority's
   * last '@', and the path up to the first '?', '#' or ';'.  Without
   * "://" the same, from after the last '@' before any of those. */
  if (sep) {
    const char *auth = sep + 3, *auth_end = auth + strcspn (auth, "/?#");
    const char *at = NULL;
    for (const char *q = auth; q < auth_end; q++)
      if (*q == '@')
        at = q;
    n = snprintf (out, len, "%.*s", (int) (auth - s), s);
    p = at ? at + 1 : auth;
  }
  else {
    const char *stop = s + strcspn (s, "?#;"), *at = NULL;
    for (const char *q = s; q < stop; q++)
      if (*q == '@')
        at = q;
    p = at ? at + 1 : s;
  }
  end = p + strcspn (p, "?#;");
  if (n < len)
    n += snprintf (out + n, len - n, "%.*s", (int) (end - p), p);
  return n;
}

/* Overwrite, in place, the URL of a --disk NAME=URL argument (once it
 * has been copied) with what argv_redact keeps of it: argv is what
 * /proc/PID/cmdline and ps show every local user for the daemon's whole
 * life (the daemon is a fork of this process and keeps its argv).  It
 * keeps no userinfo, query, fragment or path parameter, whatever their
 * names (url_redact, for logs and the index, keeps what it knows to be
 * harmless; argv needs no more than what the disk is), so it is never
 * longer; the rest is zeroed.  A URL read from @FILE never was in argv,
 * which is why --help recommends it: argv is readable until this runs,
 * and shells keep history. */
void
scrub_disk_arg (char *arg)
{
  char *eq = strchr (arg, '='), *url;
  size_t n;

  if (!eq || eq[1] == '@')
    return;
  url = eq + 1;
  n = strlen (url);
  char kept[n + 1];
  argv_redact (url, kept, n + 1);
  memset (url, 0, n);
  memcpy (url, kept, strlen (kept));
}

static int
add_disk_arg (struct mount_opts *o, const char *arg)
{
  const char *eq = strchr (arg, '=');
  struct disk_opts *nv, *d;
  char *name;

  /* The argument may be a URL with credentials given the wrong way
   * (no NAME=, or a URL where the name goes): print only what
   * argv_redact keeps of it. */
  if (!eq) {
    char shown[strlen (arg) + 1];
    argv_redact (arg, shown, sizeof shown);
    fprintf (stderr, "corfs: --disk %s: expected NAME=URL\n", shown);
    return -1;
  }
  name = strndup (arg, eq - arg);
  if (!name_is_valid (name)) {
    char shown[strlen (name) + 1];
    argv_redact (name, shown, sizeof shown);
    fprintf (stderr, "corfs: --disk: invalid disk name '%s' (use [A-Za-z0-9._-]+, "
             "at most 64 characters)\n", shown);
    free (name);
    return -1;
  }
  for (size_t i = 0; i < o->nr_disks; i++)
    if (!strcmp (o->disks[i].name, name)) {
      fprintf (stderr, "corfs: --disk: disk %s given twice\n", name);
      free (name);
      return -1;
    }
  nv = realloc (o->disks, (o->nr_disks + 1) * sizeof *nv);
  if (!nv) {
    free (name);
    return -1;
  }
  o->disks = nv;
  d = &nv[o->nr_disks++];
  memset (d, 0, sizeof *d);
  d->name = name;
  d->stream = -1;
  d->release_parent = -1;
  d->write_mode = -1;
  if (eq[1] == '@') {
    d->url = read_small_file (eq + 2);
    if (!d->url) {
      fprintf (stderr, "corfs: --disk %s=@%s: %s\n", name, eq + 2, strerror (errno));
      return -1;
    }
  }
  else
    d->url = strdup (eq + 1);
  if (!d->url || !*d->url) {
    fprintf (stderr, "corfs: --disk %s: empty URL\n", name);
    return -1;
  }
  return 0;
}

int
mount_parse (int argc, char **argv, struct mount_opts *o)
{
  enum { OPT_STATE = 256, OPT_DISK, OPT_CONFIG, OPT_BLOCK_SIZE, OPT_HOLD,
         OPT_CONNECT_TIMEOUT, OPT_PARENT_OWNED, OPT_STREAM, OPT_WRITE_MODE,
         OPT_INCOMING, OPT_READAHEAD, OPT_REPIN };
  static const struct option longopts[] = {
    { "state", required_argument, NULL, OPT_STATE },
    { "disk", required_argument, NULL, OPT_DISK },
    { "config", required_argument, NULL, OPT_CONFIG },
    { "block-size", required_argument, NULL, OPT_BLOCK_SIZE },
    { "hold", required_argument, NULL, OPT_HOLD },
    { "connect-timeout", required_argument, NULL, OPT_CONNECT_TIMEOUT },
    { "parent-owned", no_argument, NULL, OPT_PARENT_OWNED },
    { "stream", required_argument, NULL, OPT_STREAM },
    { "write-mode", required_argument, NULL, OPT_WRITE_MODE },
    { "incoming", no_argument, NULL, OPT_INCOMING },
    { "readahead", required_argument, NULL, OPT_READAHEAD },
    { "repin", required_argument, NULL, OPT_REPIN },
    { "foreground", no_argument, NULL, 'f' },
    { "verbose", no_argument, NULL, 'v' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  const char *config = NULL;
  int c;

  memset (o, 0, sizeof *o);
  o->block_size = DEFAULT_BLOCK_SIZE;
  o->hold_s = DEFAULT_HOLD_S;
  o->connect_timeout_s = DEFAULT_CONNECT_TIMEOUT_S;
  o->stream = COR_STREAM_ON;
  o->readahead = DEFAULT_READAHEAD;
  o->fuse_options = calloc (1, sizeof (char *));
  optind = 1;
  opterr = 0;
  while ((c = getopt_long (argc, argv, "fvdho:", longopts, NULL)) != -1) {
    switch (c) {
    case OPT_STATE: free (o->state); o->state = strdup (optarg); break;
    case OPT_DISK:
      if (add_disk_arg (o, optarg) == -1)
        return -1;
      scrub_disk_arg (optarg);
      break;
    case OPT_CONFIG: config = optarg; break;
    case OPT_BLOCK_SIZE:
      if (parse_size (optarg, &o->block_size) == -1) {
        fprintf (stderr, "corfs: --block-size %s: not a size (e.g. 64K)\n", optarg);
        return -1;
      }
      o->cli_set |= CLI_BLOCK_SIZE;
      break;
    case OPT_HOLD:
    case OPT_CONNECT_TIMEOUT: {
      bool hold = c == OPT_HOLD;
      char why[256];
      if (mount_parse_duration (hold ? "hold" : "connect-timeout", optarg,
                                hold ? &o->hold_s : &o->connect_timeout_s,
                                why, sizeof why) == -1) {
        fprintf (stderr, "corfs: --%s\n", why);
        return -1;
      }
      o->cli_set |= hold ? CLI_HOLD : CLI_CONNECT_TIMEOUT;
      o->hold_given |= hold;
      break;
    }
    case OPT_READAHEAD:
      if (parse_size (optarg, &o->readahead) == -1 || o->readahead > (1u << 30)) {
        fprintf (stderr, "corfs: --readahead %s: not a size up to 1G (e.g. 4M, 0 for the kernel's default)\n", optarg);
        return -1;
      }
      o->cli_set |= CLI_READAHEAD;
      break;
    case OPT_PARENT_OWNED: o->parent_owned = true; break;
    case OPT_STREAM:
      if ((o->stream = parse_stream_mode (optarg)) < 0) {
        fprintf (stderr, "corfs: --stream=%s: expected on, off or paused\n", optarg);
        return -1;
      }
      o->cli_set |= CLI_STREAM;
      break;
    case OPT_WRITE_MODE:
      if (!strcmp (optarg, "mirror"))
        o->mirror = true;
      else if (strcmp (optarg, "writeback") != 0) {
        fprintf (stderr, "corfs: --write-mode=%s: expected writeback or mirror\n", optarg);
        return -1;
      }
      o->have_write_mode = true;
      break;
    case OPT_INCOMING: o->incoming = true; break;
    case OPT_REPIN: {
      char **nv = realloc (o->repin, (o->nr_repin + 1) * sizeof *nv);
      if (!nv)
        return -1;
      o->repin = nv;
      if (!name_is_valid (optarg)) {
        fprintf (stderr, "corfs: --repin: invalid disk name '%s'\n", optarg);
        return -1;
      }
      nv[o->nr_repin++] = strdup (optarg);
      break;
    }
    case 'f': o->foreground = true; break;
    case 'v': o->verbose = true; break;
    case 'd': o->fuse_debug = o->foreground = true; break;
    case 'o': {
      char **nv = realloc (o->fuse_options, (o->nr_fuse_options + 2) * sizeof *nv);
      if (!nv)
        return -1;
      o->fuse_options = nv;
      nv[o->nr_fuse_options++] = strdup (optarg);
      nv[o->nr_fuse_options] = NULL;
      break;
    }
    case 'h': mount_usage (stdout); return 1;
    default:
      if (optopt && optopt < 256)
        fprintf (stderr, "corfs mount: unknown or incomplete option -%c (see corfs mount --help)\n", optopt);
      else
        fprintf (stderr, "corfs mount: unknown or incomplete option %s (see corfs mount --help)\n",
                 argv[optind - 1]);
      return -1;
    }
  }
  if (optind != argc - 1) {
    fprintf (stderr, "corfs mount: %s (see corfs mount --help)\n",
             optind >= argc ? "missing MOUNTPOINT" : "more than one MOUNTPOINT");
    return -1;
  }
  o->mountpoint = strdup (argv[optind]);
  if (!o->state) {
    fprintf (stderr, "corfs mount: --state DIR is required\n");
    return -1;
  }
  if (config && config_load (config, o) == -1)
    return -1;
  {
    const char *which;
    uint64_t kernel_s = fuse_kernel_timeout_s (&which), h;
    char why[512];
    if (hold_fit (o->hold_s, o->hold_given, kernel_s, which, &h, why, sizeof why) == -1) {
      fprintf (stderr, "corfs: %s\n", why);
      return -1;
    }
  }
  if (o->block_size < 4096 || o->block_size > (4 << 20) ||
      (o->block_size & (o->block_size - 1))) {
    fprintf (stderr, "corfs: block size %" PRIu64 " is not a power of two from 4K to 4M\n",
             o->block_size);
    return -1;
  }
  for (size_t i = 0; i < o->nr_disks; i++) {
    uint64_t bs = o->disks[i].block_size;
    if (!o->disks[i].url) {
      fprintf (stderr, "corfs: disk %s has no url\n", o->disks[i].name);
      return -1;
    }
    if (bs && (bs < 4096 || bs > (4 << 20) || (bs & (bs - 1)))) {
      fprintf (stderr, "corfs: disk %s: block size %" PRIu64 " is not a power of two "
               "from 4K to 4M\n", o->disks[i].name, bs);
      return -1;
    }
  }
  return 0;
}

void
mount_opts_free (struct mount_opts *o)
{
  for (size_t i = 0; i < o->nr_disks; i++) {
    free (o->disks[i].name);
    free (o->disks[i].url);
    free (o->disks[i].hint_file);
    free (o->disks[i].credentials_file);
    free (o->disks[i].token_file);
    free (o->disks[i].ca_file);
    free (o->disks[i].client_cert);
    free (o->disks[i].client_key);
    free (o->disks[i].s3_endpoint);
    free (o->disks[i].s3_region);
    for (size_t k = 0; k < o->disks[i].nr_headers; k++)
      free (o->disks[i].headers[k]);
    free (o->disks[i].headers);
  }
  free (o->disks);
  for (size_t i = 0; i < o->nr_fuse_options; i++)
    free (o->fuse_options[i]);
  free (o->fuse_options);
  for (size_t i = 0; i < o->nr_repin; i++)
    free (o->repin[i]);
  free (o->repin);
  free (o->state);
  free (o->mountpoint);
}

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

/* Resolve state and mountpoint to absolute paths (creating the state
 * directory, and checking it: check_state_dir).  0 or -1 (printed). */
static int
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

/* Take the state directory's lock.  Returns the fd (kept open for the
 * daemon's life) or -1 (logged). */
static int
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

const char *fuse_sysctl_dir = "/proc/sys/fs/fuse";

uint64_t
fuse_kernel_timeout_s (const char **which)
{
  static const char *names[] = { "default_request_timeout", "max_request_timeout", NULL };
  static const char *sysctls[] = { "fs.fuse.default_request_timeout",
                                   "fs.fuse.max_request_timeout" };
  uint64_t min = 0;

  /* The kernel gives a mount the default, capped by the maximum: the
   * smaller one that is set. */
  *which = NULL;
  for (size_t i = 0; names[i]; i++) {
    char path[4096];
    snprintf (path, sizeof path, "%s/%s", fuse_sysctl_dir, names[i]);
    char *s = read_small_file (path);
    uint64_t t = s ? strtoull (s, NULL, 10) : 0;
    free (s);
    if (t > 0 && (min == 0 || t < min)) {
      min = t;
      *which = sysctls[i];
    }
  }
  return min;
}

uint64_t
hold_max_for_kernel (uint64_t kernel_s)
{
  return kernel_s >= 2 ? kernel_s / 2 : 1;
}

int
hold_fit (uint64_t hold_s, bool given, uint64_t kernel_s, const char *which,
          uint64_t *effective, char *err, size_t len)
{
  uint64_t max = hold_max_for_kernel (kernel_s);

  *effective = hold_s;
  if (kernel_s == 0 || hold_s <= max)
    return 0;
  if (given) {
    snprintf (err, len, "hold %" PRIu64 " s: the kernel aborts a FUSE mount whose "
              "request waits %" PRIu64 " s (%s), and a hold may be at most half of "
              "that (a request can also wait in the kernel's queue): give a hold of at "
              "most %" PRIu64 " s", hold_s, kernel_s,
              which ? which : "fs.fuse request timeout", max);
    return -1;
  }
  *effective = max;
  return 0;
}

/* The hold to use: the default lowered below the kernel's FUSE request
 * timeout if one is set (a hold that was given and does not fit was
 * refused by mount_parse; the kernel's setting may have changed since:
 * lowered too, then). */
static uint64_t
effective_hold_s (const struct mount_opts *o)
{
  const char *which;
  uint64_t kernel_s = fuse_kernel_timeout_s (&which), h;
  char why[512];

  if (hold_fit (o->hold_s, false, kernel_s, which, &h, why, sizeof why) == 0 &&
      h != o->hold_s)
    log_warn ("daemon: hold lowered from %" PRIu64 " to %" PRIu64 " s: %s is %" PRIu64 " s",
              o->hold_s, h, which, kernel_s);
  return h;
}

/* Is disk name given on the command line / config?  Index or -1. */
static ssize_t
find_opt_disk (const struct mount_opts *o, const char *name)
{
  for (size_t i = 0; i < o->nr_disks; i++)
    if (!strcmp (o->disks[i].name, name))
      return i;
  return -1;
}

/* Read a ranges file: one "OFFSET LENGTH" pair (bytes, K/M/G suffixes
 * allowed) per line; '#' starts a comment.  0 or -1 (logged). */
static int
read_ranges (const char *path, struct cor_range **rv, size_t *nr)
{
  FILE *f = fopen (path, "r");
  char line[256];
  int lineno = 0;

  *rv = NULL;
  *nr = 0;
  if (!f) {
    log_error ("daemon: ranges file %s: %m", path);
    return -1;
  }
  while (fgets (line, sizeof line, f)) {
    char a[64], b[64];
    uint64_t off, len;
    lineno++;
    line[strcspn (line, "#\n")] = '\0';
    if (sscanf (line, "%63s %63s", a, b) != 2) {
      if (sscanf (line, "%63s", a) == 1)
        goto bad;
      continue;
    }
    if (parse_size (a, &off) == -1 || parse_size (b, &len) == -1)
      goto bad;
    struct cor_range *nv = realloc (*rv, (*nr + 1) * sizeof *nv);
    if (!nv)
      goto bad;
    *rv = nv;
    nv[*nr].offset = off;
    nv[(*nr)++].length = len;
  }
  fclose (f);
  return 0;
 bad:
  log_error ("daemon: ranges file %s, line %d: expected OFFSET LENGTH", path, lineno);
  fclose (f);
  free (*rv);
  *rv = NULL;
  return -1;
}

/* STATE/traces/HASH.trace for a parent identity: the fault order of the
 * first cold start of that image, replayed by the streamer next time. */
static void
trace_path_for (const char *state, const char *identity, char *buf, size_t len)
{
  uint64_t h = 0xcbf29ce484222325ULL;

  for (const char *p = identity; *p; p++) {
    h ^= (unsigned char) *p;
    h *= 0x100000001b3ULL;
  }
  snprintf (buf, len, "%s/traces", state);
  mkdir (buf, 0700);
  snprintf (buf, len, "%s/traces/%016" PRIx64 ".trace", state, h);
}

static bool
wants_repin (const struct mount_opts *o, const char *name)
{
  for (size_t i = 0; i < o->nr_repin; i++)
    if (!strcmp (o->repin[i], name))
      return true;
  return false;
}

/* A record in a pinned state (active writeback, handed off) with blocks
 * present must carry the parent's identity: records written before
 * identities were always computed may say identity= (empty), and would
 * accept any image of the same size.  Refused unless --repin NAME says
 * to pin the parent as it is now; --repin over a record that has an
 * identity is refused too (that would be accept-changed-parent).  0 or
 * -1 (logged). */
static int
check_unpinned (const char *name, const struct meta_record *rec, struct meta_disk *md,
                bool repin)
{
  bool pinned_state = meta_identity_binding (rec) && rec->state != META_STANDALONE;
  uint64_t present = meta_count (md, META_PRESENT);

  if (repin && *rec->identity) {
    log_error ("daemon: disk %s: --repin refused: its record pins parent %s as %s "
               "(--repin is only for a record without an identity)", name, rec->url,
               rec->identity);
    return -1;
  }
  if (repin || *rec->identity || !pinned_state || present == 0)
    return 0;
  log_error ("daemon: disk %s: its record has no parent identity (written by an older "
             "corfs) and %" PRIu64 " blocks are present: a different image at %s would "
             "not be noticed; if the parent is the image this disk came from, mount "
             "with --repin %s to pin it", name, present, rec->url, name);
  return -1;
}

/* An active mirror writes its parent, so its identity is not pinned at
 * mount (the mirror's own writes move it) and a reconnect re-pins it.
 * What the record holds is the parent's identity at the last clean stop
 * (cor_engine_quiesce seals it): verify it on a connection of its own
 * before any write, so that an image swapped while the disk was not
 * mounted is refused.  Not after an unclean stop (widened: writes after
 * the last seal), nor without a recorded identity (the seal could not
 * ask the parent): logged.  0 or -1 (logged). */
static int
verify_mirror_parent (const char *name, const struct meta_record *rec, struct remote *r,
                      bool widened, uint64_t hold_s)
{
  char why[1280];
  int err = 0;

  if (!rec->mirror || rec->state != META_ACTIVE || rec->merging)
    return 0;
  if (widened || !*rec->identity) {
    log_info ("daemon: disk %s: mirror: parent %s cannot be verified at this mount (%s)",
              name, remote_url (r), widened ? "the last stop was unclean"
              : "no identity was recorded at the last stop");
    return 0;
  }
  if (remote_verify (r, rec->identity, now_ns () + hold_s * NS_PER_SEC, &err) == 0)
    return 0;
  remote_status (r, why, sizeof why);
  log_error ("daemon: disk %s: mirror: parent %s %s: %s", name, remote_url (r),
             err == ESTALE ? "is not the image the mirror last wrote" : "cannot be verified",
             *why ? why : strerror (err));
  return -1;
}

/* An active mirror writes its parent from now on, which moves the
 * parent's identity: the one recorded at the last stop is spent once
 * verified.  It is cleared, so that a stop that cannot record a new one
 * (seal_mirror in src/cor) leaves "cannot verify" for the next mount,
 * never a stale identity that a healthy parent would fail.  0 or -1. */
static int
forget_mirror_identity (const char *name, struct meta_disk *md, struct meta_record *rec)
{
  if (!rec->mirror || rec->state != META_ACTIVE || rec->merging || !*rec->identity)
    return 0;
  meta_disk_record (md, rec);
  rec->identity[0] = '\0';
  if (meta_disk_update (md, rec) == -1) {
    log_error ("daemon: disk %s: recording the mirror's identity as spent: %m", name);
    return -1;
  }
  return 0;
}

/* Too many blocks for the index's bitmaps (META_MAX_BLOCKS): refused
 * before anything is allocated.  0 or -1 (logged). */
static int
check_nr_blocks (const char *name, const struct remote *r, int64_t size, uint64_t bs)
{
  uint64_t nr = ((uint64_t) size + bs - 1) / bs;

  if (nr <= META_MAX_BLOCKS)
    return 0;
  log_error ("daemon: disk %s: parent %s has %" PRId64 " bytes: %" PRIu64 " blocks of %"
             PRIu64 " bytes, more than the %llu blocks a disk can have (a larger "
             "--block-size, up to 4M, allows up to %llu bytes)", name, remote_url (r),
             size, nr, bs, META_MAX_BLOCKS, META_MAX_BLOCKS << 22);
  return -1;
}

/* An interrupted activation (record activating) whose parent fails the
 * mount's checks is not finished by a later mount either: the record goes
 * back to incoming (its epoch kept: `activate` with the same epoch
 * finishes it), as after a failed `activate`. */
static void
unfinish_activation (const char *name, struct meta_disk *md)
{
  struct meta_record rec;

  meta_disk_record (md, &rec);
  if (rec.state != META_ACTIVATING)
    return;
  rec.state = META_INCOMING;
  if (meta_disk_update (md, &rec) == -1)
    log_error ("daemon: disk %s: putting an interrupted activation back to incoming: %m",
               name);
  else
    log_warn ("daemon: disk %s: the interrupted activation (epoch %" PRIu64 ") is undone: "
              "the disk is incoming again until `activate --epoch %" PRIu64 "` is repeated",
              name, rec.epoch, rec.epoch);
}

/* Attach one disk (steps 5): open its index record (creating it for a new
 * disk), its parent and its overlay, and add it to the engine.  url is
 * NULL for a recorded disk not given this time. */
static int
attach_disk (struct mount_opts *o, struct meta *m, struct cor_engine *e,
             const char *name, const struct disk_opts *dopt, uint64_t hold_s)
{
  struct meta_record rec, init;
  bool recorded = meta_record_get (m, name, &rec) == 0;
  struct remote_config rcfg = {
    .disk = name,
    .connect_timeout_ns = o->connect_timeout_s * NS_PER_SEC,
    .request_timeout_ns = REQUEST_TIMEOUT_S * NS_PER_SEC,
  };
  struct remote *r = NULL;
  struct meta_disk *md = NULL;
  struct cor_disk *d;
  char overlay[PATH_MAX];
  CLEANUP_FREE char *redacted = NULL;
  bool rewrite_url = false;
  int err;

  if (!recorded && errno != ENOENT) {
    log_error ("daemon: disk %s: reading its record: %m", name);
    return -1;
  }
  if (recorded && (o->incoming || (dopt && dopt->incoming)) &&
      rec.state != META_INCOMING && rec.state != META_ACTIVATING) {
    log_error ("daemon: disk %s is recorded %s; --incoming conflicts (a disk is "
               "incoming only until it is activated)", name,
               meta_state_name (rec.state));
    return -1;
  }
  bool want_mirror = dopt && dopt->write_mode >= 0 ? dopt->write_mode == 1 : o->mirror;
  bool said_mode = (dopt && dopt->write_mode >= 0) || o->have_write_mode;
  if (recorded && said_mode && want_mirror != rec.mirror && rec.state != META_STANDALONE) {
    log_error ("daemon: disk %s is recorded with write mode %s; a conflicting "
               "--write-mode was given", name, rec.mirror ? "mirror" : "writeback");
    return -1;
  }
  if (!recorded && want_mirror && !(o->parent_owned || (dopt && dopt->parent_owned))) {
    log_error ("daemon: disk %s: --write-mode=mirror writes the parent: it needs "
               "--parent-owned", name);
    return -1;
  }
  if (dopt) {
    redacted = url_redact (dopt->url);
    if (!redacted) {
      log_error ("daemon: disk %s: out of memory", name);
      return -1;
    }
    if (recorded && strcmp (redacted, rec.url) != 0) {
      /* A record written by corfs up to 63d3432 holds the URL in that
       * version's redaction (a whole query dropped): the same URL given
       * again is accepted, and the record rewritten in the current
       * form, which a remount without --disk can connect with. */
      CLEANUP_FREE char *legacy = url_redact_legacy (dopt->url);
      if (!legacy || strcmp (legacy, rec.url) != 0) {
        log_error ("daemon: disk %s is recorded with parent %s; --disk gives %s "
                   "(a disk's parent cannot change)", name, rec.url, redacted);
        return -1;
      }
      rewrite_url = true;
    }
    uint64_t bs = dopt->block_size ? dopt->block_size : 0;
    if (recorded && bs && bs != rec.block_size) {
      log_error ("daemon: disk %s is recorded with block size %" PRIu32
                 "; a conflicting block size %" PRIu64 " was given", name, rec.block_size, bs);
      return -1;
    }
  }
  rcfg.url = dopt ? dopt->url : rec.url;
  if (dopt) {
    rcfg.credentials_file = dopt->credentials_file;
    rcfg.token_file = dopt->token_file;
    rcfg.headers = (const char *const *) dopt->headers;
    rcfg.ca_file = dopt->ca_file;
    rcfg.client_cert = dopt->client_cert;
    rcfg.client_key = dopt->client_key;
    rcfg.insecure = dopt->insecure;
    rcfg.s3_endpoint = dopt->s3_endpoint;
    rcfg.s3_region = dopt->s3_region;
    rcfg.s3_virtual_host = dopt->s3_virtual_host;
  }
  /* A merge may have changed the parent before a crash: its identity is
   * re-pinned when the merge is run again (DESIGN.md rule 9). */
  /* The parent's identity moves with our own writes (merge, mirror) and
   * with the source's before activation: those are pinned afresh. */
  rcfg.pinned_identity = recorded && meta_identity_binding (&rec) ? rec.identity : NULL;
  if (rewrite_url && (!rcfg.pinned_identity || !*rcfg.pinned_identity)) {
    /* Nothing to confirm the old-form match with: the URL stays as the
     * record has it. */
    log_error ("daemon: disk %s is recorded with parent %s by an older corfs; --disk "
               "gives %s, which only the parent's pinned identity could confirm, and "
               "none is pinned while a disk is incoming, activating, merging or an "
               "active mirror: mount without --disk", name, rec.url, redacted);
    return -1;
  }
  if (recorded && dopt && dopt->accept_changed_parent) {
    /* Re-basing onto a changed parent is only sane with nothing local. */
    struct meta_disk *probe = NULL;
    uint64_t present = 0;
    if (meta_disk_open (m, name, NULL, &probe, NULL) == 0) {
      present = meta_count (probe, META_PRESENT);
      meta_disk_close (probe, true);
    }
    if (present > 0) {
      log_error ("daemon: disk %s: accept-changed-parent refused: %" PRIu64 " blocks are "
                 "already present and would mix two images (start a new state directory)",
                 name, present);
      return -1;
    }
    log_warn ("daemon: disk %s: accept-changed-parent: re-pinning the parent's identity", name);
    rcfg.pinned_identity = NULL;
  }
  rcfg.writable = (recorded && rec.parent_owned) || (!recorded && want_mirror);
  if (remote_open (&rcfg, &r) == -1)
    return -1;                  /* remote_open said why */
  if (recorded && rec.merging) {
    log_warn ("daemon: disk %s: a merge into %s was interrupted; run `corfs merge` "
              "again to finish it", name, rec.url);
    remote_set_modifying (r, true);
  }

  if (recorded) {
    bool widened = false;
    if (meta_disk_open (m, name, NULL, &md, &widened) == -1) {
      log_error ("daemon: disk %s: opening its index: %m", name);
      goto err;
    }
    if (verify_mirror_parent (name, &rec, r, widened, hold_s) == -1)
      goto err;
    if (dopt && (dopt->parent_owned || o->parent_owned) && !rec.parent_owned) {
      rec.parent_owned = true;
      meta_disk_record (md, &rec);
      rec.parent_owned = true;
      if (meta_disk_update (md, &rec) == -1)
        goto err;
    }
    if (check_unpinned (name, &rec, md, wants_repin (o, name)) == -1)
      goto err;
    /* A URL matched only through the old redaction (which dropped whole
     * queries: "?socket=/x/sig.sock" and "?socket=/y/sig.sock" looked the
     * same) is confirmed by the parent's identity before it is recorded,
     * even when every block is present. */
    if (meta_count (md, META_PRESENT) < meta_nr_blocks (md) || wants_repin (o, name) ||
        rewrite_url) {
      /* The parent is needed (or to be pinned): check that it is still
       * the same image. */
      int64_t size = remote_get_size (r, now_ns () + hold_s * NS_PER_SEC, &err);
      if (size < 0) {
        char msg[1280];
        remote_status (r, msg, sizeof msg);
        log_error ("daemon: disk %s: parent %s: %s", name, remote_url (r),
                   err == ESTALE ? msg : *msg ? msg : strerror (err));
        unfinish_activation (name, md);
        goto err;
      }
      if ((uint64_t) size != rec.size) {
        log_error ("daemon: disk %s: parent %s has size %" PRId64 " but the disk was "
                   "recorded with size %" PRIu64 "; refusing to attach a different image",
                   name, remote_url (r), size, rec.size);
        unfinish_activation (name, md);
        goto err;
      }
      /* A re-pinned identity (accept-changed-parent, or an interrupted
       * merge) is recorded. */
      char cur[META_ID_MAX];
      remote_identity (r, cur, sizeof cur);
      meta_disk_record (md, &rec);
      /* Not an active mirror's: its writes move the identity from now on,
       * and only the stop's seal records one (forget_mirror_identity). */
      bool active_mirror = rec.mirror && rec.state == META_ACTIVE && !rec.merging;
      if (*cur && strcmp (cur, rec.identity) != 0 && !active_mirror) {
        snprintf (rec.identity, sizeof rec.identity, "%s", cur);
        if (meta_disk_update (md, &rec) == -1)
          goto err;
      }
      if (rewrite_url) {
        meta_disk_record (md, &rec);
        log_info ("daemon: disk %s: parent recorded as %s by an older corfs; "
                  "recorded as %s now", name, rec.url, redacted);
        snprintf (rec.url, sizeof rec.url, "%s", redacted);
        if (meta_disk_update (md, &rec) == -1)
          goto err;
      }
    }
    else
      log_info ("daemon: disk %s: every block is present; not contacting the parent", name);
    /* Only once the parent's checks passed: a mount that fails them
     * keeps the verified identity for the next. */
    if (forget_mirror_identity (name, md, &rec) == -1)
      goto err;
  }
  else {
    int64_t size = remote_get_size (r, now_ns () + hold_s * NS_PER_SEC, &err);
    if (size < 0) {
      char msg[1280];
      remote_status (r, msg, sizeof msg);
      log_error ("daemon: disk %s: cannot reach parent %s: %s", name, remote_url (r),
                 *msg ? msg : strerror (err));
      goto err;
    }
    if (size == 0) {
      log_error ("daemon: disk %s: parent %s is empty", name, remote_url (r));
      goto err;
    }
    if (check_nr_blocks (name, r, size, dopt->block_size ? dopt->block_size : o->block_size)
        == -1)
      goto err;
    memset (&init, 0, sizeof init);
    snprintf (init.url, sizeof init.url, "%s", redacted);
    remote_identity (r, init.identity, sizeof init.identity);
    init.size = size;
    init.block_size = dopt->block_size ? dopt->block_size : o->block_size;
    init.state = dopt->incoming || o->incoming ? META_INCOMING : META_ACTIVE;
    init.parent_owned = dopt->parent_owned || o->parent_owned;
    init.generation = 1;
    init.mirror = want_mirror;
    if (meta_disk_open (m, name, &init, &md, NULL) == -1) {
      log_error ("daemon: disk %s: creating its index record: %m", name);
      goto err;
    }
    log_info ("daemon: disk %s: new, parent %s, %" PRIu64 " bytes, block size %" PRIu32,
              name, init.url, init.size, init.block_size);
  }

  {
    struct meta_record now;
    meta_disk_record (md, &now);
    if (now.mirror && now.state == META_ACTIVE &&
        remote_make_writable (r, now_ns () + hold_s * NS_PER_SEC, &err) == -1) {
      char why[1280];
      remote_status (r, why, sizeof why);
      log_error ("daemon: disk %s: mirror mode needs a writable parent: %s", name,
                 *why ? why : strerror (err));
      goto err;
    }
    /* Every guest fsync flushes the parent: one that cannot flush (an
     * NBD server without FLUSH) would fail them all, so refuse now. */
    if (now.mirror && now.state == META_ACTIVE &&
        remote_flush_all (r, now_ns () + hold_s * NS_PER_SEC, &err) == -1 &&
        err == EOPNOTSUPP) {
      log_error ("daemon: disk %s: mirror mode needs a parent that can flush: %s offers "
                 "none, so no write to it could be made durable (serve it with flush, or use "
                 "writeback mode)", name, remote_url (r));
      goto err;
    }
  }
  snprintf (overlay, sizeof overlay, "%s/%s.overlay", o->state, name);
  struct cor_disk_config dcfg = {
    .name = name, .overlay_path = overlay, .md = md, .remote = r,
    .hold_ns = hold_s * NS_PER_SEC,
    .stream = dopt && dopt->stream >= 0 ? dopt->stream : o->stream,
    .rate = dopt && dopt->have_rate ? dopt->rate : o->rate,
    .release_parent = !dopt || dopt->release_parent != 0,
    .readahead = o->readahead,
  };
  struct cor_range *hints = NULL;
  size_t nr_hints = 0;
  char trace[PATH_MAX];
  {
    struct meta_record now;
    meta_disk_record (md, &now);
    trace_path_for (o->state, now.identity, trace, sizeof trace);
    dcfg.trace_path = trace;
  }
  if (dopt && dopt->hint_file) {
    if (read_ranges (dopt->hint_file, &hints, &nr_hints) == -1)
      goto err;
  }
  else if (access (trace, R_OK) == 0 && meta_count (md, META_PRESENT) == 0 &&
           read_ranges (trace, &hints, &nr_hints) == 0)
    log_info ("daemon: disk %s: streaming the %zu ranges of %s first", name, nr_hints, trace);
  dcfg.hints = hints;
  dcfg.nr_hints = nr_hints;
  if (cor_disk_add (e, &dcfg, &d) == -1) {
    free (hints);
    goto err;
  }
  free (hints);
  return 0;

 err:
  if (md)
    meta_disk_close (md, true);
  remote_close (r);
  return -1;
}

/* Steps 3-8, in the daemon process.  ready_fd is the pipe to the parent
 * (-1 in the foreground). */
static int
run_daemon (struct mount_opts *o, int ready_fd)
{
  struct meta *m = NULL;
  struct cor_engine *e = NULL;
  struct ctl *ctl = NULL;
  struct merge *mg = NULL;
  struct fs *fs = NULL;
  char path[PATH_MAX], fsname[PATH_MAX + 8], **names = NULL;
  uint64_t hold_s = DEFAULT_HOLD_S;
  size_t left = 0;
  int lock_fd, ret = 1;

  lock_fd = lock_state (o->state);
  if (lock_fd == -1)
    goto out;
  hold_s = effective_hold_s (o);
  snprintf (path, sizeof path, "%s/index", o->state);
  if (meta_open (path, &m) == -1) {
    log_error ("daemon: cannot open the index in %s: %m", path);
    goto out;
  }
  if (cor_engine_new (m, &e) == -1)
    goto out;

  /* Disks recorded before come back; new ones are added. */
  if (meta_disk_names (m, &names) == -1) {
    log_error ("daemon: listing disks: %m");
    goto out;
  }
  for (size_t i = 0; names[i]; i++) {
    ssize_t k = find_opt_disk (o, names[i]);
    if (attach_disk (o, m, e, names[i], k >= 0 ? &o->disks[k] : NULL, hold_s) == -1)
      goto out;
  }
  for (size_t i = 0; i < o->nr_disks; i++)
    if (!cor_disk_find (e, o->disks[i].name) &&
        attach_disk (o, m, e, o->disks[i].name, &o->disks[i], hold_s) == -1)
      goto out;
  for (size_t i = 0; i < o->nr_repin; i++)
    if (!cor_disk_find (e, o->repin[i])) {
      log_error ("daemon: --repin %s: no such disk", o->repin[i]);
      goto out;
    }
  if (cor_disk_count (e) == 0) {
    log_error ("daemon: no disks: give --disk NAME=URL (state directory %s has none recorded)",
               o->state);
    goto out;
  }

  if (cor_engine_start (e) == -1)
    goto out;
  if (!(mg = merge_new (o->state)))
    goto out;
  snprintf (path, sizeof path, "%s/corfs.sock", o->state);
  if (ctl_start (e, mg, path, &ctl) == -1)
    goto out;
  snprintf (fsname, sizeof fsname, "corfs:%s", o->state);
  struct fs_config fcfg = {
    .mountpoint = o->mountpoint, .fsname = fsname,
    .options = (const char *const *) o->fuse_options, .debug = o->fuse_debug,
    .readahead_kb = o->readahead / 1024,
  };
  if (fs_mount (e, &fcfg, &fs) == -1)
    goto out;

  log_info ("daemon: serving %zu disk(s) on %s (state %s, hold %" PRIu64 " s)",
            cor_disk_count (e), o->mountpoint, o->state, hold_s);
  if (ready_fd >= 0) {
    if (write (ready_fd, "OK\n", 3) != 3) { /* the parent will see EOF */ }
    close (ready_fd);
    ready_fd = -1;
  }
  ret = fs_run (fs) == 0 ? 0 : 1;
  log_info ("daemon: unmounting %s", o->mountpoint);

 out:
  /* Order: the FUSE session has ended, so no guest request is in
   * flight.  Background work first (cor_engine_quiesce: streamers and
   * readahead told to stop, parent requests cancelled, exclusive commands
   * and aborts give up), so that nothing below waits out a stalled
   * parent; then no more commands, with the long ones still running
   * joined (ctl_stop) before the FUSE session goes; jobs and streamers
   * (which emit events into ctl) before ctl's memory; the engine's final
   * commit last.  Jobs are waited for at most the hold and 5 s more: one
   * stuck in the kernel (flatten --to a filesystem that does not answer)
   * is logged and left running, and then the engine, the jobs and ctl
   * are not freed (that thread may still use them; the process exits),
   * though every disk still gets its final commit and clean close. */
  {
    uint64_t jobs_deadline = now_ns () + (hold_s + STOP_GRACE_S) * NS_PER_SEC;
    cor_engine_quiesce (e);
    left = ctl_stop (ctl, jobs_deadline);
    fs_free (fs);
    left += merge_stop (mg, jobs_deadline);
    if (left) {
      log_error ("daemon: %zu job(s) still running at exit; the indexes are committed and "
                 "closed, the overlays synced, and the daemon exits without them", left);
      if (cor_engine_finish (e) == -1)
        ret = 1;
    }
    else {
      merge_free (mg);          /* jobs use the disks: before the engine */
      if (cor_engine_free (e) == -1)
        ret = 1;
      ctl_free (ctl);
      meta_close (m);
    }
  }
  if (names) {
    for (size_t i = 0; names[i]; i++)
      free (names[i]);
    free (names);
  }
  if (ready_fd >= 0) {
    const char *msg = log_last_error ();
    dprintf (ready_fd, "ERR %s\n", *msg ? msg : "daemon failed to start");
    close (ready_fd);
  }
  if (ret == 0)
    log_info ("daemon: clean exit");
  if (lock_fd >= 0)
    close (lock_fd);            /* releases the state directory */
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
mount_main (struct mount_opts *o)
{
  int pipefd[2], logfd;
  pid_t pid;
  char path[PATH_MAX], msg[2048];
  ssize_t n, total = 0;

  if (o->verbose)
    log_level = LOG_LVL_DEBUG;
  if (mount_resolve (o) == -1)
    return 1;
  if (o->foreground)
    return run_daemon (o, -1);

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
    setsid ();
    if (chdir ("/") == -1) { /* cannot fail for / */ }
    int nullfd = open ("/dev/null", O_RDWR);
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
    exit (run_daemon (o, pipefd[1]));
  }
  close (pipefd[1]);
  close (logfd);
  while ((n = read (pipefd[0], msg + total, sizeof msg - 1 - total)) > 0)
    total += n;
  close (pipefd[0]);
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
