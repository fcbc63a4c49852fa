/* corfs: mount.corfs, mount(8)'s helper for type corfs (see
 * mount-helper.h).  Written in C rather than sh: the option mapping is
 * unit-tested with the same table the helper uses, values reach corfs as
 * separate arguments with no shell quoting in between, and the path of
 * corfs is compiled in (CORFS_BIN, PREFIX/bin/corfs), never looked up in
 * PATH, since mount(8) runs helpers as root.
 *
 * It runs `corfs mount`, which returns once the mount serves (the daemon
 * forks), and turns its exit code into mount(8)'s: 1 for a usage error,
 * 32 for a failed mount. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mount-helper/mount-helper.h"

#ifndef CORFS_BIN
#error "CORFS_BIN (the corfs binary's path) is set by SConstruct"
#endif

/* The command, as -v and -f show it: a --disk URL may carry credentials,
 * so only its NAME= is shown. */
static void
show (const struct mh_cmd *cmd)
{
  fprintf (stderr, "mount.corfs: running");
  for (size_t i = 0; i < cmd->argc; i++) {
    const char *a = cmd->argv[i], *eq;
    if (i > 0 && !strcmp (cmd->argv[i - 1], "--disk") && (eq = strchr (a, '=')))
      fprintf (stderr, " %.*s=...", (int) (eq - a), a);
    else
      fprintf (stderr, " %s", a);
  }
  fputc ('\n', stderr);
}

/* Run the command and wait for it; mount(8)'s exit code. */
static int
run (const struct mh_cmd *cmd)
{
  pid_t pid;
  int status;

  fflush (NULL);
  pid = fork ();
  if (pid == -1) {
    fprintf (stderr, "mount.corfs: fork: %s\n", strerror (errno));
    return MH_EXIT_SYSTEM;
  }
  if (pid == 0) {
    execv (cmd->argv[0], cmd->argv);
    fprintf (stderr, "mount.corfs: cannot run %s: %s\n", cmd->argv[0], strerror (errno));
    _exit (127);
  }
  while (waitpid (pid, &status, 0) == -1)
    if (errno != EINTR) {
      fprintf (stderr, "mount.corfs: waitpid: %s\n", strerror (errno));
      return MH_EXIT_SYSTEM;
    }
  if (WIFEXITED (status) && WEXITSTATUS (status) == 0)
    return 0;
  if (WIFEXITED (status) && WEXITSTATUS (status) == 127)
    return MH_EXIT_SYSTEM;
  /* corfs exits 2 for a usage error, 1 for a failed mount. */
  if (WIFEXITED (status) && WEXITSTATUS (status) == 2)
    return MH_EXIT_USAGE;
  return MH_EXIT_MOUNT_FAILED;
}

int
main (int argc, char **argv)
{
  struct mh_cmd cmd;
  char err[512];
  int r;

  if (mh_parse (argc, argv, CORFS_BIN, &cmd, err, sizeof err) == -1) {
    fprintf (stderr, "mount.corfs: %s\n"
             "usage: mount.corfs STATE_DIR MOUNTPOINT [-sfnv] [-o OPTIONS]\n", err);
    mh_cmd_free (&cmd);
    return MH_EXIT_USAGE;
  }
  if (cmd.verbose || cmd.fake)
    show (&cmd);
  r = cmd.fake ? 0 : run (&cmd);
  mh_cmd_free (&cmd);
  return r;
}
