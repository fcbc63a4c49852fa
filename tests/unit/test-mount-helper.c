/* Unit tests: mount.corfs's arguments (src/mount-helper) turned into a
 * `corfs mount` command, and every corfs option it knows accepted by
 * mount_parse (so that the helper's table and corfs mount's options
 * cannot drift apart). */
#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/daemon.h"
#include "mount-helper/mount-helper.h"

/* mh_parse on the arguments given (NULL-terminated; "mount.corfs" is
 * added first).  Returns its result; err gets its reason. */
static int
helper (struct mh_cmd *cmd, char *err, size_t len, ...)
{
  char *argv[32];
  int argc = 0, r;
  va_list ap;

  argv[argc++] = strdup ("mount.corfs");
  va_start (ap, len);
  for (const char *a; (a = va_arg (ap, const char *)); )
    argv[argc++] = strdup (a);
  va_end (ap);
  argv[argc] = NULL;
  err[0] = '\0';
  r = mh_parse (argc, argv, "/usr/bin/corfs", cmd, err, len);
  for (int i = 0; i < argc; i++)
    free (argv[i]);
  return r;
}

/* The command as one string, arguments separated by spaces. */
static const char *
joined (const struct mh_cmd *cmd)
{
  static char buf[1024];
  size_t n = 0;

  buf[0] = '\0';
  for (size_t i = 0; i < cmd->argc; i++)
    n += snprintf (buf + n, sizeof buf - n, "%s%s", i ? " " : "", cmd->argv[i]);
  return buf;
}

Test (mount_helper, fstab_options)
{
  struct mh_cmd cmd;
  char err[256];

  cr_assert_eq (helper (&cmd, err, sizeof err, "/var/lib/corfs/a", "/mnt/corfs", "-o",
                        "stream=on,allow_other", NULL), 0, "%s", err);
  cr_expect_str_eq (joined (&cmd), "/usr/bin/corfs mount --state /var/lib/corfs/a --stream on "
                    "-o allow_other -- /mnt/corfs");
  cr_expect_null (cmd.argv[cmd.argc]);
  cr_expect (!cmd.fake && !cmd.verbose);
  mh_cmd_free (&cmd);
}

/* What mount(8) and systemd pass for themselves is dropped; the flags
 * mount(8) may add are taken, anywhere. */
Test (mount_helper, generic_options_ignored)
{
  struct mh_cmd cmd;
  char err[256];

  cr_assert_eq (helper (&cmd, err, sizeof err, "-s", "/s", "/m", "-n", "-v", "-o",
                        "defaults,rw,nofail,noauto,auto,_netdev,x-systemd.automount,"
                        "X-mount.mkdir,comment=systemd.automount,user,user=bob,nouser,users,"
                        "owner,group,hold=30", "-f", "-t", "corfs", NULL), 0, "%s", err);
  cr_expect_str_eq (joined (&cmd), "/usr/bin/corfs mount --state /s --hold 30 -- /m");
  cr_expect (cmd.fake && cmd.verbose);
  mh_cmd_free (&cmd);
  /* Several -o lists, empty items, FUSE flags and corfs flags. */
  cr_assert_eq (helper (&cmd, err, sizeof err, "/s", "/m", "-o", "ro,,parent-owned",
                        "-o", "nosuid,config=/etc/corfs/a.conf", NULL), 0, "%s", err);
  cr_expect_str_eq (joined (&cmd), "/usr/bin/corfs mount --state /s -o ro --parent-owned "
                    "-o nosuid --config /etc/corfs/a.conf -- /m");
  mh_cmd_free (&cmd);
}

/* As in mount(8): a comma between double quotes does not separate
 * options, and the quotes are not part of the value. */
Test (mount_helper, quoted_values)
{
  struct mh_cmd cmd;
  char err[256];

  cr_assert_eq (helper (&cmd, err, sizeof err, "/s", "/m", "-o",
                        "disk=\"d=http://h/x?v=1,parent-owned\",ro", NULL), 0, "%s", err);
  cr_expect_str_eq (joined (&cmd), "/usr/bin/corfs mount --state /s --disk "
                    "d=http://h/x?v=1,parent-owned -o ro -- /m");
  mh_cmd_free (&cmd);
  /* Quotes around the value only, or the whole option; two quoted. */
  cr_assert_eq (helper (&cmd, err, sizeof err, "/s", "/m", "-o",
                        "\"disk=d=http://h/x?a=1,b=2\",disk=\"e=file:///e,1.img\"",
                        NULL), 0, "%s", err);
  cr_expect_str_eq (joined (&cmd), "/usr/bin/corfs mount --state /s --disk "
                    "d=http://h/x?a=1,b=2 --disk e=file:///e,1.img -- /m");
  mh_cmd_free (&cmd);
  /* Unquoted, the comma still separates (the last option is the flag). */
  cr_assert_eq (helper (&cmd, err, sizeof err, "/s", "/m", "-o",
                        "disk=d=http://h/x?v=1,parent-owned", NULL), 0, "%s", err);
  cr_expect_str_eq (joined (&cmd), "/usr/bin/corfs mount --state /s --disk "
                    "d=http://h/x?v=1 --parent-owned -- /m");
  mh_cmd_free (&cmd);
  /* A quote left open is refused; an empty quoted value needs a value. */
  cr_expect_eq (helper (&cmd, err, sizeof err, "/s", "/m", "-o", "ro,disk=\"d=http://h/x,a",
                        NULL), -1);
  cr_expect (strstr (err, "unterminated double quote in option disk=\"d=http://h/x,a"),
             "%s", err);
  mh_cmd_free (&cmd);
  cr_expect_eq (helper (&cmd, err, sizeof err, "/s", "/m", "-o", "hold=\"\"", NULL), -1);
  cr_expect (strstr (err, "option hold needs a value"), "%s", err);
  mh_cmd_free (&cmd);
}

