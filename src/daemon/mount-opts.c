/* corfs: `corfs mount` arguments: --help, the options and their checks,
 * and what argv keeps of a --disk URL (the daemon is a fork of this
 * process and keeps its argv: see scrub_disk_arg).  The config file's
 * settings are read by config.c, between the command line and the
 * checks that apply to both.  Runs before the fork, on the one thread. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "corfs-help.h"
#include "cor/cor.h"
#include "ctl/ctl.h"
#include "daemon/daemon-internal.h"
#include "format/format.h"

/* The text is doc/commands' (generated into corfs-help.h), which also
 * documents every option of longopts below; the numbers it gives must be
 * the constants'. */
CORFS_HELP_CHECKS

static void
mount_usage (FILE *f)
{
  fputs (CORFS_HELP_MOUNT, f);
}

size_t
argv_redact (const char *s, char *out, size_t len)
{
  const char *sep = strstr (s, "://"), *p, *end;
  size_t n = 0;

  /* What is kept: scheme://, the host[:port] after the authority's
   * last '@', and the path up to the first '?', '#' or ';'.  Without
   * "://" the same, from after the last '@' before any of those. */
  if (sep) {
    const char *auth = sep + 3, *auth_end = auth + strcspn (auth, "/?#");
    const char *at = NULL;
    for (const char *q = auth; q < auth_end; q++)
      if (*q == '@')
        at = q;
    n = snprintf (out, len, "%.*s", (int) (auth - s), s);
    p = at ? at + 1 : auth;
  }
  else {
    const char *stop = s + strcspn (s, "?#;"), *at = NULL;
    for (const char *q = s; q < stop; q++)
      if (*q == '@')
        at = q;
    p = at ? at + 1 : s;
  }
  end = p + strcspn (p, "?#;");
  if (n < len)
    n += snprintf (out + n, len - n, "%.*s", (int) (end - p), p);
  return n;
}

/* Overwrite, in place, the URL of a --disk NAME=URL argument (once it
 * has been copied) with what argv_redact keeps of it: argv is what
 * /proc/PID/cmdline and ps show every local user for the daemon's whole
 * life (the daemon is a fork of this process and keeps its argv).  It
 * keeps no userinfo, query, fragment or path parameter, whatever their
 * names (url_redact, for logs and the index, keeps what it knows to be
 * harmless; argv needs no more than what the disk is), so it is never
 * longer; the rest is zeroed.  A URL read from @FILE never was in argv,
 * which is why --help recommends it: argv is readable until this runs,
 * and shells keep history. */
void
scrub_disk_arg (char *arg)
{
  char *eq = strchr (arg, '='), *url;
  size_t n;

  if (!eq || eq[1] == '@')
    return;
  url = eq + 1;
  n = strlen (url);
  char kept[n + 1];
  argv_redact (url, kept, n + 1);
  memset (url, 0, n);
  memcpy (url, kept, strlen (kept));
}

/* The URL of a --disk NAME=URL argument (after the '='), read from FILE
 * for @FILE.  malloc'd, or NULL (printed). */
static char *
disk_arg_url (const char *name, const char *eq)
{
  char *url;

  if (eq[1] == '@') {
    url = read_small_file (eq + 2);
    if (!url) {
      fprintf (stderr, "corfs: --disk %s=@%s: %s\n", name, eq + 2, strerror (errno));
      return NULL;
    }
  }
  else
    url = strdup (eq + 1);
  if (url && !*url) {
    fprintf (stderr, "corfs: --disk %s: empty URL\n", name);
    free (url);
    return NULL;
  }
  return url;
}

struct disk_opts *
disk_add_source (struct disk_opts *d, const char *id)
{
  struct disk_opts *nv = realloc (d->sources, (d->nr_sources + 1) * sizeof *nv), *s;

  if (!nv)
    return NULL;
  d->sources = nv;
  s = &nv[d->nr_sources];
  memset (s, 0, sizeof *s);
  if (!(s->name = strdup (id)))
    return NULL;
  d->nr_sources++;
  return s;
}

/* A disk given again: its next source, in order of preference. */
static int
add_disk_source (struct disk_opts *d, const char *eq)
{
  struct disk_opts *s = disk_add_source (d, "");

  if (!s)
    return -1;
  return (s->url = disk_arg_url (d->name, eq)) ? 0 : -1;
}

