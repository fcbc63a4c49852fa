/* corfs: client commands: unmount, status. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/cleanup.h"
#include "common/jsonl.h"
#include "common/util.h"

/* Undo the octal escapes of /proc/self/mountinfo (\040 for space...). */
static void
unescape (char *s)
{
  char *w = s;
  while (*s) {
    if (s[0] == '\\' && s[1] >= '0' && s[1] <= '7' && s[2] && s[3]) {
      *w++ = (char) strtol ((char[]) { s[1], s[2], s[3], 0 }, NULL, 8);
      s += 4;
    }
    else
      *w++ = *s++;
  }
  *w = '\0';
}

/* Find the corfs mount at mnt; returns its state directory (malloc'd). */
static char *
find_mount_state (const char *mnt)
{
  FILE *f = fopen ("/proc/self/mountinfo", "r");
  char *line = NULL, *state = NULL;
  size_t cap = 0;

  if (!f)
    return NULL;
  while (getline (&line, &cap, f) != -1) {
    /* id parent maj:min root mountpoint opts [optional...] - fstype source superopts */
    char *fields[16], *save = NULL, *sep;
    int n = 0;
    sep = strstr (line, " - ");
    if (!sep)
      continue;
    *sep = '\0';
    for (char *t = strtok_r (line, " ", &save); t && n < 16; t = strtok_r (NULL, " ", &save))
      fields[n++] = t;
    if (n < 5)
      continue;
    unescape (fields[4]);
    if (strcmp (fields[4], mnt) != 0)
      continue;
    char *fstype = strtok_r (sep + 3, " ", &save);
    char *source = strtok_r (NULL, " ", &save);
    if (fstype && source && !strcmp (fstype, "fuse.corfs") && !strncmp (source, "corfs:", 6)) {
      unescape (source);
      free (state);
      state = strdup (source + 6);   /* the last (topmost) mount wins */
    }
  }
  free (line);
  fclose (f);
  return state;
}

int
cli_unmount (int argc, char **argv)
{
  char mnt[PATH_MAX], path[PATH_MAX + 16];
  CLEANUP_FREE char *state = NULL;
  pid_t pid;
  int status, fd;

  if (argc == 2 && (!strcmp (argv[1], "--help") || !strcmp (argv[1], "-h"))) {
    printf ("Usage: corfs unmount MOUNTPOINT\n\n"
            "Unmount a corfs mount and wait until its daemon has made everything\n"
            "durable and released its state directory.\n");
    return 0;
  }
  if (argc != 2 || argv[1][0] == '-') {
    fprintf (stderr, "corfs unmount: expected one MOUNTPOINT (see corfs unmount --help)\n");
    return 2;
  }
  if (!realpath (argv[1], mnt)) {
    fprintf (stderr, "corfs unmount: %s: %s\n", argv[1], strerror (errno));
    return 1;
  }
  state = find_mount_state (mnt);
  if (!state) {
    fprintf (stderr, "corfs unmount: %s is not a corfs mount\n", mnt);
    return 1;
  }
  /* Open the lock file before unmounting, to wait on it after. */
  snprintf (path, sizeof path, "%s/corfs.pid", state);
  fd = open (path, O_RDONLY | O_CLOEXEC);

  pid = fork ();
  if (pid == 0) {
    execlp ("fusermount3", "fusermount3", "-u", mnt, (char *) NULL);
    perror ("corfs unmount: fusermount3");
    _exit (127);
  }
  if (pid == -1 || waitpid (pid, &status, 0) == -1 ||
      !WIFEXITED (status) || WEXITSTATUS (status) != 0) {
    fprintf (stderr, "corfs unmount: fusermount3 -u %s failed\n", mnt);
    if (fd >= 0)
      close (fd);
    return 1;
  }
  if (fd == -1)
    return 0;                   /* no daemon lock to wait for */
  /* The daemon holds an exclusive flock until it has finished. */
  for (int i = 0; i < 600; i++) {
    if (flock (fd, LOCK_SH | LOCK_NB) == 0) {
      close (fd);
      return 0;
    }
    sleep_ns (100 * 1000000ULL);
  }
  close (fd);
  fprintf (stderr, "corfs unmount: the daemon of %s has not exited after 60 s\n", state);
  return 1;
}

/* One request/reply on a fresh connection.  Returns the reply (caller
 * decrefs) with "ok" true, or NULL after printing the error. */
static json_t *
request (const char *cmdname, const char *state, json_t *req)
{
  char err[512];
  int fd = jsonl_connect (state, err, sizeof err);
  json_t *reply;

  if (fd == -1) {
    fprintf (stderr, "corfs %s: %s\n", cmdname, err);
    json_decref (req);
    return NULL;
  }
  if (!(reply = jsonl_call (fd, req))) {
    fprintf (stderr, "corfs %s: talking to the daemon of %s: %s\n", cmdname, state,
             strerror (errno));
    json_decref (req);
    close (fd);
    return NULL;
  }
  json_decref (req);
  close (fd);
  if (!json_is_true (json_object_get (reply, "ok"))) {
    fprintf (stderr, "corfs %s: %s\n", cmdname,
             json_string_value (json_object_get (reply, "error")));
    json_decref (reply);
    return NULL;
  }
  return reply;
}

