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
#include "format/format.h"

/* mount_parse reads the kernel's FUSE request timeout: from a directory
 * of this test's own (empty unless a test writes the files), never the
 * host's /proc/sys/fs/fuse. */
static char sysctl_dir[] = "/tmp/corfs-unit-fuse.XXXXXX";

static void
sysctl_setup (void)
{
  cr_assert_not_null (mkdtemp (sysctl_dir));
  fuse_sysctl_dir = sysctl_dir;
}

static void
sysctl_set (const char *name, const char *value)
{
  char path[256];
  FILE *f;

  snprintf (path, sizeof path, "%s/%s", sysctl_dir, name);
  cr_assert_not_null (f = fopen (path, "w"));
  fprintf (f, "%s\n", value);
  fclose (f);
}

static void
sysctl_teardown (void)
{
  char path[256];

  for (const char **n = (const char *[]) { "default_request_timeout",
                                           "max_request_timeout", NULL }; *n; n++) {
    snprintf (path, sizeof path, "%s/%s", sysctl_dir, *n);
    unlink (path);
  }
  rmdir (sysctl_dir);
}

TestSuite (daemon, .init = sysctl_setup, .fini = sysctl_teardown);

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
  /* A given hold must be at most half the kernel's timeout (a request
   * may also wait in the kernel's queue). */
  cr_assert_eq (hold_fit (15, true, 30, "F", &h, why, sizeof why), 0);
  cr_assert_eq (h, 15);
  cr_assert_eq (hold_fit (16, true, 30, "F", &h, why, sizeof why), -1);
  cr_assert (strstr (why, "at most 15 s"), "%s", why);
  cr_assert (strstr (why, "(F)"), "%s", why);
  cr_assert_eq (hold_fit (28, true, 30, "F", &h, why, sizeof why), -1);
  /* The default is lowered instead. */
  cr_assert_eq (hold_fit (20, false, 15, "F", &h, why, sizeof why), 0);
  cr_assert_eq (h, 7);
  cr_assert_eq (hold_fit (20, false, 2, "F", &h, why, sizeof why), 0);
  cr_assert_eq (h, 1);
  cr_assert_eq (hold_fit (20, false, 1, "F", &h, why, sizeof why), 0);
  cr_assert_eq (h, 1);
}

/* The kernel's timeout is the smaller of default_request_timeout and
 * max_request_timeout that is set (0 is unset), read from the injected
 * directory; mount_parse applies it to --hold. */
Test (daemon, kernel_timeout_from_the_sysctls)
{
  struct mount_opts o;
  const char *which = "x";

  cr_assert_eq (fuse_kernel_timeout_s (&which), 0);
  cr_assert_null (which);
  cr_assert_eq (parse (&o, "--state", "/tmp/s", "--hold", "3600", NULL), 0);
  mount_opts_free (&o);

  sysctl_set ("default_request_timeout", "0");
  sysctl_set ("max_request_timeout", "40");
  cr_assert_eq (fuse_kernel_timeout_s (&which), 40);
  cr_assert_str_eq (which, "fs.fuse.max_request_timeout");
  sysctl_set ("default_request_timeout", "30");
  cr_assert_eq (fuse_kernel_timeout_s (&which), 30);
  cr_assert_str_eq (which, "fs.fuse.default_request_timeout");
  cr_assert_eq (parse (&o, "--state", "/tmp/s", "--hold", "15", NULL), 0);
  cr_assert_eq (o.hold_s, 15);
  mount_opts_free (&o);
  cr_assert_eq (parse (&o, "--state", "/tmp/s", "--hold", "16", NULL), -1);
  mount_opts_free (&o);
  cr_assert_eq (parse_config (&o, "[corfs]\nhold = 16\n"), -1);
  mount_opts_free (&o);
  /* The default hold (20 s) is lowered by the daemon, not refused. */
  cr_assert_eq (parse (&o, "--state", "/tmp/s", NULL), 0);
  mount_opts_free (&o);
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
  cr_assert_str_eq (a, "d=https://host/x.img");
  for (size_t i = strlen (a); i < n; i++)
    cr_assert_eq (a[i], '\0', "byte %zu of the old URL left", i);
  scrub_disk_arg (b);
  cr_assert_str_eq (b, "d=@/etc/corfs/url");
}

/* argv keeps scheme://host[:port]/path whatever the secret's name:
 * userinfo up to the authority's last '@', the query, the fragment and
 * ';' path parameters are gone. */
