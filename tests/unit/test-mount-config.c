/* Unit tests: the config file's [corfs] mountpoint (src/daemon), used
 * when `corfs mount` is given no MOUNTPOINT, as corfs@.service runs it. */
#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/daemon.h"

static char sysctl_dir[] = "/tmp/corfs-unit-mcf.XXXXXX";

/* mount_parse reads the kernel's FUSE timeouts: from an empty directory
 * of our own, not the host's. */
static void
setup (void)
{
  cr_assert_not_null (mkdtemp (sysctl_dir));
  fuse_sysctl_dir = sysctl_dir;
}

static void
teardown (void)
{
  rmdir (sysctl_dir);
}

TestSuite (mount_config, .init = setup, .fini = teardown);

/* mount_parse of "mount --state /s --config FILE" (FILE holding text;
 * no --config if text is NULL) and the further arguments; stderr goes
 * to err. */
static int
parse (struct mount_opts *o, char *err, size_t len, const char *text, ...)
{
  char path[] = "/tmp/corfs-unit-mcf-conf.XXXXXX", *argv[16];
  int argc = 0, r, saved = dup (2);
  FILE *cap = tmpfile ();
  va_list ap;

  cr_assert (cap && saved >= 0);
  argv[argc++] = strdup ("mount");
  argv[argc++] = strdup ("--state");
  argv[argc++] = strdup ("/s");
  if (text) {
    int fd = mkstemp (path);
    cr_assert (fd >= 0);
    cr_assert_eq (write (fd, text, strlen (text)), (ssize_t) strlen (text));
    close (fd);
    argv[argc++] = strdup ("--config");
    argv[argc++] = strdup (path);
  }
  va_start (ap, text);
  for (const char *a; (a = va_arg (ap, const char *)); )
    argv[argc++] = strdup (a);
  va_end (ap);
  argv[argc] = NULL;
  fflush (stderr);
  dup2 (fileno (cap), 2);
  r = mount_parse (argc, argv, o);
  fflush (stderr);
  dup2 (saved, 2);
  close (saved);
  rewind (cap);
  err[fread (err, 1, len - 1, cap)] = '\0';
  fclose (cap);
  if (text)
    unlink (path);
  for (int i = 0; i < argc; i++)
    free (argv[i]);
  return r;
}

Test (mount_config, mountpoint_from_the_file)
{
  struct mount_opts o;
  char err[512];

  cr_assert_eq (parse (&o, err, sizeof err, "[corfs]\nmountpoint = /mnt/a\n", NULL), 0, "%s", err);
  cr_expect_str_eq (o.mountpoint, "/mnt/a");
  mount_opts_free (&o);
  /* The last line wins, as for the file's other settings. */
  cr_assert_eq (parse (&o, err, sizeof err, "[corfs]\nmountpoint = /mnt/a\nmountpoint = /mnt/b\n",
                       NULL), 0, "%s", err);
  cr_expect_str_eq (o.mountpoint, "/mnt/b");
  mount_opts_free (&o);
  /* The command line's MOUNTPOINT wins over the file's. */
  cr_assert_eq (parse (&o, err, sizeof err, "[corfs]\nmountpoint = /mnt/a\n", "/mnt/cli", NULL),
                0, "%s", err);
  cr_expect_str_eq (o.mountpoint, "/mnt/cli");
  mount_opts_free (&o);
}

Test (mount_config, refusals)
{
  struct mount_opts o;
  char err[512];

  cr_expect_eq (parse (&o, err, sizeof err, "[corfs]\nmountpoint = mnt/a\n", NULL), -1);
  cr_expect (strstr (err, "mountpoint = mnt/a: expected an absolute path"), "%s", err);
  mount_opts_free (&o);
  /* [corfs] only: a disk has no mount point of its own. */
  cr_expect_eq (parse (&o, err, sizeof err, "[disk a]\nurl = file:///a\nmountpoint = /m\n",
                       NULL), -1);
  cr_expect (strstr (err, "unknown setting mountpoint in [disk a]"), "%s", err);
  mount_opts_free (&o);
  cr_expect_eq (parse (&o, err, sizeof err, "[corfs]\nhold = 5\n", NULL), -1);
  cr_expect (strstr (err, "missing MOUNTPOINT"), "%s", err);
  mount_opts_free (&o);
  cr_expect_eq (parse (&o, err, sizeof err, NULL, NULL), -1);
  cr_expect (strstr (err, "missing MOUNTPOINT"), "%s", err);
  mount_opts_free (&o);
}
