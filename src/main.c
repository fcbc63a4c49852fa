/* corfs: command dispatch.  `corfs mount` runs the daemon (src/daemon);
 * the other commands are clients of its control socket (src/cli). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "common/version.h"
#include "corfs-help.h"
#include "daemon/daemon.h"

static void
usage (FILE *f)
{
  fputs (CORFS_HELP_MAIN, f);
}

/* argv's strings, each NUL-terminated, one after the other (a
 * supervised worker's settings).  NULL on ENOMEM. */
static char *
join_args (int argc, char **argv, size_t *len)
{
  size_t n = 0;
  char *buf, *p;

  for (int i = 0; i < argc; i++)
    n += strlen (argv[i]) + 1;
  if (!(buf = p = malloc (n + 1)))
    return NULL;
  for (int i = 0; i < argc; i++)
    p = stpcpy (p, argv[i]) + 1;
  *len = n;
  return buf;
}

int
main (int argc, char **argv)
{
  if (argc < 2) {
    usage (stderr);
    return 2;
  }
  if (!strcmp (argv[1], "--help") || !strcmp (argv[1], "-h") || !strcmp (argv[1], "help")) {
    usage (stdout);
    return 0;
  }
  if (!strcmp (argv[1], "--version") || !strcmp (argv[1], "-V")) {
    printf ("corfs %s (commit %s)\n", corfs_version (), corfs_commit ());
    return 0;
  }
  if (!strcmp (argv[1], "__worker"))
    return worker_main ();      /* started by `corfs mount --supervise` */
  if (!strcmp (argv[1], "mount")) {
    struct mount_opts o;
    size_t len;
    char *raw = join_args (argc - 2, argv + 2, &len);   /* before redaction */
    if (!raw)
      return 1;
    int r = mount_parse (argc - 1, argv + 1, &o);
    o.raw_args = raw;
    o.raw_len = len;
    if (r == 0)
      r = mount_main (&o);
    else
      r = r == 1 ? 0 : 2;
    mount_opts_free (&o);
    return r;
  }
  if (!strcmp (argv[1], "unmount") || !strcmp (argv[1], "umount"))
    return cli_unmount (argc - 1, argv + 1);
  if (!strcmp (argv[1], "status"))
    return cli_status (argc - 1, argv + 1);
  if (!strcmp (argv[1], "stream"))
    return cli_stream (argc - 1, argv + 1);
  if (!strcmp (argv[1], "events"))
    return cli_events (argc - 1, argv + 1);
  if (!strcmp (argv[1], "metrics"))
    return cli_metrics (argc - 1, argv + 1);
  if (!strcmp (argv[1], "merge"))
    return cli_merge (argc - 1, argv + 1);
  if (!strcmp (argv[1], "flatten"))
    return cli_flatten (argc - 1, argv + 1);
  if (!strcmp (argv[1], "checkpoint"))
    return cli_checkpoint (argc - 1, argv + 1);
  if (!strcmp (argv[1], "dirty"))
    return cli_dirty (argc - 1, argv + 1);
  if (!strcmp (argv[1], "activate"))
    return cli_activate (argc - 1, argv + 1);
  if (!strcmp (argv[1], "handoff"))
    return cli_handoff (argc - 1, argv + 1);
  if (!strcmp (argv[1], "reclaim"))
    return cli_reclaim (argc - 1, argv + 1);
  if (!strcmp (argv[1], "pivot"))
    return cli_pivot (argc - 1, argv + 1);
  if (!strcmp (argv[1], "abort"))
    return cli_abort (argc - 1, argv + 1);
  if (!strcmp (argv[1], "sources"))
    return cli_sources (argc - 1, argv + 1);
  fprintf (stderr, "corfs: unknown command '%s' (see corfs --help)\n", argv[1]);
  return 2;
}
