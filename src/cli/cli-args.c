/* corfs: option parsing of the client commands that take --state DIR (and
 * a disk NAME): one parser; each command says which options it accepts.
 * `corfs status` has options of its own (cli-status.c). */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli-internal.h"
#include "common/util.h"

enum { OPT_STATE = 256, OPT_RATE, OPT_PAUSE, OPT_RESUME, OPT_CANCEL, OPT_WAIT,
       OPT_OWNED, OPT_TO, OPT_SINCE, OPT_JSON, OPT_EPOCH, OPT_FORCE };

/* Every option, with the CLI_OPT_* bit that lets a command accept it (0:
 * every command). */
static const struct {
  struct option opt;
  unsigned bit;
} OPTIONS[] = {
  { { "state", required_argument, NULL, OPT_STATE }, 0 },
  { { "rate", required_argument, NULL, OPT_RATE }, CLI_OPT_RATE },
  { { "pause", no_argument, NULL, OPT_PAUSE }, CLI_OPT_STEER },
  { { "resume", no_argument, NULL, OPT_RESUME }, CLI_OPT_STEER },
  { { "cancel", no_argument, NULL, OPT_CANCEL }, CLI_OPT_STEER },
  { { "wait", no_argument, NULL, OPT_WAIT }, CLI_OPT_WAIT },
  { { "parent-owned", no_argument, NULL, OPT_OWNED }, CLI_OPT_OWNED },
  { { "to", required_argument, NULL, OPT_TO }, CLI_OPT_TO },
  { { "since", required_argument, NULL, OPT_SINCE }, CLI_OPT_SINCE },
  { { "json", no_argument, NULL, OPT_JSON }, CLI_OPT_JSON },
  { { "epoch", required_argument, NULL, OPT_EPOCH }, CLI_OPT_EPOCH },
  { { "force", no_argument, NULL, OPT_FORCE }, CLI_OPT_FORCE },
  { { "help", no_argument, NULL, 'h' }, 0 },
};

#define NR_OPTIONS (sizeof OPTIONS / sizeof OPTIONS[0])

/* One option's value into a.  0, or 2 after printing an error. */
static int
set_option (const char *cmd, int c, const char *arg, struct cli_args *a)
{
  switch (c) {
  case OPT_STATE: a->state = arg; break;
  case OPT_RATE:
    if (parse_size (arg, &a->rate) == -1) {
      fprintf (stderr, "corfs %s: --rate %s: expected bytes per second "
               "(K/M/G suffixes; 0 = unlimited)\n", cmd, arg);
      return 2;
    }
    a->have_rate = true;
    break;
  case OPT_PAUSE: a->action = "pause"; break;
  case OPT_RESUME: a->action = "resume"; break;
  case OPT_CANCEL: a->action = "cancel"; break;
  case OPT_WAIT: a->wait = true; break;
  case OPT_OWNED: a->parent_owned = true; break;
  case OPT_TO: a->to = arg; break;
  case OPT_JSON: a->json = true; break;
  case OPT_FORCE: a->force = true; break;
  case OPT_EPOCH:
    if (parse_epoch (arg, &a->epoch) == -1) {
      fprintf (stderr, "corfs %s: --epoch %s: expected a positive integer\n", cmd, arg);
      return 2;
    }
    break;
  case OPT_SINCE:
    if (parse_size (arg, &a->since) == -1 || a->since == 0) {
      fprintf (stderr, "corfs %s: --since %s: expected a generation number (from 1)\n",
               cmd, arg);
      return 2;
    }
    break;
  }
  return 0;
}

int
cli_parse_args (const char *cmd, int argc, char **argv, const char *usage,
                unsigned accept, struct cli_args *a)
{
  /* Only the accepted options are in the table, so that getopt_long
   * calls any other unknown and abbreviates against these alone. */
  struct option longopts[NR_OPTIONS + 1];
  size_t n = 0;
  int c;

  for (size_t i = 0; i < NR_OPTIONS; i++)
    if (!OPTIONS[i].bit || (accept & OPTIONS[i].bit))
      longopts[n++] = OPTIONS[i].opt;
  longopts[n] = (struct option) { NULL, 0, NULL, 0 };
  memset (a, 0, sizeof *a);
  a->action = "start";
  optind = 1;
  opterr = 0;
  while ((c = getopt_long (argc, argv, "h", longopts, NULL)) != -1) {
    if (c == 'h') {
      fputs (usage, stdout);
      return 1;
    }
    if (c == '?' || c == ':') {
      fprintf (stderr, "corfs %s: unknown or incomplete option %s (see corfs %s --help)\n",
               cmd, argv[optind - 1], cmd);
      return 2;
    }
    if (set_option (cmd, c, optarg, a) == 2)
      return 2;
  }
  if (!a->state || optind != argc - 1) {
    fprintf (stderr, "corfs %s: %s (see corfs %s --help)\n", cmd,
             !a->state ? "--state DIR is required" : "expected one disk NAME", cmd);
    return 2;
  }
  a->name = argv[optind];
  return 0;
}

int
cli_parse_state_only (const char *cmd, int argc, char **argv, const char *usage,
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
