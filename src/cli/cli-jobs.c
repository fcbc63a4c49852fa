/* corfs: the commands that start or steer a disk's background work and
 * may wait for it: stream (the streamer), merge and flatten (merge jobs).
 * Their --wait forms share the wait loop of cli-watch.c; each says what
 * progress looks like and when the wait is over. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/cli-internal.h"
#include "common/util.h"
#include "corfs-help.h"

/* What a --wait check needs beside the status. */
struct wait_ctx {
  const char *name;
  const char *done_state;       /* merge jobs: the state that means success */
  bool tty;                     /* progress on stderr */
};

/* Start or steer the disk's job with one request (req is consumed), then
 * with --wait run the wait loop with check.  The exit code. */
static int
run_and_wait (const char *cmd, const struct cli_args *a, json_t *req, const char *done_state,
              uint64_t period_ns, int (*check) (const struct cli_watch *, json_t *))
{
  json_t *reply = cli_request (cmd, a->state, req);
  struct wait_ctx x = { .name = a->name, .done_state = done_state, .tty = isatty (2) };
  struct cli_watch w = { .cmd = cmd, .state = a->state, .disk = a->name,
                         .period_ns = period_ns, .wake_on_events = true,
                         .check = check, .opaque = &x };

  if (!reply)
    return 1;
  json_decref (reply);
  return a->wait ? cli_watch (&w) : 0;
}

/* stream --wait: the stream's own "complete" comes after the final
 * flush: only then may the source go away.  A cancelled stream or a
 * failed disk ends the wait with 1. */
static int
stream_check (const struct cli_watch *w, json_t *disks)
{
  const struct wait_ctx *x = w->opaque;
  json_t *d = json_array_get (disks, 0), *st = json_object_get (d, "stream");
  const char *sstate = json_string_value (json_object_get (st, "state"));
  const char *health = json_string_value (json_object_get (d, "health"));
  const char *err = json_string_value (json_object_get (st, "last_error"));
  char line[160];

  if (x->tty) {
    cli_progress_line (d, line, sizeof line);
    fprintf (stderr, "\r%s: %s\033[K", x->name, line);
  }
  if (json_is_true (json_object_get (d, "complete")) && !strcmp (sstate, "complete")) {
    if (x->tty)
      fprintf (stderr, "\n");
    return 0;
  }
  if (!strcmp (sstate, "cancelled") || !strcmp (sstate, "off") || strcmp (health, "rw") != 0) {
    if (x->tty)
      fprintf (stderr, "\n");
    fprintf (stderr, "corfs stream: disk %s: the stream %s before the disk was complete%s%s\n",
             x->name, !strcmp (health, "rw") ? "was cancelled" : "stopped: the disk failed",
             *err ? "; last error: " : "", err);
    return 1;
  }
  return -1;
}

int
cli_stream (int argc, char **argv)
{
  struct cli_args a;
  int r = cli_parse_args ("stream", argc, argv, CORFS_HELP_STREAM,
                          CLI_OPT_RATE | CLI_OPT_STEER | CLI_OPT_WAIT, &a);
  json_t *req;

  if (r)
    return r == 1 ? 0 : r;
  req = json_pack ("{s:s, s:s, s:s}", "cmd", "stream", "disk", a.name, "action", a.action);
  if (a.have_rate)
    json_object_set_new (req, "rate", json_integer (a.rate));
  /* Status every half second (progress, cancellation, a failed disk) and
   * at once on an event, so the wait ends when the stream does. */
  return run_and_wait ("stream", &a, req, NULL, NS_PER_SEC / 2, stream_check);
}

/* merge/flatten --wait: until the job leaves running/paused; done_state
 * ("synced" or "done") means success. */
static int
job_check (const struct cli_watch *w, json_t *disks)
{
  const struct wait_ctx *x = w->opaque;
  json_t *job = json_object_get (json_array_get (disks, 0), "job");
  const char *state = json_string_value (json_object_get (job, "state"));
  const char *err = json_string_value (json_object_get (job, "last_error"));
  int ret;

  if (x->tty) {
    char ds[32], ts[32];
    cli_human_size (json_integer_value (json_object_get (job, "done_bytes")), ds, sizeof ds);
    cli_human_size (json_integer_value (json_object_get (job, "total_bytes")), ts, sizeof ts);
    fprintf (stderr, "\r%s %s: %s of %s %s%s\033[K", w->cmd, x->name, ds, ts, state,
             json_is_true (json_object_get (job, "following")) ? " (following guest writes)" : "");
  }
  if (!strcmp (state, "running") || !strcmp (state, "paused"))
    return -1;
  ret = strcmp (state, x->done_state) == 0 ? 0 : 1;
  if (x->tty)
    fprintf (stderr, "\n");
  if (ret)
    fprintf (stderr, "corfs %s: disk %s: the job ended %s%s%s\n", w->cmd, x->name, state,
             err && *err ? ": " : "", err && *err ? err : "");
  return ret;
}

int
cli_merge (int argc, char **argv)
{
  struct cli_args a;
  int r = cli_parse_args ("merge", argc, argv, CORFS_HELP_MERGE,
                          CLI_OPT_RATE | CLI_OPT_STEER | CLI_OPT_WAIT | CLI_OPT_OWNED, &a);
  json_t *req;

  if (r)
    return r == 1 ? 0 : r;
  req = json_pack ("{s:s, s:s, s:s, s:b}", "cmd", "merge", "disk", a.name,
                   "action", a.action, "parent_owned", a.parent_owned);
  if (a.have_rate)
    json_object_set_new (req, "rate", json_integer (a.rate));
  return run_and_wait ("merge", &a, req, "synced", NS_PER_SEC / 5, job_check);
}

/* --to FILE as an absolute path (the daemon runs in /) into buf.  0, or
 * 1 after printing the error. */
static int
absolute_target (const char *to, char *buf, size_t len)
{
  char *dir = strdup (to), *slash = strrchr (dir, '/');
  const char *base = slash ? slash + 1 : to;
  char rdir[PATH_MAX];

  if (slash)
    *slash = '\0';
  if (!realpath (slash ? (*dir ? dir : "/") : ".", rdir)) {
    fprintf (stderr, "corfs flatten: --to %s: %s\n", to, strerror (errno));
    free (dir);
    return 1;
  }
  snprintf (buf, len, "%s/%s", strcmp (rdir, "/") ? rdir : "", base);
  free (dir);
  return 0;
}

int
cli_flatten (int argc, char **argv)
{
  struct cli_args a;
  int r = cli_parse_args ("flatten", argc, argv, CORFS_HELP_FLATTEN,
                          CLI_OPT_WAIT | CLI_OPT_TO, &a);
  char to[2 * PATH_MAX];
  json_t *req;

  if (r)
    return r == 1 ? 0 : r;
  if (a.to && absolute_target (a.to, to, sizeof to))
    return 1;
  req = json_pack ("{s:s, s:s}", "cmd", "flatten", "disk", a.name);
  if (a.to)
    json_object_set_new (req, "to", json_string (to));
  return run_and_wait ("flatten", &a, req, "done", NS_PER_SEC / 5, job_check);
}
