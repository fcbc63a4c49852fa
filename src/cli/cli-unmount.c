/* corfs: `corfs unmount`, the one client command that does not talk to
 * the daemon: it finds the mount's state directory in the mount table,
 * unmounts with fusermount3, then waits on the daemon's lock until the
 * daemon has made everything durable and exited. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/cleanup.h"
#include "common/util.h"
#include "corfs-help.h"

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
    fputs (CORFS_HELP_UNMOUNT, stdout);
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
