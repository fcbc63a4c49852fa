/* corfs: what the client commands share, inside src/cli only: the one
 * socket client (cli-client.c), the option parser of the commands that
 * name a disk (cli-args.c), and the progress display with the one wait
 * loop (cli-watch.c).  The commands themselves are in cli-status.c
 * (status, metrics, events), cli-jobs.c (stream, merge, flatten),
 * cli-migrate.c (activate, handoff, reclaim, pivot, abort, checkpoint,
 * dirty) and cli-unmount.c.  Every message starts "corfs CMD: ". */
#ifndef CORFS_CLI_INTERNAL_H
#define CORFS_CLI_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/jsonl.h"

/* ---- cli-client.c: the socket client ---- */

/* One request on a fresh connection to the daemon of state: connect, send
 * req (the reference is consumed), read the reply.  Returns the reply
 * (caller decrefs) when its "ok" is true; otherwise NULL, after printing
 * "corfs CMD: REASON" on stderr unless quiet.  With keep_fd NULL the
 * connection is closed; else it stays open for what the daemon sends
 * next (events) and *keep_fd is its fd (the caller closes it), -1 when
 * NULL is returned. */
json_t *cli_call (const char *cmd, const char *state, json_t *req, int *keep_fd, bool quiet);

/* cli_call with the connection closed and errors printed. */
json_t *cli_request (const char *cmd, const char *state, json_t *req);

/* ---- cli-args.c: option parsing ---- */

/* The options a command that names a disk may accept (--state and --help
 * always). */
enum {
  CLI_OPT_RATE = 1 << 0,        /* --rate R */
  CLI_OPT_STEER = 1 << 1,       /* --pause, --resume, --cancel */
  CLI_OPT_WAIT = 1 << 2,        /* --wait */
  CLI_OPT_OWNED = 1 << 3,       /* --parent-owned */
  CLI_OPT_TO = 1 << 4,          /* --to FILE */
  CLI_OPT_SINCE = 1 << 5,       /* --since GEN */
  CLI_OPT_JSON = 1 << 6,        /* --json */
  CLI_OPT_EPOCH = 1 << 7,       /* --epoch N */
  CLI_OPT_FORCE = 1 << 8,       /* --force */
};

struct cli_args {
  const char *state, *name;
  const char *action;           /* "start" unless --pause, --resume or --cancel */
  const char *to;
  bool wait, parent_owned, json, have_rate, force;
  uint64_t rate, since, epoch;  /* 0 when not given */
};

/* Parse "--state DIR NAME" and the options in accept (CLI_OPT_*) into a.
 * 0; 1 when --help printed usage; 2 after printing an error. */
int cli_parse_args (const char *cmd, int argc, char **argv, const char *usage,
                    unsigned accept, struct cli_args *a);

/* Parse "--state DIR" (or --state=DIR) and --help, nothing else.  0, 1
 * when the usage was printed, or 2 after an error message. */
int cli_parse_state_only (const char *cmd, int argc, char **argv, const char *usage,
                          const char **state);

/* ---- cli-watch.c: progress display and the wait loop ---- */

/* n bytes as "12.0 MiB". */
void cli_human_size (uint64_t n, char *buf, size_t len);

/* Disk d's stream progress (a status reply's disk):
 * "[#######.......]  45.2%  running  fetching 12.0 MiB/s  ETA 0:12" (the
 * rate and the ETA only while it runs and once they are known). */
void cli_progress_line (json_t *d, char *buf, size_t len);

/* The one wait loop of the commands that wait (status --watch, stream
 * --wait, merge --wait, flatten --wait): ask for the status of disk (all
 * disks when NULL) every period_ns, and, with wake_on_events, at once
 * when the daemon reports an event (subscribed before the first status,
 * so that none is missed), until check ends the wait. */
struct cli_watch {
  const char *cmd, *state, *disk;
  uint64_t period_ns;
  bool wake_on_events;
  /* Called with each status reply's "disks": shows progress; returns -1
   * to go on waiting, else the command's exit code. */
  int (*check) (const struct cli_watch *w, json_t *disks);
  void *opaque;                 /* for check */
};

/* Run the loop: check's exit code, or 1 when a status request failed
 * (the error printed). */
int cli_watch (const struct cli_watch *w);

#endif
