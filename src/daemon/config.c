/* corfs: the config file (INI, read with inih; format in conf/corfs.conf):
 * a [corfs] section of daemon-wide settings and a [disk NAME] section per
 * disk, each a table of keys and their handlers.  Runs in `corfs mount`
 * before the fork, on the one thread. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ini.h>

#include "common/util.h"
#include "cor/cor.h"
#include "ctl/ctl.h"
#include "daemon/daemon.h"
#include "format/format.h"

struct cfg_state {
  struct mount_opts *o;
  char error[512];              /* the first refused line's reason */
  bool set_mountpoint;          /* o->mountpoint is the file's (last line wins) */
};

/* One key of a section and its handler, which parses value into the
 * mount's options (s->o) or, in a [disk NAME] section, into disk d.
 * off is the field of struct disk_opts that the handlers shared by
 * several keys set.  A handler returns 0, or -1 after bad(). */
struct setting {
  const char *key;
  int (*set) (struct cfg_state *s, struct disk_opts *d, const struct setting *k,
              const char *value);
  size_t off;
};

/* Keep the first reason (inih stops at the first line refused); -1. */
static int __attribute__ ((format (printf, 2, 3)))
bad (struct cfg_state *s, const char *fmt, ...)
{
  va_list ap;

  if (!s->error[0]) {
    va_start (ap, fmt);
    vsnprintf (s->error, sizeof s->error, fmt, ap);
    va_end (ap);
  }
  return -1;
}

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
  nv[o->nr_disks].format = -1;
  return &nv[o->nr_disks++];
}

/* ---- values shared by both sections ---- */

static int
parse_bool_value (struct cfg_state *s, const char *key, const char *value, bool *b)
{
  if (parse_bool (value, b) == -1)
    return bad (s, "%s: expected true or false", key);
  return 0;
}

static int
parse_block_size_value (struct cfg_state *s, const char *value, uint64_t *n)
{
  if (parse_size (value, n) == -1)
    return bad (s, "block-size: bad size %s", value);
  return 0;
}

static int
parse_stream_value (struct cfg_state *s, const char *value, int *m)
{
  if ((*m = parse_stream_mode (value)) < 0)
    return bad (s, "stream = %s: expected on, off or paused", value);
  return 0;
}

static int
parse_rate_value (struct cfg_state *s, const char *value, uint64_t *n)
{
  if (parse_size (value, n) == -1)
    return bad (s, "rate: bad rate %s (bytes/s, K/M/G suffixes)", value);
  return 0;
}

/* ---- [corfs]: daemon-wide; a setting whose CLI_* bit is in
 * o->cli_set keeps the command line's value ---- */

static int
corfs_hold (struct cfg_state *s, struct disk_opts *d, const struct setting *k,
            const char *value)
{
  uint64_t n;
  char why[256];

  if (mount_parse_duration (k->key, value, &n, why, sizeof why) == -1)
    return bad (s, "%s", why);
  if (!(s->o->cli_set & CLI_HOLD))
    s->o->hold_s = n;
  s->o->hold_given = true;
  return 0;
}

static int
corfs_connect_timeout (struct cfg_state *s, struct disk_opts *d, const struct setting *k,
                       const char *value)
{
  uint64_t n;
  char why[256];

  if (mount_parse_duration (k->key, value, &n, why, sizeof why) == -1)
    return bad (s, "%s", why);
  if (!(s->o->cli_set & CLI_CONNECT_TIMEOUT))
    s->o->connect_timeout_s = n;
  return 0;
}

static int
corfs_block_size (struct cfg_state *s, struct disk_opts *d, const struct setting *k,
                  const char *value)
{
  uint64_t n;

  if (parse_block_size_value (s, value, &n) == -1)
    return -1;
  if (!(s->o->cli_set & CLI_BLOCK_SIZE))
    s->o->block_size = n;
  return 0;
}

static int
corfs_readahead (struct cfg_state *s, struct disk_opts *d, const struct setting *k,
                 const char *value)
{
  uint64_t n;

  if (parse_size (value, &n) == -1 || n > (1u << 30))
    return bad (s, "readahead: bad size %s", value);
  if (!(s->o->cli_set & CLI_READAHEAD))
    s->o->readahead = n;
  return 0;
}

