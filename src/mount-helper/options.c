/* corfs: mount.corfs's arguments mapped onto `corfs mount`'s (see
 * mount-helper.h).  One thread, no state beyond the command built. */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mount-helper/mount-helper.h"

/* What an option name is.  The corfs ones are `corfs mount`'s long
 * options that make sense in fstab (not --state, given as SPEC, nor
 * --foreground or --help, which would hang or not mount); the unit test
 * runs each through mount_parse, so that the two lists cannot drift.
 * The FUSE ones are those libfuse 3.14 takes as mount flags (it refuses
 * relatime, lazytime and the like; max_read is left out since corfs's
 * FUSE init does not set the same limit, which ends the session). */
static const struct {
  const char *name;
  enum mh_kind kind;
} options[] = {
  { "config", MH_CORFS_VALUE }, { "disk", MH_CORFS_VALUE },
  { "block-size", MH_CORFS_VALUE }, { "hold", MH_CORFS_VALUE },
  { "connect-timeout", MH_CORFS_VALUE }, { "stream", MH_CORFS_VALUE },
  { "write-mode", MH_CORFS_VALUE }, { "readahead", MH_CORFS_VALUE },
  { "repin", MH_CORFS_VALUE }, { "metrics-listen", MH_CORFS_VALUE },
  { "format", MH_CORFS_VALUE },
  { "parent-owned", MH_CORFS_FLAG },
  { "incoming", MH_CORFS_FLAG }, { "verbose", MH_CORFS_FLAG },

  { "allow_other", MH_FUSE }, { "allow_root", MH_FUSE }, { "ro", MH_FUSE },
  { "suid", MH_FUSE }, { "nosuid", MH_FUSE }, { "dev", MH_FUSE }, { "nodev", MH_FUSE },
  { "exec", MH_FUSE }, { "noexec", MH_FUSE }, { "sync", MH_FUSE }, { "async", MH_FUSE },
  { "dirsync", MH_FUSE }, { "atime", MH_FUSE }, { "noatime", MH_FUSE },

  /* rw is the default; user, users, owner and group are mount(8)'s
   * permission to mount (it adds user=NAME for a user mount); the rest
   * are fstab's scheduling. */
  { "defaults", MH_IGNORED }, { "rw", MH_IGNORED }, { "auto", MH_IGNORED },
  { "noauto", MH_IGNORED }, { "nofail", MH_IGNORED }, { "_netdev", MH_IGNORED },
  { "user", MH_IGNORED }, { "nouser", MH_IGNORED }, { "users", MH_IGNORED },
  { "owner", MH_IGNORED }, { "group", MH_IGNORED }, { "comment", MH_IGNORED },
};

const char *
mh_known_option (size_t i, enum mh_kind *kind)
{
  if (i >= sizeof options / sizeof options[0])
    return NULL;
  *kind = options[i].kind;
  return options[i].name;
}

static int __attribute__ ((format (printf, 3, 4)))
bad (char *err, size_t len, const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (err, len, fmt, ap);
  va_end (ap);
  return -1;
}

static int
add (struct mh_cmd *cmd, const char *arg)
{
  char **nv = realloc (cmd->argv, (cmd->argc + 2) * sizeof *nv);

  if (!nv)
    return -1;
  cmd->argv = nv;
  if (!(nv[cmd->argc] = strdup (arg)))
    return -1;
  nv[++cmd->argc] = NULL;
  return 0;
}

/* The kind of option name (len bytes of opt), or -1 if unknown. */
static int
kind_of (const char *opt, size_t len)
{
  /* x-* and X-* are for fstab's readers (systemd, mount(8) itself). */
  if (!strncmp (opt, "x-", 2) || !strncmp (opt, "X-", 2))
    return MH_IGNORED;
  for (size_t i = 0; i < sizeof options / sizeof options[0]; i++)
    if (strlen (options[i].name) == len && !strncmp (options[i].name, opt, len))
      return options[i].kind;
  return -1;
}