Test (daemon, scrub_disk_arg_any_secret)
{
  static const struct { const char *in, *out; } cases[] = {
    { "d=http://h/?key=SECRET", "d=http://h/" },
    { "d=https://h:8443/a/b.img?apikey=SECRET&x=1", "d=https://h:8443/a/b.img" },
    { "d=https://h/x.img#access_token=SECRET", "d=https://h/x.img" },
    { "d=https://h/x.img;jsessionid=SECRET", "d=https://h/x.img" },
    { "d=https://h/x.img;jsessionid=SECRET?key=SECRET#access_token=SECRET", "d=https://h/x.img" },
    { "d=https://us:er:SE@CRET@h/x", "d=https://h/x" },
    { "d=s3://SECRET@bucket/key?X-Amz-Credential=SECRET", "d=s3://bucket/key" },
    { "d=nbd+unix:///exp?socket=/run/a.sock", "d=nbd+unix:///exp" },
    { "d=nbd://h:10809/exp", "d=nbd://h:10809/exp" },
    { "d=file:///var/img.raw", "d=file:///var/img.raw" },
    { "d=https://h/p?q=a@b", "d=https://h/p" },
    { "d=weird:user:SECRET@h?k=SECRET", "d=h" },
  };

  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char buf[256];
    size_t n = strlen (cases[i].in);
    memset (buf, 'X', sizeof buf);
    memcpy (buf, cases[i].in, n + 1);
    scrub_disk_arg (buf);
    cr_expect_str_eq (buf, cases[i].out, "%s", cases[i].in);
    cr_expect_null (strstr (buf, "SECRET"), "%s", cases[i].in);
    for (size_t k = strlen (buf); k < n; k++)
      cr_expect_eq (buf[k], '\0', "%s: byte %zu left", cases[i].in, k);
  }
}

/* Errors about a malformed --disk argument show it as argv does. */
Test (daemon, disk_arg_errors_redacted)
{
  static const char *bad[] = { "https://user:SECRET@h/x.img",
                               "https://user:SECRET@h/x.img?key=SECRET",
                               "http://h/x;jsessionid=SECRET=", NULL };
  char path[] = "/tmp/corfs-unit-err.XXXXXX", text[4096];
  int fd = mkstemp (path), saved = dup (2);
  struct mount_opts o;
  ssize_t n;

  cr_assert (fd >= 0 && saved >= 0);
  for (size_t i = 0; bad[i]; i++) {
    fflush (stderr);
    dup2 (fd, 2);
    int r = parse (&o, "--state", "/tmp/s", "--disk", bad[i], NULL);
    fflush (stderr);
    dup2 (saved, 2);
    cr_expect_eq (r, -1, "%s accepted", bad[i]);
    mount_opts_free (&o);
  }
  n = pread (fd, text, sizeof text - 1, 0);
  cr_assert (n > 0);
  text[n] = '\0';
  close (fd);
  close (saved);
  unlink (path);
  cr_expect (strstr (text, "https://h/x.img"), "%s", text);
  cr_expect_null (strstr (text, "SECRET"), "a secret in the errors:\n%s", text);
}

/* ---- mount_parse after its split into one function per option ---- */

/* Run parse with fd (1 or 2) in a file; what was printed in out. */
static int
parse_captured (int which, char *out, size_t len, struct mount_opts *o,
                const char *a1, const char *a2, const char *a3)
{
  char path[] = "/tmp/corfs-unit-out.XXXXXX";
  int fd = mkstemp (path), saved = dup (which), r;
  ssize_t n;

  cr_assert (fd >= 0 && saved >= 0);
  fflush (NULL);
  dup2 (fd, which);
  r = parse (o, a1, a2, a3, NULL);
  fflush (NULL);
  dup2 (saved, which);
  close (saved);
  n = pread (fd, out, len - 1, 0);
  out[n > 0 ? n : 0] = '\0';
  close (fd);
  unlink (path);
  return r;
}

/* --help names every parent the remote module opens (remote.c's
 * backends), each with its URL form. */
Test (daemon, help_lists_every_parent)
{
  static const char *urls[] = { "nbd://HOST[:PORT]/EXPORT", "nbd+unix:///EXPORT?socket=PATH",
                                "http://HOST[:PORT]/PATH", "https://HOST[:PORT]/PATH",
                                "s3://BUCKET/KEY", "nfs://SERVER/EXPORT/FILE?version=3",
                                "file:///PATH", NULL };
  struct mount_opts o;
  char out[8192];

  cr_assert_eq (parse_captured (1, out, sizeof out, &o, "--help", NULL, NULL), 1);
  mount_opts_free (&o);
  for (size_t i = 0; urls[i]; i++)
    cr_expect (strstr (out, urls[i]), "--help does not list %s", urls[i]);
  cr_expect (strstr (out, "--repin NAME"), "%s", out);
}

