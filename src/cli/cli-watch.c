/* corfs: the client's progress display and its one wait loop (status
 * --watch and every --wait): status asked for on a timer, and at once
 * when the daemon reports an event. */
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli-internal.h"
#include "common/util.h"

void
cli_human_size (uint64_t n, char *buf, size_t len)
{
  static const char *units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
  double v = n;
  int u = 0;
  while (v >= 1024 && u < 5) {
    v /= 1024;
    u++;
  }
  snprintf (buf, len, u ? "%.1f %s" : "%.0f %s", v, units[u]);
}

void
cli_progress_line (json_t *d, char *buf, size_t len)
{
  uint64_t sz = json_integer_value (json_object_get (d, "size"));
  uint64_t pr = json_integer_value (json_object_get (d, "present_bytes"));
  json_t *st = json_object_get (d, "stream");
  const char *state = json_string_value (json_object_get (st, "state"));
  /* The fetched rate, not bytes_per_s: zero extents are covered at
   * memory speed and would make a rate-limited stream look very fast. */
  double pct = sz ? 100.0 * pr / sz : 100.0;
  double fetched = json_number_value (json_object_get (st, "fetched_bytes_per_s"));
  int64_t eta = json_integer_value (json_object_get (st, "eta_s"));
  char bar[31], rate[32], rates[48] = "", etas[32] = "";
  int fill = (int) (pct * 30 / 100);

  for (int i = 0; i < 30; i++)
    bar[i] = i < fill ? '#' : '.';
  bar[30] = '\0';
  if (state && !strcmp (state, "running") && fetched > 0) {
    cli_human_size ((uint64_t) fetched, rate, sizeof rate);
    snprintf (rates, sizeof rates, "  fetching %s/s", rate);
  }
  if (eta > 0)
    snprintf (etas, sizeof etas, "  ETA %" PRId64 ":%02" PRId64, eta / 60, eta % 60);
  snprintf (buf, len, "[%s] %5.1f%%  %s%s%s", bar, pct, state ? state : "?", rates, etas);
}

/* A connection subscribed to the daemon's events, or -1 (then the
 * caller only polls).  The reply means the daemon has subscribed us: no
 * event after it is missed by the status check that follows. */
static int
subscribe_events (const char *cmd, const char *state)
{
  int fd;
  json_t *reply = cli_call (cmd, state, json_pack ("{s:s}", "cmd", "events"), &fd, true);

  json_decref (reply);
  return fd;
}

/* Sleep up to timeout_ns, less if an event (any) arrives on evfd.
 * Returns evfd, or -1 once it has failed (closed). */
static int
wait_event (int evfd, uint64_t timeout_ns)
{
  struct pollfd p = { .fd = evfd, .events = POLLIN };

  if (evfd < 0) {
    sleep_ns (timeout_ns);
    return -1;
  }
  if (poll (&p, 1, timeout_ns / 1000000) > 0) {
    json_t *ev = jsonl_recv (evfd);     /* one line; the next poll sees the rest */
    if (!ev) {
      close (evfd);
      return -1;
    }
    json_decref (ev);
  }
  return evfd;
}

int
cli_watch (const struct cli_watch *w)
{
  int evfd = w->wake_on_events ? subscribe_events (w->cmd, w->state) : -1;
  int ret;

  for (;;) {
    json_t *req = json_pack ("{s:s}", "cmd", "status"), *r;
    if (w->disk)
      json_object_set_new (req, "disk", json_string (w->disk));
    if (!(r = cli_request (w->cmd, w->state, req))) {
      ret = 1;
      break;
    }
    ret = w->check (w, json_object_get (r, "disks"));
    json_decref (r);
    if (ret != -1)
      break;
    evfd = wait_event (evfd, w->period_ns);
  }
  if (evfd >= 0)
    close (evfd);
  return ret;
}