/* A connection subscribed to the daemon's events, or -1 (then the
 * caller only polls). */
static int
subscribe_events (const char *state)
{
  char err[512];
  int fd = jsonl_connect (state, err, sizeof err);
  json_t *req = json_pack ("{s:s}", "cmd", "events"), *reply = NULL;

  /* The reply means the daemon has subscribed us: no event after it is
   * missed by the status check that follows. */
  if (fd >= 0 && (!(reply = jsonl_call (fd, req)))) {
    close (fd);
    fd = -1;
  }
  json_decref (reply);
  json_decref (req);
  return fd;
}

/* Sleep up to timeout_ns, less if an event (any) arrives on evfd.
 * Returns evfd, or -1 once it has failed (closed). */
static int
wait_event (int evfd, uint64_t timeout_ns)
{
  struct pollfd p = { .fd = evfd, .events = POLLIN };

  if (evfd < 0) {
    sleep_ns (timeout_ns);
    return -1;
  }
  if (poll (&p, 1, timeout_ns / 1000000) > 0) {
    json_t *ev = jsonl_recv (evfd);     /* one line; the next poll sees the rest */
    if (!ev) {
      close (evfd);
      return -1;
    }
    json_decref (ev);
  }
  return evfd;
}

static void
human_size (uint64_t n, char *buf, size_t len)
{
  static const char *units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
  double v = n;
  int u = 0;
  while (v >= 1024 && u < 5) {
    v /= 1024;
    u++;
  }
  snprintf (buf, len, u ? "%.1f %s" : "%.0f %s", v, units[u]);
}

/* "[#######.......]  45.2%  12.0 MiB/s  ETA 0:12" */
static void
progress_line (json_t *d, char *buf, size_t len)
{
  uint64_t sz = json_integer_value (json_object_get (d, "size"));
  uint64_t pr = json_integer_value (json_object_get (d, "present_bytes"));
  json_t *st = json_object_get (d, "stream");
  double pct = sz ? 100.0 * pr / sz : 100.0, bps = json_real_value (json_object_get (st, "bytes_per_s"));
  int64_t eta = json_integer_value (json_object_get (st, "eta_s"));
  char bar[31], rate[32], etas[32] = "";
  int fill = (int) (pct * 30 / 100);

  for (int i = 0; i < 30; i++)
    bar[i] = i < fill ? '#' : '.';
  bar[30] = '\0';
  human_size ((uint64_t) bps, rate, sizeof rate);
  if (eta > 0)
    snprintf (etas, sizeof etas, "  ETA %" PRId64 ":%02" PRId64, eta / 60, eta % 60);
  snprintf (buf, len, "[%s] %5.1f%%  %s/s  %s%s", bar, pct, rate,
            json_string_value (json_object_get (st, "state")), etas);
}

static void
print_disk (json_t *d)
{
  char size[32], present[32], dirty[32];
  uint64_t sz = json_integer_value (json_object_get (d, "size"));
  uint64_t pr = json_integer_value (json_object_get (d, "present_bytes"));
  json_t *parent = json_object_get (d, "parent"), *owner = json_object_get (d, "owner");
  const char *err = json_string_value (json_object_get (parent, "last_error"));

  human_size (sz, size, sizeof size);
  human_size (pr, present, sizeof present);
  human_size (json_integer_value (json_object_get (d, "dirty_bytes")), dirty, sizeof dirty);
  printf ("%s: %s, present %s (%.1f%%), dirty %s, %s, %s (epoch %" JSON_INTEGER_FORMAT ")\n",
          json_string_value (json_object_get (d, "name")), size, present,
          sz ? 100.0 * pr / sz : 100.0, dirty,
          json_string_value (json_object_get (d, "health")),
          json_string_value (json_object_get (owner, "state")),
          json_integer_value (json_object_get (owner, "epoch")));
  printf ("  parent %s: %s%s%s\n", json_string_value (json_object_get (parent, "url")),
          json_string_value (json_object_get (parent, "state")),
          err && *err ? ", last error: " : "", err && *err ? err : "");
  {
    char line[160];
    json_t *st = json_object_get (d, "stream");
    const char *serr = json_string_value (json_object_get (st, "last_error"));
    progress_line (d, line, sizeof line);
    printf ("  stream %s%s%s\n", line, serr && *serr ? ", last error: " : "",
            serr && *serr ? serr : "");
  }
}

static bool
all_complete (json_t *disks)
{
  size_t i;
  json_t *d;

  json_array_foreach (disks, i, d)
    if (!json_is_true (json_object_get (d, "complete")))
      return false;
  return true;
}

