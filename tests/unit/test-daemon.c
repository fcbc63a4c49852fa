/* Unit tests: `corfs mount` options and config file (src/daemon): the
 * same limits for durations on the command line and in the config file,
 * and the hold kept below the kernel's FUSE request timeout. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "daemon/daemon.h"

/* mount_parse on a writable copy of the arguments (it scrubs --disk
 * URLs in place); "mount" and the mount point are added.  Returns its
 * result; o is freed unless keep. */
static int
parse (struct mount_opts *o, ...)
{
  char *argv[32];
  int argc = 0, r;
  va_list ap;

  argv[argc++] = strdup ("mount");
  va_start (ap, o);
  for (const char *a; (a = va_arg (ap, const char *)); )
    argv[argc++] = strdup (a);
  va_end (ap);
  argv[argc++] = strdup ("/mnt");
  argv[argc] = NULL;
  r = mount_parse (argc, argv, o);
  for (int i = 0; i < argc; i++)
    free (argv[i]);
  return r;
}

/* Parse a config file holding text (plus the state dir). */
static int
parse_config (struct mount_opts *o, const char *text)
{
  char path[] = "/tmp/corfs-unit-conf.XXXXXX";
  int fd = mkstemp (path), r;

  cr_assert (fd >= 0);
  cr_assert_eq (write (fd, text, strlen (text)), (ssize_t) strlen (text));
  close (fd);
  r = parse (o, "--state", "/tmp/s", "--config", path, NULL);
  unlink (path);
  return r;
}

Test (daemon, hold_on_the_command_line)
{
  struct mount_opts o;

  cr_assert_eq (parse (&o, "--state", "/tmp/s", "--hold", "30", NULL), 0);
  cr_assert_eq (o.hold_s, 30);
  mount_opts_free (&o);
  /* 18446744074 s times 10^9 wraps to 0.29 s. */
  static const char *bad[] = { "0", "18446744074", "99999999999999999999", "3601",
                               "-1", " 5", "5s", "1K", "", NULL };
  for (size_t i = 0; bad[i]; i++) {
    cr_expect_eq (parse (&o, "--state", "/tmp/s", "--hold", bad[i], NULL), -1,
                  "--hold '%s' accepted", bad[i]);
    mount_opts_free (&o);
    cr_expect_eq (parse (&o, "--state", "/tmp/s", "--connect-timeout", bad[i], NULL), -1,
                  "--connect-timeout '%s' accepted", bad[i]);
    mount_opts_free (&o);
  }
  cr_assert_eq (parse (&o, "--state", "/tmp/s", "--hold", "3600", NULL), 0);
  mount_opts_free (&o);
}

Test (daemon, hold_in_the_config_file)
{
  struct mount_opts o;

  cr_assert_eq (parse_config (&o, "[corfs]\nhold = 30\nconnect-timeout = 7\n"), 0);
  cr_assert_eq (o.hold_s, 30);
  cr_assert_eq (o.connect_timeout_s, 7);
  mount_opts_free (&o);
  static const char *bad[] = { "hold = 0\n", "hold = 18446744074\n", "hold = 3601\n",
                               "hold = -1\n", "connect-timeout = 0\n",
                               "connect-timeout = 18446744074\n",
                               "connect-timeout = 10K\n", NULL };
  for (size_t i = 0; bad[i]; i++) {
    char text[128];
    snprintf (text, sizeof text, "[corfs]\n%s", bad[i]);
    cr_expect_eq (parse_config (&o, text), -1, "config '%s' accepted", bad[i]);
    mount_opts_free (&o);
  }
}

/* ---- functions added with the checks (not in 63d3432) ---- */

Test (daemon, hold_below_the_kernel_timeout)
{
  uint64_t h;
  char why[512] = "";

  /* No kernel timeout: anything parse accepted. */
  cr_assert_eq (hold_fit (3600, true, 0, NULL, &h, why, sizeof why), 0);
  cr_assert_eq (h, 3600);
  /* A given hold must leave 2 s before the kernel aborts the mount. */
  cr_assert_eq (hold_fit (28, true, 30, "F", &h, why, sizeof why), 0);
  cr_assert_eq (h, 28);
  cr_assert_eq (hold_fit (29, true, 30, "F", &h, why, sizeof why), -1);
  cr_assert (strstr (why, "at most 28 s"), "%s", why);
  cr_assert (strstr (why, "(F)"), "%s", why);
  /* The default is lowered instead. */
  cr_assert_eq (hold_fit (20, false, 15, "F", &h, why, sizeof why), 0);
  cr_assert_eq (h, 13);
  cr_assert_eq (hold_fit (20, false, 2, "F", &h, why, sizeof why), 0);
  cr_assert_eq (h, 1);
}

Test (daemon, parse_seconds)
{
  uint64_t v;

  cr_assert_eq (parse_seconds ("20", 3600, &v), 0); cr_assert_eq (v, 20);
  cr_assert_eq (parse_seconds ("3600", 3600, &v), 0);
  cr_assert_eq (parse_seconds ("3601", 3600, &v), -1); cr_assert_eq (errno, ERANGE);
  cr_assert_eq (parse_seconds ("18446744074", 3600, &v), -1); cr_assert_eq (errno, ERANGE);
  cr_assert_eq (parse_seconds ("99999999999999999999999", 3600, &v), -1);
  cr_assert_eq (errno, ERANGE);
  cr_assert_eq (parse_seconds ("0", 3600, &v), -1); cr_assert_eq (errno, EINVAL);
  cr_assert_eq (parse_seconds ("-1", 3600, &v), -1); cr_assert_eq (errno, EINVAL);
  cr_assert_eq (parse_seconds ("1.5", 3600, &v), -1); cr_assert_eq (errno, EINVAL);
  cr_assert_eq (parse_seconds ("", 3600, &v), -1);
  cr_assert_eq (parse_seconds (NULL, 3600, &v), -1);
}

Test (daemon, scrub_disk_arg)
{
  char a[] = "d=https://user:secret@host/x.img?X-Amz-Signature=abc";
  char b[] = "d=@/etc/corfs/url";
  size_t n = sizeof a;

  scrub_disk_arg (a);
  cr_assert_str_eq (a, "d=https://host/x.img?X-Amz-Signature=REDACTED");
  for (size_t i = strlen (a); i < n; i++)
    cr_assert_eq (a[i], '\0', "byte %zu of the old URL left", i);
  scrub_disk_arg (b);
  cr_assert_str_eq (b, "d=@/etc/corfs/url");
  /* A redacted form longer than the URL is cut to the URL's length: the
   * secret's bytes are overwritten all the same. */
  char c[] = "d=http://h/?key=s3";
  scrub_disk_arg (c);
  cr_assert_null (strstr (c, "s3"));
  cr_assert_eq (strlen (c), strlen ("d=http://h/?key=s3"));
}
