/* corfs: the commands of a migration and of incremental backup, each one
 * request naming a disk: activate, handoff, reclaim (owner states, with
 * an epoch), pivot and abort (the end of a mirror), checkpoint and dirty
 * (change generations). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli/cli.h"
#include "cli/cli-internal.h"
#include "corfs-help.h"

int
cli_checkpoint (int argc, char **argv)
{
  struct cli_args a;
  int r = cli_parse_args ("checkpoint", argc, argv, CORFS_HELP_CHECKPOINT, 0, &a);
  json_t *reply;

  if (r)
    return r == 1 ? 0 : r;
  if (!(reply = cli_request ("checkpoint", a.state,
                             json_pack ("{s:s, s:s}", "cmd", "checkpoint", "disk", a.name))))
    return 1;
  printf ("%" JSON_INTEGER_FORMAT "\n", json_integer_value (json_object_get (reply, "generation")));
  json_decref (reply);
  return 0;
}

/* The text form of a dirty reply: one "OFFSET LENGTH" line an extent. */
static void
print_dirty (json_t *reply)
{
  json_t *e;
  size_t i;

  if (json_is_true (json_object_get (reply, "widened")))
    printf ("# widened: an unclean shutdown made this a superset\n");
  json_array_foreach (json_object_get (reply, "extents"), i, e)
    printf ("%" JSON_INTEGER_FORMAT " %" JSON_INTEGER_FORMAT "\n",
            json_integer_value (json_object_get (e, "offset")),
            json_integer_value (json_object_get (e, "length")));
}

int
cli_dirty (int argc, char **argv)
{
  struct cli_args a;
  int r = cli_parse_args ("dirty", argc, argv, CORFS_HELP_DIRTY,
                          CLI_OPT_SINCE | CLI_OPT_JSON, &a);
  json_t *reply;

  if (r)
    return r == 1 ? 0 : r;
  if (!a.since) {
    fprintf (stderr, "corfs dirty: --since GEN is required\n");
    return 2;
  }
  if (!(reply = cli_request ("dirty", a.state,
                             json_pack ("{s:s, s:s, s:I}", "cmd", "dirty", "disk", a.name,
                                        "since", (json_int_t) a.since))))
    return 1;
  if (a.json) {
    json_object_del (reply, "ok");
    char *s = json_dumps (reply, JSON_INDENT (2));
    puts (s);
    free (s);
  }
  else
    print_dirty (reply);
  json_decref (reply);
  return 0;
}

/* activate / handoff / reclaim (with_epoch) and pivot / abort: one
 * request naming the disk, nothing printed on success.  accept: the
 * options beside --state (CLI_OPT_*). */
static int
disk_command (const char *cmd, int argc, char **argv, const char *usage, unsigned accept,
              bool with_epoch)
{
  struct cli_args a;
  int r = cli_parse_args (cmd, argc, argv, usage, accept, &a);
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
  if (!(reply = cli_request (cmd, a.state, req)))
    return 1;
  json_decref (reply);
  return 0;
}

int
cli_activate (int argc, char **argv)
{
  return disk_command ("activate", argc, argv, CORFS_HELP_ACTIVATE,
                       CLI_OPT_EPOCH | CLI_OPT_FORCE, true);
}

int
cli_handoff (int argc, char **argv)
{
  return disk_command ("handoff", argc, argv, CORFS_HELP_HANDOFF, CLI_OPT_EPOCH, true);
}

int
cli_reclaim (int argc, char **argv)
{
  return disk_command ("reclaim", argc, argv, CORFS_HELP_RECLAIM, CLI_OPT_EPOCH, true);
}

int
cli_pivot (int argc, char **argv)
{
  return disk_command ("pivot", argc, argv, CORFS_HELP_PIVOT, 0, false);
}

int
cli_abort (int argc, char **argv)
{
  return disk_command ("abort", argc, argv, CORFS_HELP_ABORT, 0, false);
}