/* Append the extents of from to to, joining one that continues the last
 * (a page may end inside an extent). */
static void
append_extents (json_t *to, json_t *from)
{
  size_t i;
  json_t *e;

  json_array_foreach (from, i, e) {
    json_t *last = json_array_get (to, json_array_size (to) - 1);
    json_int_t off = json_integer_value (json_object_get (e, "offset"));
    json_int_t len = json_integer_value (json_object_get (e, "length"));
    if (last && json_integer_value (json_object_get (last, "offset")) +
        json_integer_value (json_object_get (last, "length")) == off)
      json_object_set_new (last, "length", json_integer (
                             json_integer_value (json_object_get (last, "length")) + len));
    else
      json_array_append (to, e);
  }
}

/* The daemon sends long maps in pages ("truncated", "next_offset"): fetch
 * the rest of disk d's maps, so that the output holds them whole.  The
 * pages are taken one after another, not at one instant.  0, or -1 after
 * printing the error. */
static int
complete_maps (const char *state, json_t *d)
{
  json_t *maps = json_object_get (d, "maps");
  const char *name = json_string_value (json_object_get (d, "name"));
  json_int_t prev = -1;

  while (maps && json_is_true (json_object_get (maps, "truncated"))) {
    json_int_t next = json_integer_value (json_object_get (maps, "next_offset"));
    json_t *r, *page;
    if (!name || next <= prev) {
      fprintf (stderr, "corfs status: disk %s: the daemon's map pages do not advance (at %lld)\n",
               name ? name : "?", (long long) next);
      return -1;
    }
    prev = next;
    r = request ("status", state, json_pack ("{s:s, s:s, s:b, s:I}", "cmd", "status",
                                             "disk", name, "maps", 1, "maps_from", next));
    if (!r)
      return -1;
    page = json_object_get (json_array_get (json_object_get (r, "disks"), 0), "maps");
    if (!page) {
      fprintf (stderr, "corfs status: disk %s: the daemon sent no maps\n", name);
      json_decref (r);
      return -1;
    }
    append_extents (json_object_get (maps, "present"), json_object_get (page, "present"));
    append_extents (json_object_get (maps, "dirty"), json_object_get (page, "dirty"));
    json_object_set (maps, "truncated", json_object_get (page, "truncated"));
    if (json_object_get (page, "next_offset"))
      json_object_set (maps, "next_offset", json_object_get (page, "next_offset"));
    json_decref (r);
  }
  if (maps)
    json_object_del (maps, "next_offset");
  return 0;
}

/* The text form of disk d's maps (after complete_maps): each map's
 * extents, one "OFFSET LENGTH" line (bytes) each. */
static void
print_maps (json_t *d)
{
  static const char *const which[] = { "present", "dirty" };
  json_t *maps = json_object_get (d, "maps");

  for (size_t k = 0; maps && k < 2; k++) {
    json_t *list = json_object_get (maps, which[k]), *e;
    size_t i;
    printf ("  %s extents: %zu (offset length, in bytes)\n", which[k], json_array_size (list));
    json_array_foreach (list, i, e)
      printf ("    %" JSON_INTEGER_FORMAT " %" JSON_INTEGER_FORMAT "\n",
              json_integer_value (json_object_get (e, "offset")),
              json_integer_value (json_object_get (e, "length")));
  }
}

