/* corfs: command dispatch.  `corfs mount` runs the daemon (src/daemon);
 * the other commands are clients of its control socket (src/cli). */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "daemon/daemon.h"

static void
usage (FILE *f)
{
  fprintf (f,
"Usage: corfs COMMAND [ARGS...]\n"
"\n"
"corfs presents each VM disk as a plain file on a FUSE mount.  Blocks fault\n"
"in on demand from a remote parent (NBD, HTTP(S), S3, NFS or a local file)\n"
"into a local overlay,\n"
"while a background streamer fills the rest; an LMDB index records which\n"
"blocks are present and which are dirty.\n"
"\n"
"Commands (every one takes --state DIR, except unmount):\n"
"  mount --state DIR [--disk NAME=URL]... [OPTIONS] MOUNTPOINT\n"
"                         start the daemon; returns once the mount serves\n"
"  unmount MOUNTPOINT     final commit, clean exit; waits for the daemon\n"
"  status --state DIR [NAME] [--json] [--maps] [--watch]\n"
"                         per disk: present/total, dirty, health, parent state,\n"
"                         streamer progress\n"
"  stream --state DIR NAME [--wait] [--rate R] [--pause|--resume|--cancel]\n"
"                         fill the overlay in the background, or steer it\n"
"  events --state DIR     follow the event stream (JSON lines)\n"
"  metrics --state DIR    metrics in the Prometheus text format\n"
"  merge --state DIR NAME [--wait] [--rate R] [--parent-owned] [--pause|--resume|--cancel]\n"
"                         write dirty blocks back into a parent the disk owns\n"
"  flatten --state DIR NAME [--wait] [--to FILE]\n"
"                         fill, then detach the parent (or copy to FILE)\n"
"  checkpoint --state DIR NAME\n"
"                         start a new change generation, print its number\n"
"  dirty --state DIR NAME --since GEN [--json]\n"
"                         extents written since checkpoint GEN\n"
"\n"
"  activate --state DIR NAME --epoch N [--force]\n"
"  handoff --state DIR NAME --epoch N\n"
"  reclaim --state DIR NAME --epoch N\n"
"                         migration switch-over (see `corfs activate --help`)\n"
"  pivot --state DIR NAME / abort --state DIR NAME\n"
"                         finish or cancel a mirror (mount --write-mode=mirror)\n"
"  sources --state DIR NAME [--add URL | --remove URL] [--config FILE]\n"
"                         list or change a disk's sources (failover between\n"
"                         copies of one image)\n"
"\n"
"Run `corfs COMMAND --help` for a command's options.\n");
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
  if (!strcmp (argv[1], "mount")) {
    struct mount_opts o;
    int r = mount_parse (argc - 1, argv + 1, &o);
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
