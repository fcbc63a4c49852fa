/* corfs: client commands: unmount, status. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
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
}

int
cli_status (int argc, char **argv)
{
  enum { OPT_STATE = 256, OPT_JSON, OPT_MAPS };
  static const struct option longopts[] = {
    { "state", required_argument, NULL, OPT_STATE },
    { "json", no_argument, NULL, OPT_JSON },
    { "maps", no_argument, NULL, OPT_MAPS },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  const char *state = NULL, *name = NULL;
  bool json = false, maps = false;
  char err[512];
  int c, fd, ret = 1;
  json_t *req, *reply;

  optind = 1;
  opterr = 0;
  while ((c = getopt_long (argc, argv, "h", longopts, NULL)) != -1) {
    switch (c) {
    case OPT_STATE: state = optarg; break;
    case OPT_JSON: json = true; break;
    case OPT_MAPS: maps = true; break;
    case 'h':
      printf ("Usage: corfs status --state DIR [NAME] [--json] [--maps]\n\n"
              "Per disk: size, bytes present, dirty bytes, health (rw, ro, failed),\n"
              "owner state and epoch, parent URL, state and last error.\n"
              "  --json   machine-readable output (fields in docs/control.md)\n"
              "  --maps   add the present and dirty extents (offset, length in bytes)\n");
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
  fd = jsonl_connect (state, err, sizeof err);
  if (fd == -1) {
    fprintf (stderr, "corfs status: %s\n", err);
    return 1;
  }
  req = json_pack ("{s:s, s:b}", "cmd", "status", "maps", maps);
  if (name)
    json_object_set_new (req, "disk", json_string (name));
  if (jsonl_send (fd, req) == -1 || !(reply = jsonl_recv (fd))) {
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
    json_t *disks = json_object_get (reply, "disks");
    json_t *out = name ? json_array_get (disks, 0) : disks;
    char *s = json_dumps (out, JSON_INDENT (2));
    puts (s);
    free (s);
    ret = 0;
  }
  else {
    size_t i;
    json_t *d;
    json_array_foreach (json_object_get (reply, "disks"), i, d)
      print_disk (d);
    ret = 0;
  }
  json_decref (reply);
  return ret;
}