/* One option of -o's list (KEY or KEY=VALUE).  0 or -1 (err). */
static int
map_option (struct mh_cmd *cmd, const char *opt, bool sloppy, char *err, size_t len)
{
  const char *eq = strchr (opt, '=');
  size_t klen = eq ? (size_t) (eq - opt) : strlen (opt);
  char key[klen + 3];

  switch (kind_of (opt, klen)) {
  case MH_CORFS_VALUE:
    if (!eq || !eq[1])
      return bad (err, len, "option %.*s needs a value (%.*s=VALUE)",
                  (int) klen, opt, (int) klen, opt);
    snprintf (key, sizeof key, "--%.*s", (int) klen, opt);
    return add (cmd, key) == -1 || add (cmd, eq + 1) == -1 ? bad (err, len, "out of memory") : 0;
  case MH_CORFS_FLAG:
    if (eq)
      return bad (err, len, "option %.*s takes no value", (int) klen, opt);
    snprintf (key, sizeof key, "--%s", opt);
    return add (cmd, key) == -1 ? bad (err, len, "out of memory") : 0;
  case MH_FUSE:
    return add (cmd, "-o") == -1 || add (cmd, opt) == -1 ? bad (err, len, "out of memory") : 0;
  case MH_IGNORED:
    return 0;
  default:
    if (!sloppy)
      return bad (err, len, "unknown option %s", opt);
    fprintf (stderr, "mount.corfs: ignoring unknown option %s (-s)\n", opt);
    return 0;
  }
}

/* The next option of a comma-separated list at *p, into out (as long as
 * the list), *p moved past it and its comma.  As in mount(8) (libmount),
 * a comma between double quotes does not separate: -o
 * 'disk="d=http://h/x?a=1,b=2"' is one option; the quotes are dropped
 * from the value corfs gets.  1, 0 at the end of the list, or -1 (err)
 * for a quote left open. */
static int
next_option (const char **p, char *out, char *err, size_t len)
{
  const char *s = *p;
  bool quoted = false;

  if (!*s)
    return 0;
  for (; *s && (quoted || *s != ','); s++) {
    if (*s == '"')
      quoted = !quoted;
    else
      *out++ = *s;
  }
  *out = '\0';
  if (quoted)
    return bad (err, len, "unterminated double quote in option %s", *p);
  *p = *s ? s + 1 : s;
  return 1;
}

/* Every option of a comma-separated list (empty ones skipped, as
 * mount(8) does).  0 or -1 (err). */
static int
map_options (struct mh_cmd *cmd, const char *list, bool sloppy, char *err, size_t len)
{
  char *opt = malloc (strlen (list) + 1);
  const char *p = list;
  int r = 0;

  if (!opt)
    return bad (err, len, "out of memory");
  while (r == 0 && (r = next_option (&p, opt, err, len)) == 1)
    r = *opt ? map_option (cmd, opt, sloppy, err, len) : 0;
  free (opt);
  return r;
}

int
mh_parse (int argc, char **argv, const char *corfs_bin, struct mh_cmd *cmd,
          char *err, size_t len)
{
  const char *lists[argc], *spec = NULL, *dir = NULL;
  size_t nr_lists = 0;
  bool sloppy = false;
  int c;

  memset (cmd, 0, sizeof *cmd);
  /* mount(8) puts SPEC and DIR first; by hand they may come anywhere
   * (getopt permutes).  -n (no mtab) and -t (the type) do not apply. */
  optind = 0;
  opterr = 0;
  while ((c = getopt (argc, argv, "sfnvo:N:t:")) != -1)
    switch (c) {
    case 's': sloppy = true; break;
    case 'f': cmd->fake = true; break;
    case 'v': cmd->verbose = true; break;
    case 'n': case 't': break;
    case 'o': lists[nr_lists++] = optarg; break;
    case 'N': return bad (err, len, "-N (another mount namespace) is not supported");
    default: return bad (err, len, "unknown or incomplete option -%c", optopt);
    }
  if (argc - optind != 2)
    return bad (err, len, "expected STATE_DIR MOUNTPOINT [-o OPTIONS]");
  spec = argv[optind];
  dir = argv[optind + 1];
  if (add (cmd, corfs_bin) == -1 || add (cmd, "mount") == -1 ||
      add (cmd, "--state") == -1 || add (cmd, spec) == -1)
    return bad (err, len, "out of memory");
  for (size_t i = 0; i < nr_lists; i++)
    if (map_options (cmd, lists[i], sloppy, err, len) == -1)
      return -1;
  /* "--" so that a mount point starting with '-' is not an option. */
  if (add (cmd, "--") == -1 || add (cmd, dir) == -1)
    return bad (err, len, "out of memory");
  return 0;
}

void
mh_cmd_free (struct mh_cmd *cmd)
{
  for (size_t i = 0; i < cmd->argc; i++)
    free (cmd->argv[i]);
  free (cmd->argv);
  cmd->argv = NULL;
  cmd->argc = 0;
}
