/* corfs: `corfs sources`: a disk's sources listed, added or removed while
 * mounted.  A source added takes its own settings (credentials, token,
 * headers, TLS files, S3 endpoint and region) from the [source NAME ID]
 * section of --config FILE whose url is the one added, if any: they go to
 * the daemon over the control socket (0600), never on the command line. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli-internal.h"
#include "cli/cli.h"
#include "common/util.h"
#include "corfs-help.h"
#include "daemon/daemon.h"

/* A file setting into set under key, absolute: the daemon runs in /, so
 * a relative path is made absolute here, from the current directory.
 * 0 or -1 (printed). */
static int
put_path (json_t *set, const char *key, const char *path)
{
  char *abs;

  if (!path)
    return 0;
  if (!(abs = realpath (path, NULL))) {
    fprintf (stderr, "corfs sources: %s %s: %m\n", key, path);
    return -1;
  }
  json_object_set_new (set, key, json_string (abs));
  free (abs);
  return 0;
}

/* The settings of the [source NAME ID] (or [disk NAME]) section of
 * config whose url is url, into the request's "settings".  0 or -1
 * (printed). */
static int
add_settings (json_t *req, const char *config, const char *name, const char *url)
{
  struct mount_opts o = { 0 };
  const struct disk_opts *s = NULL;
  json_t *set, *h;
  int r = -1;

  if (config_load (config, &o) == -1)
    goto out;
  for (size_t i = 0; i < o.nr_disks && !s; i++) {
    const struct disk_opts *d = &o.disks[i];
    if (strcmp (d->name, name) != 0)
      continue;
    if (d->url && !strcmp (d->url, url))
      s = d;
    for (size_t k = 0; k < d->nr_sources && !s; k++)
      if (d->sources[k].url && !strcmp (d->sources[k].url, url))
        s = &d->sources[k];
  }
  r = 0;
  if (!s)
    goto out;                   /* no settings of its own */
  set = json_object ();
  json_object_set_new (req, "settings", set);
  if (put_path (set, "credentials-file", s->credentials_file) == -1 ||
      put_path (set, "token-file", s->token_file) == -1 ||
      put_path (set, "ca-file", s->ca_file) == -1 ||
      put_path (set, "client-cert", s->client_cert) == -1 ||
      put_path (set, "client-key", s->client_key) == -1) {
    r = -1;
    goto out;
  }
  h = json_array ();
#define PUT(key, field) if (s->field) json_object_set_new (set, key, json_string (s->field))
  PUT ("s3-endpoint", s3_endpoint);
  PUT ("s3-region", s3_region);
#undef PUT
  json_object_set_new (set, "insecure", json_boolean (s->insecure));
  json_object_set_new (set, "s3-path-style", json_boolean (!s->s3_virtual_host));
  for (size_t k = 0; k < s->nr_headers; k++)
    json_array_append_new (h, json_string (s->headers[k]));
  json_object_set_new (set, "headers", h);
 out:
  mount_opts_free (&o);
  return r;
}

static void
print_sources (json_t *reply)
{
  json_t *a = json_object_get (reply, "sources"), *s;
  size_t i;

  json_array_foreach (a, i, s) {
    const char *err = json_string_value (json_object_get (s, "last_error"));
    printf ("%zu  %-9s %s  (%s)", i + 1, json_string_value (json_object_get (s, "state")),
            json_string_value (json_object_get (s, "url")),
            json_string_value (json_object_get (s, "backend")));
    if (json_object_get (s, "bytes"))
      printf ("  %lld bytes, %lld errors, last latency %lld us",
              (long long) json_integer_value (json_object_get (s, "bytes")),
              (long long) json_integer_value (json_object_get (s, "errors")),
              (long long) json_integer_value (json_object_get (s, "latency_us")));
    if (err && *err)
      printf ("\n   %s", err);
    printf ("\n");
  }
}

int
cli_sources (int argc, char **argv)
{
  struct cli_args a;
  int r = cli_parse_args ("sources", argc, argv, CORFS_HELP_SOURCES,
                          CLI_OPT_SOURCES | CLI_OPT_JSON, &a);
  const char *add, *remove;
  char *url = NULL;
  json_t *req, *reply;

  if (r)
    return r == 1 ? 0 : r;
  add = a.add, remove = a.remove;
  if (add && remove) {
    fprintf (stderr, "corfs sources: --add and --remove are exclusive (see corfs sources "
             "--help)\n");
    return 2;
  }
  if (add && add[0] == '@' && !(url = read_small_file (add + 1))) {
    fprintf (stderr, "corfs sources: --add @%s: %m\n", add + 1);
    return 2;
  }
  req = json_pack ("{s:s, s:s, s:s}", "cmd", "sources", "disk", a.name,
                   "action", add ? "add" : remove ? "remove" : "list");
  if (add || remove)
    json_object_set_new (req, "url", json_string (url ? url : add ? add : remove));
  if (add && a.config && add_settings (req, a.config, a.name, url ? url : add) == -1) {
    json_decref (req);
    free (url);
    return 2;
  }
  free (url);
  if (!(reply = cli_request ("sources", a.state, req)))
    return 1;
  if (a.json) {
    json_dumpf (reply, stdout, JSON_INDENT (2));
    printf ("\n");
  }
  else
    print_sources (reply);
  json_decref (reply);
  return 0;
}