Test (mount_helper, refusals)
{
  static const struct {
    const char *opts, *why;
  } cases[] = {
    { "bogus", "unknown option bogus" },
    { "relatime", "unknown option relatime" },
    { "foreground", "unknown option foreground" },
    { "state=/x", "unknown option state=/x" },
    { "stream", "option stream needs a value (stream=VALUE)" },
    { "hold=", "option hold needs a value" },
    { "incoming=yes", "option incoming takes no value" },
  };
  struct mh_cmd cmd;
  char err[256];

  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    cr_expect_eq (helper (&cmd, err, sizeof err, "/s", "/m", "-o", cases[i].opts, NULL), -1,
                  "-o %s accepted", cases[i].opts);
    cr_expect (strstr (err, cases[i].why), "-o %s: %s", cases[i].opts, err);
    mh_cmd_free (&cmd);
  }
  cr_expect_eq (helper (&cmd, err, sizeof err, "/s", NULL), -1);
  cr_expect (strstr (err, "expected STATE_DIR MOUNTPOINT"), "%s", err);
  mh_cmd_free (&cmd);
  cr_expect_eq (helper (&cmd, err, sizeof err, "/s", "/m", "/x", NULL), -1);
  mh_cmd_free (&cmd);
  cr_expect_eq (helper (&cmd, err, sizeof err, "/s", "/m", "-N", "/proc/1/ns/mnt", NULL), -1);
  cr_expect (strstr (err, "-N"), "%s", err);
  mh_cmd_free (&cmd);
  cr_expect_eq (helper (&cmd, err, sizeof err, "/s", "/m", "-x", NULL), -1);
  cr_expect (strstr (err, "-x"), "%s", err);
  mh_cmd_free (&cmd);
  /* -s (sloppy): an unknown option is ignored (with a warning). */
  cr_assert_eq (helper (&cmd, err, sizeof err, "-s", "/s", "/m", "-o", "bogus,stream=off",
                        NULL), 0, "%s", err);
  cr_expect_str_eq (joined (&cmd), "/usr/bin/corfs mount --state /s --stream off -- /m");
  mh_cmd_free (&cmd);
}

/* A value mount_parse takes for each corfs option of the helper. */
static const char *
sample_value (const char *name, const char *config)
{
  static const struct {
    const char *name, *value;
  } samples[] = {
    { "disk", "a=file:///a.img" }, { "block-size", "128K" }, { "hold", "9" },
    { "connect-timeout", "4" }, { "stream", "paused" }, { "write-mode", "writeback" },
    { "readahead", "1M" }, { "repin", "a" }, { "metrics-listen", "9100" },
    { "format", "qcow2" },
  };

  if (!strcmp (name, "config"))
    return config;
  for (size_t i = 0; i < sizeof samples / sizeof samples[0]; i++)
    if (!strcmp (samples[i].name, name))
      return samples[i].value;
  return NULL;
}

/* Every corfs option the helper maps is one corfs mount takes. */
Test (mount_helper, corfs_options_exist)
{
  char config[] = "/tmp/corfs-unit-mh.XXXXXX", sysctl[] = "/tmp/corfs-unit-mhs.XXXXXX";
  int fd = mkstemp (config);
  enum mh_kind kind;
  const char *name;
  size_t tried = 0;

  cr_assert (fd >= 0);
  close (fd);
  /* mount_parse reads the kernel's FUSE timeouts: an empty directory of
   * our own, not the host's. */
  cr_assert_not_null (mkdtemp (sysctl));
  fuse_sysctl_dir = sysctl;
  for (size_t i = 0; (name = mh_known_option (i, &kind)); i++) {
    char opt[256], err[256];
    struct mh_cmd cmd;
    struct mount_opts o;

    if (kind == MH_CORFS_VALUE) {
      const char *v = sample_value (name, config);
      cr_assert_not_null (v, "no sample value for %s", name);
      snprintf (opt, sizeof opt, "%s=%s", name, v);
    }
    else if (kind == MH_CORFS_FLAG)
      snprintf (opt, sizeof opt, "%s", name);
    else
      continue;
    cr_assert_eq (helper (&cmd, err, sizeof err, "/s", "/m", "-o", opt, NULL), 0, "%s", err);
    /* argv[0] is the binary: mount_parse takes "mount" onwards. */
    cr_expect_eq (mount_parse (cmd.argc - 1, cmd.argv + 1, &o), 0,
                  "corfs mount refuses %s", joined (&cmd));
    mount_opts_free (&o);
    mh_cmd_free (&cmd);
    tried++;
  }
  cr_expect_geq (tried, 12);
  unlink (config);
  rmdir (sysctl);
}
