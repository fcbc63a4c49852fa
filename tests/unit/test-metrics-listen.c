/* Unit tests: the --metrics-listen values (src/ctl/metrics-http.c) and
 * the config key that takes them (src/daemon/config.c). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ctl/ctl.h"
#include "daemon/daemon.h"

static bool
ok (const char *spec)
{
  char why[256] = "";

  return metrics_listen_check (spec, why, sizeof why) == 0;
}

Test (metrics_listen, accepted)
{
  cr_assert (ok ("9100"));
  cr_assert (ok ("127.0.0.1:9100"));
  cr_assert (ok ("localhost:1"));
  cr_assert (ok ("0.0.0.0:65535"));
  cr_assert (ok ("[::1]:9100"));
  cr_assert (ok ("[::]:9100"));
  cr_assert (ok ("10.1.2.3:9100"));
}

Test (metrics_listen, refused)
{
  const char *bad[] = {
    "", "0", "65536", "99999999", "-1", "+80", "80x", " 80", "9100 ",
    ":9100", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1", "host.example:9100",
    "::1:9100", "[::1]9100", "[::1]:", "[127.0.0.1]:9100", "[::1:9100",
    "256.1.1.1:80", "127.0.0.1:80:80", "[]:80",
  };
  char why[256];

  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    why[0] = '\0';
    cr_assert_eq (metrics_listen_check (bad[i], why, sizeof why), -1, "accepted '%s'", bad[i]);
    cr_assert (strstr (why, "expected PORT"), "reason for '%s': %s", bad[i], why);
  }
}

static int
load (const char *text, struct mount_opts *o)
{
  char path[] = "/tmp/corfs-unit-metrics.XXXXXX";
  int fd = mkstemp (path), r;

  cr_assert_geq (fd, 0);
  cr_assert_eq (write (fd, text, strlen (text)), (ssize_t) strlen (text));
  close (fd);
  r = config_load (path, o);
  unlink (path);
  return r;
}

/* The config key is checked when read; the command line's wins. */
Test (metrics_listen, config_key)
{
  struct mount_opts o;

  memset (&o, 0, sizeof o);
  cr_assert_eq (load ("[corfs]\nmetrics-listen = [::1]:9200\n", &o), 0);
  cr_assert_str_eq (o.metrics_listen, "[::1]:9200");
  mount_opts_free (&o);

  memset (&o, 0, sizeof o);
  cr_assert_eq (load ("[corfs]\nmetrics-listen = nonsense\n", &o), -1);
  mount_opts_free (&o);

  memset (&o, 0, sizeof o);
  o.metrics_listen = strdup ("9300");
  o.cli_set = CLI_METRICS_LISTEN;
  cr_assert_eq (load ("[corfs]\nmetrics-listen = 9400\n", &o), 0);
  cr_assert_str_eq (o.metrics_listen, "9300");
  mount_opts_free (&o);
}