/* Checked now; the daemon binds it. */
static int
corfs_metrics_listen (struct cfg_state *s, struct disk_opts *d, const struct setting *k,
                      const char *value)
{
  char why[256];

  if (metrics_listen_check (value, why, sizeof why) == -1)
    return bad (s, "metrics-listen = %s", why);
  if (s->o->cli_set & CLI_METRICS_LISTEN)
    return 0;
  free (s->o->metrics_listen);
  if (!(s->o->metrics_listen = strdup (value)))
    return bad (s, "out of memory");
  return 0;
}

/* supervise = true: the daemon runs as a worker under a supervisor. */
static int
corfs_supervise (struct cfg_state *s, struct disk_opts *d, const struct setting *k,
                 const char *value)
{
  bool b;

  if (parse_bool_value (s, k->key, value, &b) == -1)
    return -1;
  if (!(s->o->cli_set & CLI_SUPERVISE))
    s->o->supervise = b;
  return 0;
}

/* parent-owned on either side makes new disks own their parent. */
static int
corfs_parent_owned (struct cfg_state *s, struct disk_opts *d, const struct setting *k,
                    const char *value)
{
  bool b;

  if (parse_bool_value (s, k->key, value, &b) == -1)
    return -1;
  s->o->parent_owned |= b;
  return 0;
}

static int
corfs_stream (struct cfg_state *s, struct disk_opts *d, const struct setting *k,
              const char *value)
{
  int m;

  if (parse_stream_value (s, value, &m) == -1)
    return -1;
  if (!(s->o->cli_set & CLI_STREAM))
    s->o->stream = m;
  return 0;
}

static int
corfs_rate (struct cfg_state *s, struct disk_opts *d, const struct setting *k,
            const char *value)
{
  return parse_rate_value (s, value, &s->o->rate);
}

static int
corfs_qcow2_l2_cache (struct cfg_state *s, struct disk_opts *d, const struct setting *k,
                      const char *value)
{
  if (parse_size (value, &s->o->qcow2_l2_cache) == -1 || s->o->qcow2_l2_cache == 0)
    return bad (s, "qcow2-l2-cache: bad size %s (bytes, K/M/G suffixes, above 0)", value);
  return 0;
}

/* Used when the command line names no MOUNTPOINT (the systemd unit's
 * case); absolute, since the file may be read from any directory. */
static int
corfs_mountpoint (struct cfg_state *s, struct disk_opts *d, const struct setting *k,
                  const char *value)
{
  if (value[0] != '/')
    return bad (s, "mountpoint = %s: expected an absolute path", value);
  if (s->o->mountpoint && !s->set_mountpoint)
    return 0;                   /* the command line's MOUNTPOINT */
  free (s->o->mountpoint);
  if (!(s->o->mountpoint = strdup (value)))
    return bad (s, "out of memory");
  s->set_mountpoint = true;
  return 0;
}

/* Each key of both tables is documented in doc/config (corfs.conf(5));
 * doc/check-options fails on a difference. */
/* source-timeout: seconds, with a fraction (1.5). */
static int
corfs_source_timeout (struct cfg_state *s, struct disk_opts *d, const struct setting *k,
                      const char *value)
{
  char *end;
  double v = strtod (value, &end);

  if (end == value || *end || !(v >= 0.1 && v * 1000 <= SOURCE_TIMEOUT_MAX_MS))
    return bad (s, "source-timeout = %s: expected seconds from 0.1 to %d", value,
                SOURCE_TIMEOUT_MAX_MS / 1000);
  s->o->source_timeout_ms = v * 1000;
  return 0;
}

static const struct setting corfs_settings[] = {
  { "mountpoint", corfs_mountpoint, 0 },
  { "qcow2-l2-cache", corfs_qcow2_l2_cache, 0 },
  { "hold", corfs_hold, 0 },
  { "block-size", corfs_block_size, 0 },
  { "connect-timeout", corfs_connect_timeout, 0 },
  { "readahead", corfs_readahead, 0 },
  { "metrics-listen", corfs_metrics_listen, 0 },
  { "parent-owned", corfs_parent_owned, 0 },
  { "stream", corfs_stream, 0 },
  { "rate", corfs_rate, 0 },
  { "source-timeout", corfs_source_timeout, 0 },
  { "supervise", corfs_supervise, 0 },
  { NULL, NULL, 0 },
};

/* ---- [disk NAME] ---- */

#define DISK_FIELD(d, k, type) ((type *) ((char *) (d) + (k)->off))

/* A string setting (the last line given wins). */
static int
disk_string (struct cfg_state *s, struct disk_opts *d, const struct setting *k,
             const char *value)
{
  char **f = DISK_FIELD (d, k, char *);

  free (*f);
  *f = strdup (value);
  return 0;
}