static int
add_disk_arg (struct mount_opts *o, const char *arg)
{
  const char *eq = strchr (arg, '=');
  struct disk_opts *nv, *d;
  char *name;

  /* The argument may be a URL with credentials given the wrong way
   * (no NAME=, or a URL where the name goes): print only what
   * argv_redact keeps of it. */
  if (!eq) {
    char shown[strlen (arg) + 1];
    argv_redact (arg, shown, sizeof shown);
    fprintf (stderr, "corfs: --disk %s: expected NAME=URL\n", shown);
    return -1;
  }
  name = strndup (arg, eq - arg);
  if (!name_is_valid (name)) {
    char shown[strlen (name) + 1];
    argv_redact (name, shown, sizeof shown);
    fprintf (stderr, "corfs: --disk: invalid disk name '%s' (use [A-Za-z0-9._-]+, "
             "at most 64 characters)\n", shown);
    free (name);
    return -1;
  }
  for (size_t i = 0; i < o->nr_disks; i++)
    if (!strcmp (o->disks[i].name, name)) {
      free (name);
      return add_disk_source (&o->disks[i], eq);
    }
  nv = realloc (o->disks, (o->nr_disks + 1) * sizeof *nv);
  if (!nv) {
    free (name);
    return -1;
  }
  o->disks = nv;
  d = &nv[o->nr_disks++];
  memset (d, 0, sizeof *d);
  d->name = name;
  d->stream = -1;
  d->release_parent = -1;
  d->write_mode = -1;
  d->format = -1;
  return (d->url = disk_arg_url (name, eq)) ? 0 : -1;
}


enum { OPT_STATE = 256, OPT_DISK, OPT_CONFIG, OPT_BLOCK_SIZE, OPT_HOLD,
       OPT_CONNECT_TIMEOUT, OPT_PARENT_OWNED, OPT_STREAM, OPT_WRITE_MODE,
       OPT_INCOMING, OPT_READAHEAD, OPT_REPIN, OPT_METRICS_LISTEN, OPT_FORMAT,
       OPT_SUPERVISE, OPT_NO_SUPERVISE };

/* Each option is documented in doc/commands ([mount]); doc/check-options
 * fails on a difference. */
static const struct option longopts[] = {
  { "state", required_argument, NULL, OPT_STATE },
  { "disk", required_argument, NULL, OPT_DISK },
  { "config", required_argument, NULL, OPT_CONFIG },
  { "block-size", required_argument, NULL, OPT_BLOCK_SIZE },
  { "hold", required_argument, NULL, OPT_HOLD },
  { "connect-timeout", required_argument, NULL, OPT_CONNECT_TIMEOUT },
  { "parent-owned", no_argument, NULL, OPT_PARENT_OWNED },
  { "stream", required_argument, NULL, OPT_STREAM },
  { "write-mode", required_argument, NULL, OPT_WRITE_MODE },
  { "incoming", no_argument, NULL, OPT_INCOMING },
  { "readahead", required_argument, NULL, OPT_READAHEAD },
  { "repin", required_argument, NULL, OPT_REPIN },
  { "metrics-listen", required_argument, NULL, OPT_METRICS_LISTEN },
  { "format", required_argument, NULL, OPT_FORMAT },
  { "supervise", no_argument, NULL, OPT_SUPERVISE },
  { "no-supervise", no_argument, NULL, OPT_NO_SUPERVISE },
  { "foreground", no_argument, NULL, 'f' },
  { "verbose", no_argument, NULL, 'v' },
  { "help", no_argument, NULL, 'h' },
  { NULL, 0, NULL, 0 },
};

static void
mount_defaults (struct mount_opts *o)
{
  memset (o, 0, sizeof *o);
  o->block_size = DEFAULT_BLOCK_SIZE;
  o->hold_s = DEFAULT_HOLD_S;
  o->connect_timeout_s = DEFAULT_CONNECT_TIMEOUT_S;
  o->stream = COR_STREAM_ON;
  o->readahead = DEFAULT_READAHEAD;
  o->format = -1;
  o->fuse_options = calloc (1, sizeof (char *));
}

