/* corfs: the config file (INI, read with inih; format in conf/corfs.conf). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ini.h>

#include "common/util.h"
#include "cor/cor.h"
#include "daemon/daemon.h"

struct cfg_state {
  struct mount_opts *o;
  char error[512];
};

static struct disk_opts *
find_or_add_disk (struct mount_opts *o, const char *name)
{
  struct disk_opts *nv;

  for (size_t i = 0; i < o->nr_disks; i++)
    if (!strcmp (o->disks[i].name, name))
      return &o->disks[i];
  nv = realloc (o->disks, (o->nr_disks + 1) * sizeof *nv);
  if (!nv)
    return NULL;
  o->disks = nv;
  memset (&nv[o->nr_disks], 0, sizeof *nv);
  nv[o->nr_disks].name = strdup (name);
  nv[o->nr_disks].stream = -1;
  nv[o->nr_disks].release_parent = -1;
  nv[o->nr_disks].write_mode = -1;
  return &nv[o->nr_disks++];
}

static int
on_value (void *user, const char *section, const char *key, const char *value)
{
  struct cfg_state *s = user;
  struct mount_opts *o = s->o;
  uint64_t n;
  bool b;
  char why[256];

#define BAD(...) do { if (!s->error[0]) snprintf (s->error, sizeof s->error, __VA_ARGS__); return 0; } while (0)
  if (!strcmp (section, "corfs")) {
    if (!strcmp (key, "hold")) {
      if (mount_parse_duration (key, value, &n, why, sizeof why) == -1) BAD ("%s", why);
      if (!(o->cli_set & CLI_HOLD)) o->hold_s = n;
      o->hold_given = true;
    }
    else if (!strcmp (key, "block-size")) {
      if (parse_size (value, &n) == -1) BAD ("block-size: bad size %s", value);
      if (!(o->cli_set & CLI_BLOCK_SIZE)) o->block_size = n;
    }
    else if (!strcmp (key, "connect-timeout")) {
      if (mount_parse_duration (key, value, &n, why, sizeof why) == -1) BAD ("%s", why);
      if (!(o->cli_set & CLI_CONNECT_TIMEOUT)) o->connect_timeout_s = n;
    }
    else if (!strcmp (key, "readahead")) {
      if (parse_size (value, &n) == -1 || n > (1u << 30)) BAD ("readahead: bad size %s", value);
      if (!(o->cli_set & CLI_READAHEAD)) o->readahead = n;
    }
    else if (!strcmp (key, "parent-owned")) {
      if (parse_bool (value, &b) == -1) BAD ("parent-owned: expected true or false");
      o->parent_owned |= b;
    }
    else if (!strcmp (key, "stream")) {
      int m = parse_stream_mode (value);
      if (m < 0) BAD ("stream = %s: expected on, off or paused", value);
      if (!(o->cli_set & CLI_STREAM)) o->stream = m;
    }
    else if (!strcmp (key, "rate")) {
      if (parse_size (value, &n) == -1) BAD ("rate: bad rate %s (bytes/s, K/M/G suffixes)", value);
      o->rate = n;
    }
    else
      BAD ("unknown setting %s in [corfs]", key);
    return 1;
  }
  if (!strncmp (section, "disk ", 5)) {
    const char *name = section + 5;
    struct disk_opts *d;
    if (!name_is_valid (name))
      BAD ("[disk %s]: a disk name is [A-Za-z0-9._-]+", name);
    if (!(d = find_or_add_disk (o, name)))
      BAD ("out of memory");
    if (!strcmp (key, "url")) {
      free (d->url);
      d->url = strdup (value);
    }
    else if (!strcmp (key, "url-file")) {
      char *u = read_small_file (value);
      if (!u) BAD ("url-file %s: %s", value, strerror (errno));
      free (d->url);
      d->url = u;
    }
    else if (!strcmp (key, "block-size")) {
      if (parse_size (value, &n) == -1) BAD ("block-size: bad size %s", value);
      d->block_size = n;
    }
    else if (!strcmp (key, "parent-owned")) {
      if (parse_bool (value, &b) == -1) BAD ("parent-owned: expected true or false");
      d->parent_owned = b;
    }
    else if (!strcmp (key, "write-mode")) {
      if (!strcmp (value, "mirror"))
        d->write_mode = 1;
      else if (!strcmp (value, "writeback"))
        d->write_mode = 0;
      else
        BAD ("write-mode = %s: expected writeback or mirror", value);
    }
    else if (!strcmp (key, "stream")) {
      int m = parse_stream_mode (value);
      if (m < 0) BAD ("stream = %s: expected on, off or paused", value);
      d->stream = m;
    }
    else if (!strcmp (key, "rate")) {
      if (parse_size (value, &n) == -1) BAD ("rate: bad rate %s (bytes/s, K/M/G suffixes)", value);
      d->rate = n;
      d->have_rate = true;
    }
    else if (!strcmp (key, "release-parent")) {
      if (parse_bool (value, &b) == -1) BAD ("release-parent: expected true or false");
      d->release_parent = b;
    }
    else if (!strcmp (key, "hint-file")) {
      free (d->hint_file);
      d->hint_file = strdup (value);
    }
    else if (!strcmp (key, "credentials-file") || !strcmp (key, "token-file") ||
             !strcmp (key, "ca-file") || !strcmp (key, "client-cert") ||
             !strcmp (key, "client-key") || !strcmp (key, "s3-endpoint") ||
             !strcmp (key, "s3-region")) {
      char **f = !strcmp (key, "credentials-file") ? &d->credentials_file
        : !strcmp (key, "token-file") ? &d->token_file
        : !strcmp (key, "ca-file") ? &d->ca_file
        : !strcmp (key, "client-cert") ? &d->client_cert
        : !strcmp (key, "client-key") ? &d->client_key
        : !strcmp (key, "s3-endpoint") ? &d->s3_endpoint : &d->s3_region;
      free (*f);
      *f = strdup (value);
    }
    else if (!strcmp (key, "header")) {
      char **nv, *h;
      /* Check first: a refused line must leave the list as it was (the
       * grown array must not be dropped, nor the old one kept). */
      if (!strchr (value, ':')) BAD ("header = %s: expected Name: value", value);
      if (!(h = strdup (value))) BAD ("out of memory");
      if (!(nv = realloc (d->headers, (d->nr_headers + 2) * sizeof *nv))) {
        free (h);
        BAD ("out of memory");
      }
      d->headers = nv;
      nv[d->nr_headers++] = h;
      nv[d->nr_headers] = NULL;
    }
    else if (!strcmp (key, "insecure") || !strcmp (key, "s3-path-style") ||
             !strcmp (key, "accept-changed-parent")) {
      if (parse_bool (value, &b) == -1) BAD ("%s: expected true or false", key);
      if (!strcmp (key, "insecure")) d->insecure = b;
      else if (!strcmp (key, "s3-path-style")) d->s3_virtual_host = !b;
      else d->accept_changed_parent = b;
    }
    else if (!strcmp (key, "incoming")) {
      if (parse_bool (value, &b) == -1) BAD ("incoming: expected true or false");
      d->incoming = b;
    }
    else
      BAD ("unknown setting %s in [disk %s]", key, name);
    return 1;
  }
  BAD ("unknown section [%s] (expected [corfs] or [disk NAME])", section);