static int
disk_bool (struct cfg_state *s, struct disk_opts *d, const struct setting *k,
           const char *value)
{
  return parse_bool_value (s, k->key, value, DISK_FIELD (d, k, bool));
}

/* The URL read from a file, to keep secrets out of the config file. */
static int
disk_url_file (struct cfg_state *s, struct disk_opts *d, const struct setting *k,
               const char *value)
{
  char *u = read_small_file (value);

  if (!u)
    return bad (s, "url-file %s: %s", value, strerror (errno));
  free (d->url);
  d->url = u;
  return 0;
}

static int
disk_block_size (struct cfg_state *s, struct disk_opts *d, const struct setting *k,
                 const char *value)
{
  return parse_block_size_value (s, value, &d->block_size);
}

static int
disk_format (struct cfg_state *s, struct disk_opts *d, const struct setting *k,
             const char *value)
{
  enum format_kind f;

  if (format_parse (value, &f) == -1)
    return bad (s, "format = %s: expected raw or qcow2", value);
  d->format = f;
  return 0;
}

static int
disk_write_mode (struct cfg_state *s, struct disk_opts *d, const struct setting *k,
                 const char *value)
{
  if (!strcmp (value, "mirror"))
    d->write_mode = 1;
  else if (!strcmp (value, "writeback"))
    d->write_mode = 0;
  else
    return bad (s, "write-mode = %s: expected writeback or mirror", value);
  return 0;
}

static int
disk_stream (struct cfg_state *s, struct disk_opts *d, const struct setting *k,
             const char *value)
{
  return parse_stream_value (s, value, &d->stream);
}

static int
disk_rate (struct cfg_state *s, struct disk_opts *d, const struct setting *k,
           const char *value)
{
  if (parse_rate_value (s, value, &d->rate) == -1)
    return -1;
  d->have_rate = true;
  return 0;
}

/* release_parent is tri-state (-1: not set), so not a disk_bool. */
static int
disk_release_parent (struct cfg_state *s, struct disk_opts *d, const struct setting *k,
                     const char *value)
{
  bool b;

  if (parse_bool_value (s, k->key, value, &b) == -1)
    return -1;
  d->release_parent = b;
  return 0;
}

/* s3-path-style = false asks for virtual-host style requests. */
static int
disk_s3_path_style (struct cfg_state *s, struct disk_opts *d, const struct setting *k,
                    const char *value)
{
  bool b;

  if (parse_bool_value (s, k->key, value, &b) == -1)
    return -1;
  d->s3_virtual_host = !b;
  return 0;
}

/* One more "Name: value" header for the HTTP(S) requests. */
static int
disk_header (struct cfg_state *s, struct disk_opts *d, const struct setting *k,
             const char *value)
{
  char **nv, *h;

  /* Check first: a refused line must leave the list as it was (the
   * grown array must not be dropped, nor the old one kept). */
  if (!strchr (value, ':'))
    return bad (s, "header = %s: expected Name: value", value);
  if (!(h = strdup (value)))
    return bad (s, "out of memory");
  if (!(nv = realloc (d->headers, (d->nr_headers + 2) * sizeof *nv))) {
    free (h);
    return bad (s, "out of memory");
  }
  d->headers = nv;
  nv[d->nr_headers++] = h;
  nv[d->nr_headers] = NULL;
  return 0;
}

/* policy = failover | spread: how a disk with several sources uses them. */
static int
disk_policy (struct cfg_state *s, struct disk_opts *d, const struct setting *k,
             const char *value)
{
  if (strcmp (value, "failover") != 0 && strcmp (value, "spread") != 0)
    return bad (s, "policy = %s: expected failover or spread", value);
  d->spread = !strcmp (value, "spread");
  return 0;
}

#define AT(field) offsetof (struct disk_opts, field)