/* Each option lands in its own field. */
Test (daemon, options_set_their_fields)
{
  char *argv[] = { "mount", "--state", "/tmp/s", "--disk", "a=file:///a.img",
                   "--block-size", "128K", "--hold", "9", "--connect-timeout", "4",
                   "--readahead", "0", "--parent-owned", "--stream=paused",
                   "--write-mode=mirror", "--incoming", "--repin", "a", "--repin", "b",
                   "-o", "allow_other", "-o", "ro", "-v", "-d", "/mnt", NULL };
  int argc = sizeof argv / sizeof argv[0] - 1;
  struct mount_opts o;

  for (int i = 0; i < argc; i++)
    argv[i] = strdup (argv[i]);
  cr_assert_eq (mount_parse (argc, argv, &o), 0);
  cr_assert_str_eq (o.state, "/tmp/s");
  cr_assert_str_eq (o.mountpoint, "/mnt");
  cr_assert_eq (o.nr_disks, 1);
  cr_assert_str_eq (o.disks[0].name, "a");
  cr_assert_str_eq (o.disks[0].url, "file:///a.img");
  cr_assert_eq (o.block_size, 128 * 1024);
  cr_assert_eq (o.hold_s, 9);
  cr_assert (o.hold_given);
  cr_assert_eq (o.connect_timeout_s, 4);
  cr_assert_eq (o.readahead, 0);
  cr_assert_eq (o.cli_set, CLI_BLOCK_SIZE | CLI_HOLD | CLI_CONNECT_TIMEOUT | CLI_READAHEAD |
                CLI_STREAM);
  cr_assert (o.parent_owned);
  cr_assert_eq (o.stream, 2);   /* COR_STREAM_PAUSED */
  cr_assert (o.mirror && o.have_write_mode);
  cr_assert (o.incoming);
  cr_assert_eq (o.nr_repin, 2);
  cr_assert_str_eq (o.repin[1], "b");
  cr_assert_eq (o.nr_fuse_options, 2);
  cr_assert_str_eq (o.fuse_options[1], "ro");
  cr_assert_null (o.fuse_options[2]);
  cr_assert (o.verbose && o.fuse_debug && o.foreground);
  mount_opts_free (&o);
  for (int i = 0; i < argc; i++)
    free (argv[i]);
}

/* --format applies to the command line's disks; a disk's format in the
 * config file wins; qcow2-l2-cache is daemon-wide; bad names refused. */
Test (daemon, format_options)
{
  struct mount_opts o;
  char err[2048];

  cr_assert_eq (parse (&o, "--state", "/tmp/s", "--format", "qcow2", "--disk", "a=file:///a",
                       NULL), 0);
  cr_assert_eq (o.format, FORMAT_QCOW2);
  cr_assert_eq (o.disks[0].format, -1);
  mount_opts_free (&o);
  cr_assert_eq (parse (&o, "--state", "/tmp/s", "--disk", "a=file:///a", NULL), 0);
  cr_assert_eq (o.format, -1);
  mount_opts_free (&o);
  cr_assert_eq (parse_config (&o, "[corfs]\nqcow2-l2-cache = 4M\n"
                              "[disk a]\nurl = file:///a\nformat = qcow2\n"
                              "[disk b]\nurl = file:///b\nformat = raw\n"), 0);
  cr_assert_eq (o.qcow2_l2_cache, 4 << 20);
  cr_assert_eq (o.disks[0].format, FORMAT_QCOW2);
  cr_assert_eq (o.disks[1].format, FORMAT_RAW);
  mount_opts_free (&o);
  cr_assert_eq (parse_config (&o, "[disk a]\nurl = file:///a\nformat = vmdk\n"), -1);
  mount_opts_free (&o);
  cr_assert_eq (parse_config (&o, "[corfs]\nqcow2-l2-cache = 0\n"), -1);
  mount_opts_free (&o);
  cr_assert_eq (parse_captured (2, err, sizeof err, &o, "--format", "vmdk", "--state=/s"), -1);
  cr_expect (strstr (err, "--format vmdk: expected raw or qcow2"), "%s", err);
  mount_opts_free (&o);
}

/* The refusals after the options: the mount point, --state, and the
 * block sizes, each with its message. */