/* --hold or --connect-timeout: the same limits as in the config file. */
static int
opt_duration (struct mount_opts *o, bool hold, const char *arg)
{
  char why[256];

  if (mount_parse_duration (hold ? "hold" : "connect-timeout", arg,
                            hold ? &o->hold_s : &o->connect_timeout_s,
                            why, sizeof why) == -1) {
    fprintf (stderr, "corfs: --%s\n", why);
    return -1;
  }
  o->cli_set |= hold ? CLI_HOLD : CLI_CONNECT_TIMEOUT;
  o->hold_given |= hold;
  return 0;
}

/* --block-size: a size here; its range is checked once the config file
 * is read too (check_block_sizes). */
static int
opt_block_size (struct mount_opts *o, const char *arg)
{
  if (parse_size (arg, &o->block_size) == -1) {
    fprintf (stderr, "corfs: --block-size %s: not a size (e.g. 64K)\n", arg);
    return -1;
  }
  o->cli_set |= CLI_BLOCK_SIZE;
  return 0;
}

/* --format: the image format of every --disk of this command line (a
 * disk's own format in the config file wins). */
static int
opt_format (struct mount_opts *o, const char *arg)
{
  enum format_kind k;

  if (format_parse (arg, &k) == -1) {
    fprintf (stderr, "corfs: --format %s: expected raw or qcow2\n", arg);
    return -1;
  }
  o->format = k;
  return 0;
}

static int
opt_readahead (struct mount_opts *o, const char *arg)
{
  if (parse_size (arg, &o->readahead) == -1 || o->readahead > (1u << 30)) {
    fprintf (stderr, "corfs: --readahead %s: not a size up to 1G (e.g. 4M, 0 for the kernel's default)\n", arg);
    return -1;
  }
  o->cli_set |= CLI_READAHEAD;
  return 0;
}

static int
opt_stream (struct mount_opts *o, const char *arg)
{
  if ((o->stream = parse_stream_mode (arg)) < 0) {
    fprintf (stderr, "corfs: --stream=%s: expected on, off or paused\n", arg);
    return -1;
  }
  o->cli_set |= CLI_STREAM;
  return 0;
}

static int
opt_write_mode (struct mount_opts *o, const char *arg)
{
  if (!strcmp (arg, "mirror"))
    o->mirror = true;
  else if (strcmp (arg, "writeback") != 0) {
    fprintf (stderr, "corfs: --write-mode=%s: expected writeback or mirror\n", arg);
    return -1;
  }
  o->have_write_mode = true;
  return 0;
}

static int
opt_repin (struct mount_opts *o, const char *arg)
{
  char **nv = realloc (o->repin, (o->nr_repin + 1) * sizeof *nv);

  if (!nv)
    return -1;
  o->repin = nv;
  if (!name_is_valid (arg)) {
    fprintf (stderr, "corfs: --repin: invalid disk name '%s'\n", arg);
    return -1;
  }
  nv[o->nr_repin++] = strdup (arg);
  return 0;
}

/* --metrics-listen: checked here, bound by the daemon. */
static int
opt_metrics_listen (struct mount_opts *o, const char *arg)
{
  char why[256];

  if (metrics_listen_check (arg, why, sizeof why) == -1) {
    fprintf (stderr, "corfs: --metrics-listen %s\n", why);
    return -1;
  }
  free (o->metrics_listen);
  o->metrics_listen = strdup (arg);
  o->cli_set |= CLI_METRICS_LISTEN;
  return 0;
}

/* -o OPT: kept NULL-terminated, for fs_mount. */
static int
opt_fuse (struct mount_opts *o, const char *arg)
{
  char **nv = realloc (o->fuse_options, (o->nr_fuse_options + 2) * sizeof *nv);

  if (!nv)
    return -1;
  o->fuse_options = nv;
  nv[o->nr_fuse_options++] = strdup (arg);
  nv[o->nr_fuse_options] = NULL;
  return 0;
}

/* What getopt_long could not take (it prints nothing: opterr is 0). */
static void
report_bad_option (char **argv)
{
  if (optopt && optopt < 256)
    fprintf (stderr, "corfs mount: unknown or incomplete option -%c (see corfs mount --help)\n", optopt);
  else
    fprintf (stderr, "corfs mount: unknown or incomplete option %s (see corfs mount --help)\n",
             argv[optind - 1]);
}

/* One option c from getopt_long, with its argument arg; *config gets
 * --config's file.  0, 1 when --help was printed, or -1 (printed). */