int
cli_status (int argc, char **argv)
{
  enum { OPT_STATE = 256, OPT_JSON, OPT_MAPS };
  static const struct option longopts[] = {
    { "state", required_argument, NULL, OPT_STATE },
    { "json", no_argument, NULL, OPT_JSON },
    { "maps", no_argument, NULL, OPT_MAPS },
    { "watch", no_argument, NULL, 'w' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  const char *state = NULL, *name = NULL;
  bool json = false, maps = false, watch = false;
  char err[512];
  int c, fd, ret = 1;
  json_t *req, *reply;

  optind = 1;
  opterr = 0;
  while ((c = getopt_long (argc, argv, "hw", longopts, NULL)) != -1) {
    switch (c) {
    case OPT_STATE: state = optarg; break;
    case 'w': watch = true; break;
    case OPT_JSON: json = true; break;
    case OPT_MAPS: maps = true; break;
    case 'h':
      printf ("Usage: corfs status --state DIR [NAME] [--json] [--maps] [--watch]\n\n"
              "Per disk: size, bytes present, dirty bytes, health (rw, ro, failed),\n"
              "owner state and epoch, parent URL, state and last error, streamer\n"
              "state, rate and ETA.\n"
              "  --json   machine-readable output (fields in docs/control.md)\n"
              "  --maps   add the present and dirty extents (offset, length in bytes,\n"
              "           one a line without --json; a long map is read in pages,\n"
              "           one after another)\n"
              "  --watch  refresh every second (a live progress bar on a terminal)\n"
              "           until every disk is complete\n");
      return 0;
    default:
      fprintf (stderr, "corfs status: unknown or incomplete option %s (see corfs status --help)\n",
               argv[optind - 1]);
      return 2;
    }
  }
  if (optind < argc)
    name = argv[optind++];
  if (optind < argc || !state) {
    fprintf (stderr, "corfs status: %s (see corfs status --help)\n",
             !state ? "--state DIR is required" : "more than one NAME");
    return 2;
  }
  if (watch && !json) {
    bool tty = isatty (1);
    for (;;) {
      json_t *r = json_pack ("{s:s}", "cmd", "status");
      size_t i;
      json_t *d;
      if (name)
        json_object_set_new (r, "disk", json_string (name));
      if (!(r = request ("status", state, r)))
        return 1;
      if (tty)
        printf ("\033[H\033[J");
      json_array_foreach (json_object_get (r, "disks"), i, d)
        print_disk (d);
      fflush (stdout);
      bool done = all_complete (json_object_get (r, "disks"));
      json_decref (r);
      if (done)
        return 0;
      sleep_ns (NS_PER_SEC);
    }
  }
  fd = jsonl_connect (state, err, sizeof err);
  if (fd == -1) {
    fprintf (stderr, "corfs status: %s\n", err);
    return 1;
  }
  req = json_pack ("{s:s, s:b}", "cmd", "status", "maps", maps);
  if (name)
    json_object_set_new (req, "disk", json_string (name));
  if (!(reply = jsonl_call (fd, req))) {
    fprintf (stderr, "corfs status: talking to the daemon: %s\n", strerror (errno));
    json_decref (req);
    close (fd);
    return 1;
  }
  json_decref (req);
  close (fd);
  if (!json_is_true (json_object_get (reply, "ok"))) {
    fprintf (stderr, "corfs status: %s\n",
             json_string_value (json_object_get (reply, "error")));
  }
  else if (json) {
    json_t *disks = json_object_get (reply, "disks"), *d;
    size_t i;
    json_array_foreach (disks, i, d)
      if (maps && complete_maps (state, d) == -1) {
        json_decref (reply);
        return 1;
      }
    json_t *out = name ? json_array_get (disks, 0) : disks;
    char *s = json_dumps (out, JSON_INDENT (2));
    puts (s);
    free (s);
    ret = 0;
  }
  else {
    size_t i;
    json_t *d;
    ret = 0;
    json_array_foreach (json_object_get (reply, "disks"), i, d) {
      if (maps && complete_maps (state, d) == -1) {
        ret = 1;
        break;
      }
      print_disk (d);
      if (maps)
        print_maps (d);
    }
  }
  json_decref (reply);
  return ret;
}

int
cli_stream (int argc, char **argv)
{
  enum { OPT_STATE = 256, OPT_RATE, OPT_PAUSE, OPT_RESUME, OPT_CANCEL, OPT_WAIT };
  static const struct option longopts[] = {
    { "state", required_argument, NULL, OPT_STATE },
    { "rate", required_argument, NULL, OPT_RATE },
    { "pause", no_argument, NULL, OPT_PAUSE },
    { "resume", no_argument, NULL, OPT_RESUME },
    { "cancel", no_argument, NULL, OPT_CANCEL },
    { "wait", no_argument, NULL, OPT_WAIT },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  const char *state = NULL, *name, *action = "start";
  bool wait = false, have_rate = false;
  uint64_t rate = 0;
  int c;
  json_t *req, *reply;

  optind = 1;
  opterr = 0;
  while ((c = getopt_long (argc, argv, "h", longopts, NULL)) != -1) {
    switch (c) {
    case OPT_STATE: state = optarg; break;
    case OPT_RATE:
      if (parse_size (optarg, &rate) == -1) {
        fprintf (stderr, "corfs stream: --rate %s: expected bytes per second (K/M/G suffixes; 0 = unlimited)\n", optarg);
        return 2;
      }
      have_rate = true;
      break;
    case OPT_PAUSE: action = "pause"; break;
    case OPT_RESUME: action = "resume"; break;
    case OPT_CANCEL: action = "cancel"; break;
    case OPT_WAIT: wait = true; break;
    case 'h':
      printf ("Usage: corfs stream --state DIR NAME [--wait] [--rate R] [--pause|--resume|--cancel]\n\n"
              "Fill the disk's overlay in the background (start it if it is off or was\n"
              "cancelled; resume it if paused), or steer a running stream.\n"
              "  --rate R   bytes per second (K/M/G suffixes), 0 for unlimited; applies\n"
              "             at once to a running stream\n"
              "  --wait     wait until the disk is complete and that is on stable\n"
              "             storage, so the parent may go away (exit 0), or the stream\n"
              "             is cancelled or the disk fails (exit 1); progress on a terminal\n");
      return 0;
    default:
      fprintf (stderr, "corfs stream: unknown or incomplete option %s (see corfs stream --help)\n",
               argv[optind - 1]);
      return 2;
    }
  }
  if (!state || optind != argc - 1) {
    fprintf (stderr, "corfs stream: %s (see corfs stream --help)\n",
             !state ? "--state DIR is required" : "expected one disk NAME");
    return 2;
  }
  name = argv[optind];
  req = json_pack ("{s:s, s:s, s:s}", "cmd", "stream", "disk", name, "action", action);
  if (have_rate)
    json_object_set_new (req, "rate", json_integer (rate));
  if (!(reply = request ("stream", state, req)))
    return 1;
  json_decref (reply);
  if (!wait)
    return 0;
  bool tty = isatty (2);
  /* Status is checked every half second (progress, cancellation, a
   * failed disk) and at once when the daemon reports an event, so the
   * wait ends when the stream does, not at the next poll. */
  CLEANUP_CLOSE int evfd = subscribe_events (state);
  for (;;) {
    json_t *d;
    const char *sstate, *health;
    char line[160];
    req = json_pack ("{s:s, s:s}", "cmd", "status", "disk", name);
    if (!(reply = request ("stream", state, req)))
      return 1;
    d = json_array_get (json_object_get (reply, "disks"), 0);
    sstate = json_string_value (json_object_get (json_object_get (d, "stream"), "state"));
    health = json_string_value (json_object_get (d, "health"));
    if (tty) {
      progress_line (d, line, sizeof line);
      fprintf (stderr, "\r%s: %s\033[K", name, line);
    }
    /* The stream's own "complete" comes after the final flush: only
     * then may the source go away. */
    if (json_is_true (json_object_get (d, "complete")) && !strcmp (sstate, "complete")) {
      if (tty)
        fprintf (stderr, "\n");
      json_decref (reply);
      return 0;
    }
    if (!strcmp (sstate, "cancelled") || !strcmp (sstate, "off") || strcmp (health, "rw") != 0) {
      if (tty)
        fprintf (stderr, "\n");
      fprintf (stderr, "corfs stream: disk %s: the stream %s before the disk was complete%s%s\n",
               name, !strcmp (health, "rw") ? "was cancelled" : "stopped: the disk failed",
               *json_string_value (json_object_get (json_object_get (d, "stream"), "last_error")) ? "; last error: " : "",
               json_string_value (json_object_get (json_object_get (d, "stream"), "last_error")));
      json_decref (reply);
      return 1;
    }
    json_decref (reply);
    evfd = wait_event (evfd, NS_PER_SEC / 2);
  }
}

/* Parse "--state DIR" (or --state=DIR) and --help, nothing else.
 * 0, 1 when the usage was printed, or 2 after an error message. */
static int
parse_state_only (const char *cmd, int argc, char **argv, const char *usage,
                  const char **state)
{
  for (int i = 1; i < argc; i++) {
    if (!strcmp (argv[i], "--help") || !strcmp (argv[i], "-h")) {
      fputs (usage, stdout);
      return 1;
    }
    if (!strcmp (argv[i], "--state") && i + 1 < argc)
      *state = argv[++i];
    else if (!strncmp (argv[i], "--state=", 8))
      *state = argv[i] + 8;
    else {
      fprintf (stderr, "corfs %s: unexpected argument %s (see corfs %s --help)\n",
               cmd, argv[i], cmd);
      return 2;
    }
  }
  if (!*state) {
    fprintf (stderr, "corfs %s: --state DIR is required\n", cmd);
    return 2;
  }
  return 0;
}

int
cli_events (int argc, char **argv)
{
  const char *state = NULL;
  char err[512];
  int fd, r;
  json_t *req, *ev;

  r = parse_state_only ("events", argc, argv,
                        "Usage: corfs events --state DIR\n\n"
                        "Follow the daemon's event stream (JSON lines: stream-progress,\n"
                        "stream-complete, stream-error, synced, activated, ...) until the\n"
                        "daemon exits.\n", &state);
  if (r)
    return r == 1 ? 0 : r;
  fd = jsonl_connect (state, err, sizeof err);
  if (fd == -1) {
    fprintf (stderr, "corfs events: %s\n", err);
    return 1;
  }
  req = json_pack ("{s:s}", "cmd", "events");
  /* The subscription's reply, read even if the send failed (a refusal). */
  if (!(ev = jsonl_call (fd, req))) {
    fprintf (stderr, "corfs events: %s\n", strerror (errno));
    json_decref (req);
    close (fd);
    return 1;
  }
  json_decref (req);
  if (!json_is_true (json_object_get (ev, "ok"))) {
    fprintf (stderr, "corfs events: %s\n",
             json_string_value (json_object_get (ev, "error")));
    json_decref (ev);
    close (fd);
    return 1;
  }
  json_decref (ev);
  while ((ev = jsonl_recv (fd))) {
    if (!json_object_get (ev, "ok")) {       /* skip replies, if any */
      char *line = json_dumps (ev, JSON_COMPACT);
      puts (line);
      fflush (stdout);
      free (line);
    }
    json_decref (ev);
  }
  close (fd);
  return 0;
}

int
cli_metrics (int argc, char **argv)
{
  const char *state = NULL;
  json_t *reply;
  int r = parse_state_only ("metrics", argc, argv,
                            "Usage: corfs metrics --state DIR\n\n"
                            "Print the daemon's metrics in the Prometheus text format.\n",
                            &state);

  if (r)
    return r == 1 ? 0 : r;
  if (!(reply = request ("metrics", state, json_pack ("{s:s}", "cmd", "metrics"))))
    return 1;
  fputs (json_string_value (json_object_get (reply, "text")), stdout);
  json_decref (reply);
  return 0;
}

/* Shared parsing for the job commands: --state DIR NAME plus flags. */
struct job_args {
  const char *state, *name, *action, *to;
  bool wait, parent_owned, json, have_rate, force;
  uint64_t rate, since, epoch;
};

static int
parse_job_args (const char *cmd, int argc, char **argv, const char *usage,
                struct job_args *a)
{
  enum { OPT_STATE = 256, OPT_RATE, OPT_PAUSE, OPT_RESUME, OPT_CANCEL, OPT_WAIT,
         OPT_OWNED, OPT_TO, OPT_SINCE, OPT_JSON, OPT_EPOCH, OPT_FORCE };
  static const struct option longopts[] = {
    { "state", required_argument, NULL, OPT_STATE },
    { "rate", required_argument, NULL, OPT_RATE },
    { "pause", no_argument, NULL, OPT_PAUSE },
    { "resume", no_argument, NULL, OPT_RESUME },
    { "cancel", no_argument, NULL, OPT_CANCEL },
    { "wait", no_argument, NULL, OPT_WAIT },
    { "parent-owned", no_argument, NULL, OPT_OWNED },
    { "to", required_argument, NULL, OPT_TO },
    { "since", required_argument, NULL, OPT_SINCE },
    { "json", no_argument, NULL, OPT_JSON },
    { "epoch", required_argument, NULL, OPT_EPOCH },
    { "force", no_argument, NULL, OPT_FORCE },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  int c;

  memset (a, 0, sizeof *a);
  a->action = "start";
  optind = 1;
  opterr = 0;
  while ((c = getopt_long (argc, argv, "h", longopts, NULL)) != -1) {
    switch (c) {
    case OPT_STATE: a->state = optarg; break;
    case OPT_RATE:
      if (parse_size (optarg, &a->rate) == -1) {
        fprintf (stderr, "corfs %s: --rate %s: expected bytes per second (K/M/G suffixes)\n",
                 cmd, optarg);
        return 2;
      }
      a->have_rate = true;
      break;
    case OPT_PAUSE: a->action = "pause"; break;
    case OPT_RESUME: a->action = "resume"; break;
    case OPT_CANCEL: a->action = "cancel"; break;
    case OPT_WAIT: a->wait = true; break;
    case OPT_OWNED: a->parent_owned = true; break;
    case OPT_TO: a->to = optarg; break;
    case OPT_JSON: a->json = true; break;
    case OPT_FORCE: a->force = true; break;
    case OPT_EPOCH:
      if (parse_epoch (optarg, &a->epoch) == -1) {
        fprintf (stderr, "corfs %s: --epoch %s: expected a positive integer\n", cmd, optarg);
        return 2;
      }
      break;
    case OPT_SINCE:
      if (parse_size (optarg, &a->since) == -1 || a->since == 0) {
        fprintf (stderr, "corfs %s: --since %s: expected a generation number (from 1)\n",
                 cmd, optarg);
        return 2;
      }
      break;
    case 'h': fputs (usage, stdout); return 1;
    default:
      fprintf (stderr, "corfs %s: unknown or incomplete option %s (see corfs %s --help)\n",
               cmd, argv[optind - 1], cmd);
      return 2;
    }
  }
  if (!a->state || optind != argc - 1) {
    fprintf (stderr, "corfs %s: %s (see corfs %s --help)\n", cmd,
             !a->state ? "--state DIR is required" : "expected one disk NAME", cmd);
    return 2;
  }
  a->name = argv[optind];
  return 0;
}

/* Poll the disk's job until it leaves running/paused; progress on a tty.
 * done_state is the state that means success ("synced" or "done"). */
static int
wait_job (const char *cmd, const struct job_args *a, const char *done_state)
{
  bool tty = isatty (2);
  CLEANUP_CLOSE int evfd = subscribe_events (a->state);  /* as in stream --wait */

  for (;;) {
    json_t *req = json_pack ("{s:s, s:s}", "cmd", "status", "disk", a->name), *r, *d, *job;
    const char *state;
    if (!(r = request (cmd, a->state, req)))
      return 1;
    d = json_array_get (json_object_get (r, "disks"), 0);
    job = json_object_get (d, "job");
    state = json_string_value (json_object_get (job, "state"));
    if (tty) {
      uint64_t done = json_integer_value (json_object_get (job, "done_bytes"));
      uint64_t total = json_integer_value (json_object_get (job, "total_bytes"));
      char ds[32], ts[32];
      human_size (done, ds, sizeof ds);
      human_size (total, ts, sizeof ts);
      fprintf (stderr, "\r%s %s: %s of %s %s%s\033[K", cmd, a->name, ds, ts, state,
               json_is_true (json_object_get (job, "following")) ? " (following guest writes)" : "");
    }
    if (strcmp (state, "running") != 0 && strcmp (state, "paused") != 0) {
      int ret = strcmp (state, done_state) == 0 ? 0 : 1;
      const char *err = json_string_value (json_object_get (job, "last_error"));
      if (tty)
        fprintf (stderr, "\n");
      if (ret)
        fprintf (stderr, "corfs %s: disk %s: the job ended %s%s%s\n", cmd, a->name, state,
                 err && *err ? ": " : "", err && *err ? err : "");
      json_decref (r);
      return ret;
    }
    json_decref (r);
    evfd = wait_event (evfd, NS_PER_SEC / 5);
  }
}

int
cli_merge (int argc, char **argv)
{
  static const char usage[] =
    "Usage: corfs merge --state DIR NAME [--wait] [--rate R] [--parent-owned]\n"
    "                   [--pause|--resume|--cancel]\n\n"
    "Write the disk's dirty blocks back into its parent while the disk stays in\n"
    "use (NBD and file parents; HTTP/S3 parents are read-only: use flatten).\n"
    "Merge writes only into a parent the disk owns: --parent-owned declares (and\n"
    "records) that; never use it for a golden image other overlays read.\n"
    "  --wait   return at the first instant no block is dirty (synced), 0;\n"
    "           non-zero if the merge is cancelled\n"
    "  --rate R bytes per second (K/M/G suffixes), 0 for unlimited\n";
  struct job_args a;
  int r = parse_job_args ("merge", argc, argv, usage, &a);
  json_t *req, *reply;

  if (r)
    return r == 1 ? 0 : r;
  req = json_pack ("{s:s, s:s, s:s, s:b}", "cmd", "merge", "disk", a.name,
                   "action", a.action, "parent_owned", a.parent_owned);
  if (a.have_rate)
    json_object_set_new (req, "rate", json_integer (a.rate));
  if (!(reply = request ("merge", a.state, req)))
    return 1;
  json_decref (reply);
  return a.wait ? wait_job ("merge", &a, "synced") : 0;
}

int
cli_flatten (int argc, char **argv)
{
  static const char usage[] =
    "Usage: corfs flatten --state DIR NAME [--wait] [--to FILE]\n\n"
    "Fill the disk (starting the streamer), then detach its parent for good:\n"
    "the disk becomes standalone and its overlay is the whole raw image.\n"
    "  --to FILE  instead, write a standalone raw copy of the current disk\n"
    "             contents to FILE (sparse where the disk reads zeros, mode\n"
    "             0600), through FILE.partial, which replaces FILE only when\n"
    "             whole (FILE must be new or a regular file); run again, it\n"
    "             continues its own FILE.partial, copying again what the disk\n"
    "             wrote since\n"
    "  --wait     wait until done (0) or failed (non-zero)\n";
  struct job_args a;
  int r = parse_job_args ("flatten", argc, argv, usage, &a);
  char to[2 * PATH_MAX];
  json_t *req, *reply;

  if (r)
    return r == 1 ? 0 : r;
  req = json_pack ("{s:s, s:s}", "cmd", "flatten", "disk", a.name);
  if (a.to) {
    /* The daemon runs in /: give it an absolute path. */
    char *dir = strdup (a.to), *slash = strrchr (dir, '/');
    const char *base = slash ? slash + 1 : a.to;
    char rdir[PATH_MAX];
    if (slash)
      *slash = '\0';
    if (!realpath (slash ? (*dir ? dir : "/") : ".", rdir)) {
      fprintf (stderr, "corfs flatten: --to %s: %s\n", a.to, strerror (errno));
      free (dir);
      json_decref (req);
      return 1;
    }
    snprintf (to, sizeof to, "%s/%s", strcmp (rdir, "/") ? rdir : "", base);
    free (dir);
    json_object_set_new (req, "to", json_string (to));
  }
  if (!(reply = request ("flatten", a.state, req)))
    return 1;
  json_decref (reply);
  return a.wait ? wait_job ("flatten", &a, "done") : 0;
}

int
cli_checkpoint (int argc, char **argv)
{
  static const char usage[] =
    "Usage: corfs checkpoint --state DIR NAME\n\n"
    "Start a new change generation and print its number.  `corfs dirty NAME\n"
    "--since GEN` then lists what was written after this checkpoint.\n";
  struct job_args a;
  int r = parse_job_args ("checkpoint", argc, argv, usage, &a);
  json_t *reply;

  if (r)
    return r == 1 ? 0 : r;
  if (!(reply = request ("checkpoint", a.state,
                         json_pack ("{s:s, s:s}", "cmd", "checkpoint", "disk", a.name))))
    return 1;
  printf ("%" JSON_INTEGER_FORMAT "\n", json_integer_value (json_object_get (reply, "generation")));
  json_decref (reply);
  return 0;
}

int
cli_dirty (int argc, char **argv)
{
  static const char usage[] =
    "Usage: corfs dirty --state DIR NAME --since GEN [--json]\n\n"
    "List the extents (offset, length in bytes) written since checkpoint GEN\n"
    "was taken (generations count from 1: GEN 1 is everything since the disk\n"
    "was created).  After an unclean shutdown the answer is a superset and\n"
    "says so (\"widened\": true).\n";
  struct job_args a;
  int r = parse_job_args ("dirty", argc, argv, usage, &a);
  json_t *reply, *e;
  size_t i;

  if (r)
    return r == 1 ? 0 : r;
  if (!a.since) {
    fprintf (stderr, "corfs dirty: --since GEN is required\n");
    return 2;
  }
  if (!(reply = request ("dirty", a.state,
                         json_pack ("{s:s, s:s, s:I}", "cmd", "dirty", "disk", a.name,
                                    "since", (json_int_t) a.since))))
    return 1;
  if (a.json) {
    json_object_del (reply, "ok");
    char *s = json_dumps (reply, JSON_INDENT (2));
    puts (s);
    free (s);
  }
  else {
    if (json_is_true (json_object_get (reply, "widened")))
      printf ("# widened: an unclean shutdown made this a superset\n");
    json_array_foreach (json_object_get (reply, "extents"), i, e)
      printf ("%" JSON_INTEGER_FORMAT " %" JSON_INTEGER_FORMAT "\n",
              json_integer_value (json_object_get (e, "offset")),
              json_integer_value (json_object_get (e, "length")));
  }
  json_decref (reply);
  return 0;
}

/* activate / handoff / reclaim (with_epoch) and pivot / abort: one
 * request naming the disk, nothing printed on success. */
static int
disk_command (const char *cmd, int argc, char **argv, const char *usage, bool with_epoch)
{
  struct job_args a;
  int r = parse_job_args (cmd, argc, argv, usage, &a);
  json_t *req, *reply;

  if (r)
    return r == 1 ? 0 : r;
  if (with_epoch && !a.epoch) {
    fprintf (stderr, "corfs %s: --epoch N is required (chosen by the management tool, "
             "strictly increasing per disk)\n", cmd);
    return 2;
  }
  req = json_pack ("{s:s, s:s}", "cmd", cmd, "disk", a.name);
  if (with_epoch) {
    json_object_set_new (req, "epoch", json_integer ((json_int_t) a.epoch));
    json_object_set_new (req, "force", json_boolean (a.force));
  }
  if (!(reply = request (cmd, a.state, req)))
    return 1;
  json_decref (reply);
  return 0;
}

int
cli_activate (int argc, char **argv)
{
  return disk_command ("activate", argc, argv,
    "Usage: corfs activate --state DIR NAME --epoch N [--force]\n\n"
    "Switch an incoming disk (the destination of a migration) to active: drop\n"
    "everything read while incoming and the kernel's cached pages, durably\n"
    "record the epoch, then accept writes and start the streamer.  Refused\n"
    "while the parent is still writable (the source might still write it)\n"
    "unless --force.  The same epoch again is a no-op; a lower one is stale.\n", true);
}

int
cli_handoff (int argc, char **argv)
{
  return disk_command ("handoff", argc, argv,
    "Usage: corfs handoff --state DIR NAME --epoch N\n\n"
    "On the source of a migration: refuse new writes, flush everything, and\n"
    "durably record the hand-off: the disk stays read-only (EROFS), so a\n"
    "restarted source VM cannot write by accident.\n", true);
}

int
cli_reclaim (int argc, char **argv)
{
  return disk_command ("reclaim", argc, argv,
    "Usage: corfs reclaim --state DIR NAME --epoch M\n\n"
    "Make a handed-off disk writable again (the migration failed); M must be\n"
    "above the hand-off's epoch.\n", true);
}

int
cli_pivot (int argc, char **argv)
{
  return disk_command ("pivot", argc, argv,
    "Usage: corfs pivot --state DIR NAME\n\n"
    "Finish a mirror: once the copy is complete (mirror-ready), detach the old\n"
    "storage for good; the disk becomes standalone.  Refused before that.\n", false);
}

int
cli_abort (int argc, char **argv)
{
  return disk_command ("abort", argc, argv,
    "Usage: corfs abort --state DIR NAME\n\n"
    "Cancel a mirror: copy to the old storage every block it may lack, flush\n"
    "it, and make this disk read-only; the old storage is exactly current and\n"
    "the VM can be pointed back at it.\n", false);
}