Test (daemon, refusals_after_the_options)
{
  struct mount_opts o;
  char err[2048];

  cr_assert_eq (parse_captured (2, err, sizeof err, &o, "--state", "/tmp/s", "/mnt2"), -1);
  cr_expect (strstr (err, "more than one MOUNTPOINT"), "%s", err);
  mount_opts_free (&o);
  cr_assert_eq (parse_captured (2, err, sizeof err, &o, "-v", NULL, NULL), -1);
  cr_expect (strstr (err, "--state DIR is required"), "%s", err);
  mount_opts_free (&o);
  cr_assert_eq (parse_captured (2, err, sizeof err, &o, "--state", "/tmp/s", "--bogus"), -1);
  cr_expect (strstr (err, "unknown or incomplete option --bogus"), "%s", err);
  mount_opts_free (&o);
  cr_assert_eq (parse_captured (2, err, sizeof err, &o, "--state", "/tmp/s", "-x"), -1);
  cr_expect (strstr (err, "unknown or incomplete option -x"), "%s", err);
  mount_opts_free (&o);
  cr_assert_eq (parse_captured (2, err, sizeof err, &o, "--block-size", "2K", "--state=/s"), -1);
  cr_expect (strstr (err, "block size 2048 is not a power of two from 4K to 4M"), "%s", err);
  mount_opts_free (&o);
  cr_assert_eq (parse_config (&o, "[disk a]\nblock-size = 3K\n"), -1);
  mount_opts_free (&o);
  cr_assert_eq (parse_config (&o, "[disk a]\nstream = on\n"), -1);   /* no url */
  mount_opts_free (&o);
  cr_assert_eq (parse_config (&o, "[disk a]\nurl = file:///a\nblock-size = 8K\n"), 0);
  cr_assert_eq (o.disks[0].block_size, 8192);
  mount_opts_free (&o);
}

/* Several sources: --disk NAME=URL given again, and [source NAME ID]
 * sections with their own settings, in order; refused with
 * --parent-owned, mirror mode, --incoming, and for a URL with a blank. */
Test (daemon, sources)
{
  struct mount_opts o;

  cr_assert_eq (parse (&o, "--state", "/tmp/s", "--disk", "d=http://a/x", "--disk",
                       "d=nbd://b/x", NULL), 0);
  cr_assert_eq (o.nr_disks, 1);
  cr_assert_str_eq (o.disks[0].url, "http://a/x");
  cr_assert_eq (o.disks[0].nr_sources, 1);
  cr_assert_str_eq (o.disks[0].sources[0].url, "nbd://b/x");
  mount_opts_free (&o);
  cr_assert_eq (parse_config (&o, "[corfs]\nsource-timeout = 0.5\n"
                              "[disk d]\nurl = http://a/x\nheader = X-A: 1\npolicy = spread\n"
                              "[source d s3]\nurl = s3://b/k\ns3-region = r\n"
                              "credentials-file = /c\n[source d n]\nurl = nbd://c/x\n"), 0);
  cr_assert_eq (o.source_timeout_ms, 500);
  cr_assert_eq (o.disks[0].nr_sources, 2);
  cr_assert (o.disks[0].spread);
  cr_assert_str_eq (o.disks[0].sources[0].name, "s3");
  cr_assert_str_eq (o.disks[0].sources[0].s3_region, "r");
  cr_assert_str_eq (o.disks[0].sources[0].credentials_file, "/c");
  cr_assert_eq (o.disks[0].sources[0].nr_headers, 0);
  cr_assert_null (o.disks[0].sources[1].credentials_file);
  mount_opts_free (&o);
  cr_assert_eq (parse_config (&o, "[disk d]\nurl = http://a/x\n[source d s]\nstream = on\n"), -1);
  mount_opts_free (&o);
  cr_assert_eq (parse (&o, "--state", "/tmp/s", "--parent-owned", "--disk", "d=http://a/x",
                       "--disk", "d=http://b/x", NULL), -1);
  mount_opts_free (&o);
  cr_assert_eq (parse (&o, "--state", "/tmp/s", "--incoming", "--disk", "d=http://a/x",
                       "--disk", "d=http://b/x", NULL), -1);
  mount_opts_free (&o);
  cr_assert_eq (parse_config (&o, "[disk d]\nurl = http://a/x\nwrite-mode = mirror\n"
                              "parent-owned = true\n[source d s]\nurl = http://b/x\n"), -1);
  mount_opts_free (&o);
  cr_assert_eq (parse_config (&o, "[disk d]\nurl = http://a/x\n[source d s]\nurl = http://b/x y\n"),
                -1);
  mount_opts_free (&o);
}