static int
parse_option (struct mount_opts *o, int c, char *arg, const char **config, char **argv)
{
  switch (c) {
  case OPT_STATE: free (o->state); o->state = strdup (arg); return 0;
  case OPT_DISK:
    if (add_disk_arg (o, arg) == -1)
      return -1;
    scrub_disk_arg (arg);
    return 0;
  case OPT_CONFIG: *config = arg; return 0;
  case OPT_BLOCK_SIZE: return opt_block_size (o, arg);
  case OPT_HOLD: return opt_duration (o, true, arg);
  case OPT_CONNECT_TIMEOUT: return opt_duration (o, false, arg);
  case OPT_READAHEAD: return opt_readahead (o, arg);
  case OPT_PARENT_OWNED: o->parent_owned = true; return 0;
  case OPT_STREAM: return opt_stream (o, arg);
  case OPT_WRITE_MODE: return opt_write_mode (o, arg);
  case OPT_INCOMING: o->incoming = true; return 0;
  case OPT_REPIN: return opt_repin (o, arg);
  case OPT_METRICS_LISTEN: return opt_metrics_listen (o, arg);
  case OPT_FORMAT: return opt_format (o, arg);
  case OPT_SUPERVISE: case OPT_NO_SUPERVISE:
    o->supervise = c == OPT_SUPERVISE;
    o->cli_set |= CLI_SUPERVISE;
    return 0;
  case 'f': o->foreground = true; return 0;
  case 'v': o->verbose = true; return 0;
  case 'd': o->fuse_debug = o->foreground = true; return 0;
  case 'o': return opt_fuse (o, arg);
  case 'h': mount_usage (stdout); return 1;
  default: report_bad_option (argv); return -1;
  }
}

static void
missing_mountpoint (void)
{
  fprintf (stderr, "corfs mount: missing MOUNTPOINT (see corfs mount --help)\n");
}

/* The MOUNTPOINT after the options, and --state.  Without a MOUNTPOINT
 * the config file's `mountpoint` is used (a systemd unit names only the
 * config file), so one is missing only if no config file is given.  0
 * or -1 (printed). */
static int
take_positional (int argc, char **argv, struct mount_opts *o, bool have_config)
{
  if (optind < argc - 1) {
    fprintf (stderr, "corfs mount: more than one MOUNTPOINT (see corfs mount --help)\n");
    return -1;
  }
  if (optind == argc - 1)
    o->mountpoint = strdup (argv[optind]);
  else if (!have_config) {
    missing_mountpoint ();
    return -1;
  }
  if (!o->state) {
    fprintf (stderr, "corfs mount: --state DIR is required\n");
    return -1;
  }
  return 0;
}

/* A hold given (command line or config file) must fit below the
 * kernel's FUSE request timeout (hold_fit).  0 or -1 (printed). */
static int
check_hold_fits (const struct mount_opts *o)
{
  const char *which;
  uint64_t kernel_s = fuse_kernel_timeout_s (&which), h;
  char why[512];

  if (hold_fit (o->hold_s, o->hold_given, kernel_s, which, &h, why, sizeof why) == -1) {
    fprintf (stderr, "corfs: %s\n", why);
    return -1;
  }
  return 0;
}

static bool
block_size_ok (uint64_t bs)
{
  return bs >= 4096 && bs <= (4 << 20) && !(bs & (bs - 1));
}

/* Source j's URL (0: the disk's own), credentials stripped, or NULL. */
static char *
redacted_source (const struct disk_opts *d, size_t j)
{
  const char *u = j == 0 ? d->url : d->sources[j - 1].url;
  return u ? url_redact (u) : NULL;
}

/* No source given twice (as the record lists them: credentials
 * stripped): the set would check and count one image as two sources.
 * 0 or -1 (printed). */
static int
check_duplicate_sources (const struct disk_opts *d)
{
  for (size_t j = 1; j <= d->nr_sources; j++) {
    char *uj = redacted_source (d, j);
    for (size_t i = 0; uj && i < j; i++) {
      char *ui = redacted_source (d, i);
      bool same = ui && !strcmp (ui, uj);
      free (ui);
      if (same) {
        fprintf (stderr, "corfs: disk %s: source %s is given twice\n", d->name, uj);
        free (uj);
        return -1;
      }
    }
    free (uj);
  }
  return 0;
}

/* A disk with several sources: only for disks corfs only reads (a
 * write that reached one source is not on the others), each source
 * with a URL that a record can list.  0 or -1 (printed). */
