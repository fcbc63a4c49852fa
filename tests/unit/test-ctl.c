/* Unit tests: the control socket's replies (src/ctl through
 * ctl_answer_line), for what the ctl fuzzer (tests/fuzz/fuzz-ctl.c)
 * found.  Only requests that never reach the engine run here (no engine). */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/jsonl.h"
#include "ctl/ctl-internal.h"

/* The reply to line, parsed; fails the test when there is none. */
static json_t *
ask (const char *line)
{
  bool events = false;
  char *text = ctl_answer_line (NULL, NULL, line, strlen (line), &events);
  json_t *r;

  cr_assert_not_null (text, "no reply to %.60s...", line);
  r = json_loads (text, 0, NULL);
  cr_assert (json_is_object (r), "not a JSON object: %s", text);
  free (text);
  return r;
}

/* An error message cut at 511 bytes in the middle of a two-byte
 * character was no UTF-8, so no reply was built and the server dropped
 * the client: each cut point now gets its error reply. */
Test (ctl, long_non_ascii_names_get_a_reply)
{
  for (int k = 480; k < 500; k++) {
    char line[2048];
    int n = snprintf (line, sizeof line, "{\"id\":%d,\"cmd\":\"", k);
    memset (line + n, 'a', k);
    n += k;
    for (int i = 0; i < 20; i++)
      n += snprintf (line + n, sizeof line - n, "\u00e9");
    snprintf (line + n, sizeof line - n, "\"}");
    json_t *r = ask (line);
    cr_assert (json_is_false (json_object_get (r, "ok")));
    cr_assert_eq (json_integer_value (json_object_get (r, "id")), k);
    cr_assert (json_is_string (json_object_get (r, "error")));
    json_decref (r);
  }
}

Test (ctl, malformed_and_unknown)
{
  json_t *r = ask ("{\"cmd\": ");
  cr_assert (json_is_false (json_object_get (r, "ok")));
  json_decref (r);
  r = ask ("[1]");
  cr_assert (json_is_false (json_object_get (r, "ok")));
  json_decref (r);
  r = ask ("{\"cmd\":\"fly\",\"id\":\"x\"}");
  cr_assert_str_eq (json_string_value (json_object_get (r, "id")), "x");
  json_decref (r);
}

/* The reply to line and whether it subscribed to the events. */
static json_t *
ask_events (const char *line, bool *events)
{
  char *text = ctl_answer_line (NULL, NULL, line, strlen (line), events);
  json_t *r;

  cr_assert_not_null (text, "no reply to %.60s...", line);
  r = json_loads (text, 0, NULL);
  free (text);
  return r;
}

/* events subscribes (and echoes the id); other commands do not. */
Test (ctl, events_subscribes)
{
  bool events = false;
  json_t *r = ask_events ("{\"cmd\":\"events\",\"id\":5}", &events);

  cr_assert (json_is_true (json_object_get (r, "ok")));
  cr_assert_eq (json_integer_value (json_object_get (r, "id")), 5);
  cr_assert (events);
  json_decref (r);
  events = false;
  r = ask_events ("{\"cmd\":\"ping\"}", &events);
  cr_assert (!events);
  json_decref (r);
}

/* ping answers with the daemon's pid. */
Test (ctl, ping_gives_pid)
{
  json_t *r = ask ("{\"cmd\":\"ping\",\"id\":null}");

  cr_assert (json_is_true (json_object_get (r, "ok")));
  cr_assert_eq (json_integer_value (json_object_get (r, "pid")), getpid ());
  json_decref (r);
}

/* Every command that names a disk is in the command table (docs/control.md):
 * without "disk" each says it needs one, none is unknown, and a long one
 * is refused before any job thread starts. */
Test (ctl, disk_commands_need_a_disk)
{
  static const char *const cmds[] = {
    "merge", "flatten", "checkpoint", "dirty", "activate", "handoff", "reclaim",
    "pivot", "abort",
  };

  for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
    char line[128];
    snprintf (line, sizeof line, "{\"cmd\":\"%s\",\"id\":\"%s\"}", cmds[i], cmds[i]);
    json_t *r = ask (line);
    cr_assert (json_is_false (json_object_get (r, "ok")), "%s", cmds[i]);
    cr_assert_str_eq (json_string_value (json_object_get (r, "error")),
                      "this command needs \"disk\"", "%s", cmds[i]);
    cr_assert_str_eq (json_string_value (json_object_get (r, "id")), cmds[i]);
    json_decref (r);
  }
  json_t *r = ask ("{\"cmd\":\"stream\"}");
  cr_assert_str_eq (json_string_value (json_object_get (r, "error")), "stream needs \"disk\"");
  json_decref (r);
}

/* Requests that are no command: the id comes back when there is one. */
Test (ctl, no_command)
{
  json_t *r = ask ("{\"id\":[1,2]}");

  cr_assert_str_eq (json_string_value (json_object_get (r, "error")),
                    "request has no \"cmd\" string");
  cr_assert (json_is_array (json_object_get (r, "id")));
  json_decref (r);
  r = ask ("{\"cmd\":7,\"id\":1}");
  cr_assert_str_eq (json_string_value (json_object_get (r, "error")),
                    "request has no \"cmd\" string");
  json_decref (r);
  r = ask ("[\"status\"]");
  cr_assert_str_eq (json_string_value (json_object_get (r, "error")),
                    "request must be a JSON object");
  cr_assert_null (json_object_get (r, "id"));
  json_decref (r);
  r = ask ("{\"cmd\":\"Status\"}");
  cr_assert_str_eq (json_string_value (json_object_get (r, "error")), "unknown command Status");
  json_decref (r);
}
