/* corfs: the commands of a migration and of incremental backup, each one
 * request naming a disk: activate, handoff, reclaim (owner states, with
 * an epoch), pivot and abort (the end of a mirror), checkpoint and dirty
 * (change generations). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli/cli.h"
#include "cli/cli-internal.h"

int
cli_checkpoint (int argc, char **argv)
{
  static const char usage[] =
    "Usage: corfs checkpoint --state DIR NAME\n\n"
    "Start a new change generation and print its number.  `corfs dirty NAME\n"
    "--since GEN` then lists what was written after this checkpoint.\n";
  struct cli_args a;
  int r = cli_parse_args ("checkpoint", argc, argv, usage, CLI_OPTS_ALL, &a);
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
  static const char usage[] =
    "Usage: corfs dirty --state DIR NAME --since GEN [--json]\n\n"
    "List the extents (offset, length in bytes) written since checkpoint GEN\n"
    "was taken (generations count from 1: GEN 1 is everything since the disk\n"
    "was created).  After an unclean shutdown the answer is a superset and\n"
    "says so (\"widened\": true).\n";
  struct cli_args a;
  int r = cli_parse_args ("dirty", argc, argv, usage, CLI_OPTS_ALL, &a);
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
 * request naming the disk, nothing printed on success. */
static int
disk_command (const char *cmd, int argc, char **argv, const char *usage, bool with_epoch)
{
  struct cli_args a;
  int r = cli_parse_args (cmd, argc, argv, usage, CLI_OPTS_ALL, &a);
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