static int
check_sources (const struct mount_opts *o, const struct disk_opts *d)
{
  const char *why = NULL;

  if (d->nr_sources == 0)
    return 0;
  if (d->parent_owned || o->parent_owned)
    why = "--parent-owned";
  else if (d->write_mode == 1 || (d->write_mode < 0 && o->mirror))
    why = "mirror mode";
  else if (d->incoming || o->incoming)
    why = "--incoming";
  if (why) {
    fprintf (stderr, "corfs: disk %s: several sources are refused with %s (a write that "
             "reached one source is not on the others)\n", d->name, why);
    return -1;
  }
  if (d->nr_sources + 1 > MAX_SOURCES) {
    fprintf (stderr, "corfs: disk %s: more than %d sources\n", d->name, MAX_SOURCES);
    return -1;
  }
  for (size_t k = 0; k < d->nr_sources; k++) {
    const char *u = d->sources[k].url;
    if (!u || !*u || strpbrk (u, " \t\n")) {
      fprintf (stderr, "corfs: disk %s: source %s: %s\n", d->name, d->sources[k].name,
               !u || !*u ? "no url" : "a URL cannot contain blanks");
      return -1;
    }
  }
  return check_duplicate_sources (d);
}

/* The mount's block size, and each disk's URL and block size, wherever
 * they were given.  0 or -1 (printed). */
static int
check_disks (const struct mount_opts *o)
{
  if (!block_size_ok (o->block_size)) {
    fprintf (stderr, "corfs: block size %" PRIu64 " is not a power of two from 4K to 4M\n",
             o->block_size);
    return -1;
  }
  for (size_t i = 0; i < o->nr_disks; i++) {
    uint64_t bs = o->disks[i].block_size;
    if (!o->disks[i].url) {
      fprintf (stderr, "corfs: disk %s has no url\n", o->disks[i].name);
      return -1;
    }
    if (bs && !block_size_ok (bs)) {
      fprintf (stderr, "corfs: disk %s: block size %" PRIu64 " is not a power of two "
               "from 4K to 4M\n", o->disks[i].name, bs);
      return -1;
    }
    if (check_sources (o, &o->disks[i]) == -1)
      return -1;
  }
  return 0;
}

int
mount_parse (int argc, char **argv, struct mount_opts *o)
{
  const char *config = NULL;
  int c, r;

  mount_defaults (o);
  /* 0, not 1: glibc then resets all of getopt's state, the permutation
   * of a previous call's argv included (unit tests parse many). */
  optind = 0;
  opterr = 0;
  while ((c = getopt_long (argc, argv, "fvdho:", longopts, NULL)) != -1)
    if ((r = parse_option (o, c, optarg, &config, argv)) != 0)
      return r;
  if (take_positional (argc, argv, o, config != NULL) == -1)
    return -1;
  /* The config file after the command line: its daemon-wide settings
   * give way to those given there (o->cli_set), its mountpoint to
   * MOUNTPOINT. */
  if (config && config_load (config, o) == -1)
    return -1;
  if (!o->mountpoint) {
    missing_mountpoint ();
    return -1;
  }
  if (check_hold_fits (o) == -1 || check_disks (o) == -1)
    return -1;
  return 0;
}

/* A disk's options, its sources' too. */
static void
disk_opts_free (struct disk_opts *d)
{
  free (d->name);
  free (d->url);
  free (d->hint_file);
  free (d->backing_url);
  free (d->credentials_file);
  free (d->token_file);
  free (d->ca_file);
  free (d->client_cert);
  free (d->client_key);
  free (d->s3_endpoint);
  free (d->s3_region);
  for (size_t k = 0; k < d->nr_headers; k++)
    free (d->headers[k]);
  free (d->headers);
  for (size_t k = 0; k < d->nr_sources; k++)
    disk_opts_free (&d->sources[k]);
  free (d->sources);
}

void
mount_opts_free (struct mount_opts *o)
{
  for (size_t i = 0; i < o->nr_disks; i++)
    disk_opts_free (&o->disks[i]);
  free (o->disks);
  for (size_t i = 0; i < o->nr_fuse_options; i++)
    free (o->fuse_options[i]);
  free (o->fuse_options);
  free (o->metrics_listen);
  for (size_t i = 0; i < o->nr_repin; i++)
    free (o->repin[i]);
  free (o->repin);
  free (o->state);
  free (o->mountpoint);
  free (o->raw_args);
}
