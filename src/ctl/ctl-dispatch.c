/* corfs: the control socket's request dispatch: a request line, parsed,
 * to its command's handler through one table (name, handler, where it
 * runs), and the replies every handler builds (ok, error).
 *
 * Notes on the thread model: ctl_answer runs on the ctl thread (or on
 * the caller's thread for ctl_answer_line); a long command's handler
 * runs on a job thread (ctl-job.c), which uses only ctl_error_reply,
 * ctl_ok_reply, ctl_with_id and ctl_req_disk from here: they touch no
 * shared state.  No lock is taken in this file.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cor/cor.h"
#include "ctl/ctl-internal.h"

/* A message cut at its buffer's end may end in part of a multi-byte
 * character: no valid UTF-8, which json_pack refuses (and a client would
 * get no reply at all).  Drop such a partial character. */
static void
utf8_trim_partial (char *s)
{
  size_t n = strlen (s), i = n;

  while (i > 0 && n - i < 3 && ((unsigned char) s[i - 1] & 0xc0) == 0x80)
    i--;                        /* continuation bytes */
  if (i > 0) {
    unsigned char c = s[i - 1];
    size_t need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
    if (n - (i - 1) < need)
      s[i - 1] = '\0';
  }
}

json_t *
ctl_with_id (json_t *reply, json_t *id)
{
  if (reply && id)
    json_object_set (reply, "id", id);
  return reply;
}

json_t *
ctl_error_reply (json_t *id, const char *fmt, ...)
{
  char msg[512];
  va_list ap;
  json_t *r;
  int n;

  va_start (ap, fmt);
  n = vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  if (n >= (int) sizeof msg)
    utf8_trim_partial (msg);
  r = json_pack ("{s:b, s:s}", "ok", 0, "error", msg);
  if (!r)                       /* still not UTF-8: say so rather than nothing */
    r = json_pack ("{s:b, s:s}", "ok", 0, "error", "(an error message that is not UTF-8)");
  return ctl_with_id (r, id);
}

json_t *
ctl_ok_reply (json_t *id)
{
  return ctl_with_id (json_pack ("{s:b}", "ok", 1), id);
}

struct cor_disk *
ctl_req_disk (struct ctl *c, json_t *req, json_t *id, json_t **err)
{
  const char *name = json_string_value (json_object_get (req, "disk"));
  struct cor_disk *d;

  if (!name) {
    *err = ctl_error_reply (id, "this command needs \"disk\"");
    return NULL;
  }
  if (!(d = cor_disk_find (c->e, name)))
    *err = ctl_error_reply (id, "no disk named %s", name);
  return d;
}

/* Long commands, run on a job thread (ctl-job.c): they wait for the
 * disk to drain, talk to the parent, or open a file anywhere (flatten
 * --to). */
static bool
always_long (json_t *req)
{
  return true;
}

/* merge start may talk to the parent (making it writable: an NBD
 * parent's connection 0 may be busy with a stalled read for a while) and
 * wait for the record (cor_update_record); pause, resume, cancel and
 * rate only touch the job and stay on the ctl thread. */
static bool
is_merge_start (json_t *req)
{
  const char *action = json_string_value (json_object_get (req, "action"));
  return !action || !strcmp (action, "start");
}

/* The commands (docs/control.md). */
static const struct ctl_command {
  const char *name;
  ctl_handler_fn *fn;
  /* NULL: answered at once on the ctl thread; else true for a request
   * that runs on a job thread, its reply held until it ends. */
  bool (*is_long) (json_t *req);
  bool subscribes;              /* the client then gets the event stream */
} COMMANDS[] = {
  { .name = "status", .fn = ctl_status_cmd },
  { .name = "ping", .fn = ctl_ping_cmd },
  { .name = "stream", .fn = ctl_stream_cmd },
  { .name = "metrics", .fn = ctl_metrics_cmd },
  { .name = "merge", .fn = ctl_merge_cmd, .is_long = is_merge_start },
  { .name = "dirty", .fn = ctl_dirty_cmd },
  { .name = "checkpoint", .fn = ctl_checkpoint_cmd, .is_long = always_long },
  { .name = "activate", .fn = ctl_owner_cmd, .is_long = always_long },
  { .name = "handoff", .fn = ctl_owner_cmd, .is_long = always_long },
  { .name = "reclaim", .fn = ctl_owner_cmd, .is_long = always_long },
  { .name = "pivot", .fn = ctl_mirror_cmd, .is_long = always_long },
  { .name = "abort", .fn = ctl_mirror_cmd, .is_long = always_long },
  { .name = "flatten", .fn = ctl_flatten_cmd, .is_long = always_long },
  { .name = "events", .fn = ctl_events_cmd, .subscribes = true },
};

/* Dispatch one request.  NULL when a long command was started for cl:
 * its reply is sent when it ends. */
static json_t *
handle (struct ctl *c, json_t *req, struct client *cl)
{
  json_t *id = json_object_get (req, "id");
  const char *cmd = json_string_value (json_object_get (req, "cmd"));
  const struct ctl_command *k = NULL;

  if (!json_is_object (req))
    return ctl_error_reply (NULL, "request must be a JSON object");
  if (!cmd)
    return ctl_error_reply (id, "request has no \"cmd\" string");
  for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0] && !k; i++)
    if (!strcmp (cmd, COMMANDS[i].name))
      k = &COMMANDS[i];
  if (!k)
    return ctl_error_reply (id, "unknown command %s", cmd);
  if (k->is_long && k->is_long (req)) {
    json_t *err = NULL;
    struct cor_disk *d = ctl_req_disk (c, req, id, &err);
    return d ? ctl_start_job (c, d, k->name, k->fn, req, id, cl) : err;
  }
  if (k->subscribes)
    cl->events = true;
  return k->fn (c, k->name, req, id);
}

json_t *
ctl_answer (struct ctl *c, const char *line, size_t len, struct client *cl)
{
  json_error_t jerr;
  json_t *req = json_loadb (line, len, 0, &jerr), *reply;

  reply = req ? handle (c, req, cl) : ctl_error_reply (NULL, "malformed JSON: %s", jerr.text);
  json_decref (req);
  return reply;
}

/* For the fuzzer and tests: one line answered as the ctl thread answers
 * it, without a socket.  A long command runs on its job thread as usual,
 * and is waited for here, so that its reply is returned like any other. */
char *
ctl_answer_line (struct cor_engine *e, struct merge *mg, const char *line, size_t len,
                 bool *events)
{
  struct ctl c = { .e = e, .mg = mg, .listen_fd = -1, .wake = { -1, -1 },
                   .qlock = PTHREAD_MUTEX_INITIALIZER };
  struct client *cl = calloc (1, sizeof *cl);
  json_t *reply;
  char *s;

  if (!cl)
    return NULL;
  cl->fd = -1;
  cl->events = *events;
  reply = ctl_answer (&c, line, len, cl);
  if (!reply && cl->pending)
    reply = ctl_reap_job (&c, cl->pending);
  s = reply ? json_dumps (reply, JSON_COMPACT) : NULL;
  json_decref (reply);
  *events = cl->events;
  free (cl);
  pthread_mutex_destroy (&c.qlock);
  return s;
}
