/* Unit tests: the control socket's replies (src/ctl/ctl.c through
 * ctl_answer_line), for what the ctl fuzzer (tests/fuzz/fuzz-ctl.c)
 * found.  Only requests that never reach the engine run here (no engine). */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

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
