/* corfs: the control socket's client, the only code in src/cli that talks
 * to the daemon: one request and its reply, with the errors reported the
 * same way for every command. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli-internal.h"

json_t *
cli_call (const char *cmd, const char *state, json_t *req, int *keep_fd, bool quiet)
{
  char err[512];
  int fd = jsonl_connect (state, err, sizeof err);
  json_t *reply = NULL;

  if (keep_fd)
    *keep_fd = -1;
  if (fd == -1) {
    if (!quiet)
      fprintf (stderr, "corfs %s: %s\n", cmd, err);
    json_decref (req);
    return NULL;
  }
  /* jsonl_call reads the reply even if the send failed: a refused
   * client's reason is queued before the daemon hangs up. */
  if (!(reply = jsonl_call (fd, req))) {
    if (!quiet)
      fprintf (stderr, "corfs %s: talking to the daemon of %s: %s\n", cmd, state,
               strerror (errno));
  }
  else if (!json_is_true (json_object_get (reply, "ok"))) {
    if (!quiet)
      fprintf (stderr, "corfs %s: %s\n", cmd,
               json_string_value (json_object_get (reply, "error")));
    json_decref (reply);
    reply = NULL;
  }
  json_decref (req);
  if (reply && keep_fd)
    *keep_fd = fd;
  else
    close (fd);
  return reply;
}

json_t *
cli_request (const char *cmd, const char *state, json_t *req)
{
  return cli_call (cmd, state, req, NULL, false);
}