static const struct setting disk_settings[] = {
  { "url", disk_string, AT (url) },
  { "url-file", disk_url_file, 0 },
  { "block-size", disk_block_size, 0 },
  { "parent-owned", disk_bool, AT (parent_owned) },
  { "write-mode", disk_write_mode, 0 },
  { "format", disk_format, 0 },
  { "backing-url", disk_string, AT (backing_url) },
  { "stream", disk_stream, 0 },
  { "rate", disk_rate, 0 },
  { "release-parent", disk_release_parent, 0 },
  { "hint-file", disk_string, AT (hint_file) },
  { "credentials-file", disk_string, AT (credentials_file) },
  { "token-file", disk_string, AT (token_file) },
  { "ca-file", disk_string, AT (ca_file) },
  { "client-cert", disk_string, AT (client_cert) },
  { "client-key", disk_string, AT (client_key) },
  { "s3-endpoint", disk_string, AT (s3_endpoint) },
  { "s3-region", disk_string, AT (s3_region) },
  { "header", disk_header, 0 },
  { "insecure", disk_bool, AT (insecure) },
  { "s3-path-style", disk_s3_path_style, 0 },
  { "accept-changed-parent", disk_bool, AT (accept_changed_parent) },
  { "incoming", disk_bool, AT (incoming) },
  { "policy", disk_policy, 0 },
  { NULL, NULL, 0 },
};

/* [source NAME ID]: one more source of disk NAME's image, after the
 * disk's own URL and the sources before it, with its own settings. */
static const struct setting source_settings[] = {
  { "url", disk_string, AT (url) },
  { "url-file", disk_url_file, 0 },
  { "credentials-file", disk_string, AT (credentials_file) },
  { "token-file", disk_string, AT (token_file) },
  { "ca-file", disk_string, AT (ca_file) },
  { "client-cert", disk_string, AT (client_cert) },
  { "client-key", disk_string, AT (client_key) },
  { "s3-endpoint", disk_string, AT (s3_endpoint) },
  { "s3-region", disk_string, AT (s3_region) },
  { "header", disk_header, 0 },
  { "insecure", disk_bool, AT (insecure) },
  { "s3-path-style", disk_s3_path_style, 0 },
  { NULL, NULL, 0 },
};

/* The [source NAME ID] section's source (added at its first line). */
static struct disk_opts *
source_section (struct cfg_state *s, const char *section)
{
  const char *sp = strchr (section + 7, ' ');
  char name[80];
  struct disk_opts *d;

  if (!sp || (size_t) (sp - (section + 7)) >= sizeof name || !name_is_valid (sp + 1)) {
    bad (s, "[%s]: expected [source NAME ID], NAME and ID [A-Za-z0-9._-]+", section);
    return NULL;
  }
  snprintf (name, sizeof name, "%.*s", (int) (sp - (section + 7)), section + 7);
  if (!name_is_valid (name)) {
    bad (s, "[%s]: a disk name is [A-Za-z0-9._-]+", section);
    return NULL;
  }
  if (!(d = find_or_add_disk (s->o, name))) {
    bad (s, "out of memory");
    return NULL;
  }
  for (size_t i = 0; i < d->nr_sources; i++)
    if (!strcmp (d->sources[i].name, sp + 1))
      return &d->sources[i];
  if (!(d = disk_add_source (d, sp + 1)))
    bad (s, "out of memory");
  return d;
}

static const struct setting *
find_setting (const struct setting *table, const char *key)
{
  for (; table->key; table++)
    if (!strcmp (table->key, key))
      return table;
  return NULL;
}

/* inih's handler for one line: 1, or 0 with the reason in s->error.  A
 * [disk NAME] section adds the disk at its first line, whatever its
 * key. */
static int
on_value (void *user, const char *section, const char *key, const char *value)
{
  struct cfg_state *s = user;
  const struct setting *table = corfs_settings, *k;
  const char *name = NULL;
  struct disk_opts *d = NULL;

  if (!strncmp (section, "disk ", 5)) {
    name = section + 5;
    if (!name_is_valid (name)) {
      bad (s, "[disk %s]: a disk name is [A-Za-z0-9._-]+", name);
      return 0;
    }
    if (!(d = find_or_add_disk (s->o, name))) {
      bad (s, "out of memory");
      return 0;
    }
    table = disk_settings;
  }
  else if (!strncmp (section, "source ", 7)) {
    if (!(d = source_section (s, section)))
      return 0;
    name = section;
    table = source_settings;
  }
  else if (strcmp (section, "corfs") != 0) {
    bad (s, "unknown section [%s] (expected [corfs], [disk NAME] or [source NAME ID])",
         section);
    return 0;
  }
  if (!(k = find_setting (table, key))) {
    if (d && table == source_settings)
      bad (s, "unknown setting %s in [%s]", key, name);
    else if (d)
      bad (s, "unknown setting %s in [disk %s]", key, name);
    else
      bad (s, "unknown setting %s in [corfs]", key);
    return 0;
  }
  return k->set (s, d, k, value) == 0;
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
  struct cfg_state s = { o, "", false };
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