#undef BAD
}

int
mount_parse_duration (const char *key, const char *value, uint64_t *out,
                      char *err, size_t len)
{
  uint64_t max = !strcmp (key, "hold") ? HOLD_MAX_S : CONNECT_TIMEOUT_MAX_S;

  if (parse_seconds (value, max, out) == 0)
    return 0;
  if (errno == ERANGE)
    snprintf (err, len, "%s %s: too long (at most %" PRIu64 " s)", key, value, max);
  else
    snprintf (err, len, "%s %s: expected a whole number of seconds from 1 to %" PRIu64,
              key, value, max);
  return -1;
}

int
parse_stream_mode (const char *s)
{
  if (!strcmp (s, "on")) return COR_STREAM_ON;
  if (!strcmp (s, "off")) return COR_STREAM_OFF;
  if (!strcmp (s, "paused")) return COR_STREAM_PAUSED;
  return -1;
}

int
config_load (const char *path, struct mount_opts *o)
{
  struct cfg_state s = { o, "" };
  int r = ini_parse (path, on_value, &s);

  if (r == -1) {
    fprintf (stderr, "corfs: config file %s: %s\n", path, strerror (errno));
    return -1;
  }
  if (r != 0) {
    if (s.error[0])
      fprintf (stderr, "corfs: config file %s, line %d: %s\n", path, r, s.error);
    else
      fprintf (stderr, "corfs: config file %s: syntax error on line %d\n", path, r);
    return -1;
  }
  return 0;
}
