/* corfs: the commands that look at the daemon: status (with its maps read
 * in pages, and --watch), metrics and events. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/cli-internal.h"
#include "common/util.h"
#include "corfs-help.h"

struct status_args {
  const char *state, *name;
  bool json, maps, watch;
};

/* 0; 1 when --help printed the usage; 2 after printing an error. */
static int
parse_status_args (int argc, char **argv, struct status_args *a)
{
  enum { OPT_STATE = 256, OPT_JSON, OPT_MAPS };
  static const struct option longopts[] = {
    { "state", required_argument, NULL, OPT_STATE },
    { "json", no_argument, NULL, OPT_JSON },
    { "maps", no_argument, NULL, OPT_MAPS },
    { "watch", no_argument, NULL, 'w' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  int c;

  memset (a, 0, sizeof *a);
  optind = 1;
  opterr = 0;
  while ((c = getopt_long (argc, argv, "hw", longopts, NULL)) != -1) {
    switch (c) {
    case OPT_STATE: a->state = optarg; break;
    case 'w': a->watch = true; break;
    case OPT_JSON: a->json = true; break;
    case OPT_MAPS: a->maps = true; break;
    case 'h': fputs (CORFS_HELP_STATUS, stdout); return 1;
    default:
      fprintf (stderr, "corfs status: unknown or incomplete option %s (see corfs status --help)\n",
               argv[optind - 1]);
      return 2;
    }
  }
  if (optind < argc)
    a->name = argv[optind++];
  if (optind < argc || !a->state) {
    fprintf (stderr, "corfs status: %s (see corfs status --help)\n",
             !a->state ? "--state DIR is required" : "more than one NAME");
    return 2;
  }
  return 0;
}

/* The text form of one disk of a status reply. */
static void
print_disk (json_t *d)
{
  char size[32], present[32], dirty[32], line[160];
  uint64_t sz = json_integer_value (json_object_get (d, "size"));
  uint64_t pr = json_integer_value (json_object_get (d, "present_bytes"));
  json_t *parent = json_object_get (d, "parent"), *owner = json_object_get (d, "owner");
  json_t *st = json_object_get (d, "stream");
  const char *err = json_string_value (json_object_get (parent, "last_error"));
  const char *serr = json_string_value (json_object_get (st, "last_error"));

  cli_human_size (sz, size, sizeof size);
  cli_human_size (pr, present, sizeof present);
  cli_human_size (json_integer_value (json_object_get (d, "dirty_bytes")), dirty, sizeof dirty);
  printf ("%s: %s, present %s (%.1f%%), dirty %s, %s, %s (epoch %" JSON_INTEGER_FORMAT ")\n",
          json_string_value (json_object_get (d, "name")), size, present,
          sz ? 100.0 * pr / sz : 100.0, dirty,
          json_string_value (json_object_get (d, "health")),
          json_string_value (json_object_get (owner, "state")),
          json_integer_value (json_object_get (owner, "epoch")));
  printf ("  parent %s: %s%s%s\n", json_string_value (json_object_get (parent, "url")),
          json_string_value (json_object_get (parent, "state")),
          err && *err ? ", last error: " : "", err && *err ? err : "");
  cli_progress_line (d, line, sizeof line);
  printf ("  stream %s%s%s\n", line, serr && *serr ? ", last error: " : "",
          serr && *serr ? serr : "");
}

/* Append the extents of from to to, joining one that continues the last
 * (a page may end inside an extent). */
static void
append_extents (json_t *to, json_t *from)
{
  size_t i;
  json_t *e;

  json_array_foreach (from, i, e) {
    json_t *last = json_array_get (to, json_array_size (to) - 1);
    json_int_t off = json_integer_value (json_object_get (e, "offset"));
    json_int_t len = json_integer_value (json_object_get (e, "length"));
    if (last && json_integer_value (json_object_get (last, "offset")) +
        json_integer_value (json_object_get (last, "length")) == off)
      json_object_set_new (last, "length", json_integer (
                             json_integer_value (json_object_get (last, "length")) + len));
    else
      json_array_append (to, e);
  }
}

/* The daemon sends long maps in pages ("truncated", "next_offset"): fetch
 * the rest of disk d's maps, so that the output holds them whole.  The
 * pages are taken one after another, not at one instant.  0, or -1 after
 * printing the error. */
static int
complete_maps (const char *state, json_t *d)
{
  json_t *maps = json_object_get (d, "maps");
  const char *name = json_string_value (json_object_get (d, "name"));
  json_int_t prev = -1;

  while (maps && json_is_true (json_object_get (maps, "truncated"))) {
    json_int_t next = json_integer_value (json_object_get (maps, "next_offset"));
    json_t *r, *page;
    if (!name || next <= prev) {
      fprintf (stderr, "corfs status: disk %s: the daemon's map pages do not advance (at %lld)\n",
               name ? name : "?", (long long) next);
      return -1;
    }
    prev = next;
    r = cli_request ("status", state, json_pack ("{s:s, s:s, s:b, s:I}", "cmd", "status",
                                                 "disk", name, "maps", 1, "maps_from", next));
    if (!r)
      return -1;
    page = json_object_get (json_array_get (json_object_get (r, "disks"), 0), "maps");
    if (!page) {
      fprintf (stderr, "corfs status: disk %s: the daemon sent no maps\n", name);
      json_decref (r);
      return -1;
    }
    append_extents (json_object_get (maps, "present"), json_object_get (page, "present"));
    append_extents (json_object_get (maps, "dirty"), json_object_get (page, "dirty"));
    json_object_set (maps, "truncated", json_object_get (page, "truncated"));
    if (json_object_get (page, "next_offset"))
      json_object_set (maps, "next_offset", json_object_get (page, "next_offset"));
    json_decref (r);
  }
  if (maps)
    json_object_del (maps, "next_offset");
  return 0;
}

/* The text form of disk d's maps (after complete_maps): each map's
 * extents, one "OFFSET LENGTH" line (bytes) each. */
static void
print_maps (json_t *d)
{
  static const char *const which[] = { "present", "dirty" };
  json_t *maps = json_object_get (d, "maps");

  for (size_t k = 0; maps && k < 2; k++) {
    json_t *list = json_object_get (maps, which[k]), *e;
    size_t i;
    printf ("  %s extents: %zu (offset length, in bytes)\n", which[k], json_array_size (list));
    json_array_foreach (list, i, e)
      printf ("    %" JSON_INTEGER_FORMAT " %" JSON_INTEGER_FORMAT "\n",
              json_integer_value (json_object_get (e, "offset")),
              json_integer_value (json_object_get (e, "length")));
  }
}

/* status --watch: the text form of every disk, on a terminal in place. */
static int
watch_check (const struct cli_watch *w, json_t *disks)
{
  const bool *tty = w->opaque;
  size_t i;
  json_t *d;

  if (*tty)
    printf ("\033[H\033[J");
  json_array_foreach (disks, i, d)
    print_disk (d);
  fflush (stdout);
  json_array_foreach (disks, i, d)
    if (!json_is_true (json_object_get (d, "complete")))
      return -1;
  return 0;
}

/* One status reply, whole (every map page), as JSON or text. */
static int
show_status (const struct status_args *a)
{
  json_t *req = json_pack ("{s:s, s:b}", "cmd", "status", "maps", a->maps);
  json_t *reply, *disks, *d;
  size_t i;
  int ret = 0;

  if (a->name)
    json_object_set_new (req, "disk", json_string (a->name));
  if (!(reply = cli_request ("status", a->state, req)))
    return 1;
  disks = json_object_get (reply, "disks");
  json_array_foreach (disks, i, d) {
    if (a->maps && complete_maps (a->state, d) == -1) {
      ret = 1;
      break;
    }
    if (!a->json) {
      print_disk (d);
      if (a->maps)
        print_maps (d);
    }
  }
  json_t *sup = json_object_get (reply, "supervised");
  if (ret == 0 && !a->json && sup)
    printf ("supervised: worker restart mode %s, %" JSON_INTEGER_FORMAT " worker restart(s)\n",
            json_string_value (json_object_get (sup, "restart_mode")),
            json_integer_value (json_object_get (sup, "restarts")));
  if (ret == 0 && a->json) {
    char *s = json_dumps (a->name ? json_array_get (disks, 0) : disks, JSON_INDENT (2));
    puts (s);
    free (s);
  }
  json_decref (reply);
  return ret;
}

int
cli_status (int argc, char **argv)
{
  struct status_args a;
  int r = parse_status_args (argc, argv, &a);

  if (r)
    return r == 1 ? 0 : r;
  if (a.watch && !a.json) {
    bool tty = isatty (1);
    struct cli_watch w = { .cmd = "status", .state = a.state, .disk = a.name,
                           .period_ns = NS_PER_SEC, .check = watch_check, .opaque = &tty };
    return cli_watch (&w);
  }
  return show_status (&a);
}

int
cli_events (int argc, char **argv)
{
  const char *state = NULL;
  int fd, r;
  json_t *ev;

  r = cli_parse_state_only ("events", argc, argv, CORFS_HELP_EVENTS, &state);
  if (r)
    return r == 1 ? 0 : r;
  if (!(ev = cli_call ("events", state, json_pack ("{s:s}", "cmd", "events"), &fd, false)))
    return 1;
  json_decref (ev);
  while ((ev = jsonl_recv (fd))) {
    if (!json_object_get (ev, "ok")) {       /* skip replies, if any */
      char *line = json_dumps (ev, JSON_COMPACT);
      puts (line);
      fflush (stdout);
      free (line);
    }
    json_decref (ev);
  }
  close (fd);
  return 0;
}

int
cli_metrics (int argc, char **argv)
{
  const char *state = NULL;
  json_t *reply;
  int r = cli_parse_state_only ("metrics", argc, argv, CORFS_HELP_METRICS, &state);

  if (r)
    return r == 1 ? 0 : r;
  if (!(reply = cli_request ("metrics", state, json_pack ("{s:s}", "cmd", "metrics"))))
    return 1;
  fputs (json_string_value (json_object_get (reply, "text")), stdout);
  json_decref (reply);
  return 0;
}
