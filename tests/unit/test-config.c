/* Unit tests: the config file (src/daemon/config.c), for what the fuzzer
 * (tests/fuzz/fuzz-config.c) found. */
#include <criterion/criterion.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cor/cor.h"
#include "daemon/daemon.h"

/* A realloc that always moves the block, as ASan's does (glibc's often
 * grows in place, which hid the bug below): it replaces libc's for the
 * whole test program. */
void *
realloc (void *old, size_t n)
{
  void *p = malloc (n ? n : 1);
  size_t have = old ? malloc_usable_size (old) : 0;

  if (!p)
    return NULL;
  if (old) {
    memcpy (p, old, have < n ? have : n);
    memset (old, 0xdd, have);   /* what a reader of the old block then sees */
    free (old);
  }
  return p;
}

static char path[] = "/tmp/corfs-unit-config.XXXXXX";

static int
load (const char *text, struct mount_opts *o)
{
  int fd = mkstemp (path);
  int r;

  cr_assert_geq (fd, 0);
  cr_assert_eq (write (fd, text, strlen (text)), (ssize_t) strlen (text));
  close (fd);
  memset (o, 0, sizeof *o);
  r = config_load (path, o);
  unlink (path);
  strcpy (path, "/tmp/corfs-unit-config.XXXXXX");
  return r;
}

/* A "header" line without a colon is refused and leaves the disk's list
 * of headers as it was: the array grown for it was once dropped while
 * the disk kept the old one, already freed (a double free at exit; a
 * leak when it was the first header). */
Test (config, refused_header_keeps_the_list)
{
  struct mount_opts o;

  cr_assert_eq (load ("[disk a]\nheader = X-A: 1\nheader = X-B: 2\nheader = X-C: 3\n"
                      "header = nocolon\nurl = file:///nonexistent/some/longer/path.img\n", &o), -1);
  cr_assert_eq (o.nr_disks, 1);
  cr_assert_eq (o.disks[0].nr_headers, 3);
  cr_assert_str_eq (o.disks[0].headers[0], "X-A: 1");
  cr_assert_str_eq (o.disks[0].headers[2], "X-C: 3");
  cr_assert_null (o.disks[0].headers[3]);
  mount_opts_free (&o);

  cr_assert_eq (load ("[disk a]\nheader = nocolon\n", &o), -1);
  cr_assert_eq (o.disks[0].nr_headers, 0);
  cr_assert_null (o.disks[0].headers);
  mount_opts_free (&o);
}

/* Run load with stderr in a file; the printed error (or "") in err. */
static int
load_err (const char *text, struct mount_opts *o, char *err, size_t len)
{
  char epath[] = "/tmp/corfs-unit-config-err.XXXXXX";
  int fd = mkstemp (epath), saved = dup (2), r;
  ssize_t n;

  cr_assert (fd >= 0 && saved >= 0);
  fflush (stderr);
  dup2 (fd, 2);
  r = load (text, o);
  fflush (stderr);
  dup2 (saved, 2);
  close (saved);
  n = pread (fd, err, len - 1, 0);
  err[n > 0 ? n : 0] = '\0';
  close (fd);
  unlink (epath);
  return r;
}

/* Every key of both sections is accepted and sets its own field (the
 * table of keys lists each one once, with the right field). */
Test (config, every_key_sets_its_field)
{
  struct mount_opts o;
  char url_file[] = "/tmp/corfs-unit-config-url.XXXXXX";
  int fd = mkstemp (url_file);
  char text[2048];

  cr_assert_geq (fd, 0);
  cr_assert_eq (write (fd, "nbd://h/e\n", 10), 10);
  close (fd);
  snprintf (text, sizeof text,
            "[corfs]\nhold = 30\nblock-size = 128K\nconnect-timeout = 7\nreadahead = 1M\n"
            "parent-owned = true\nstream = paused\nrate = 5M\n"
            "[disk a]\nurl = file:///a.img\nblock-size = 8K\nparent-owned = yes\n"
            "write-mode = mirror\nstream = off\nrate = 1K\nrelease-parent = false\n"
            "hint-file = /h\ncredentials-file = /c\ntoken-file = /t\nca-file = /ca\n"
            "client-cert = /cc\nclient-key = /ck\ns3-endpoint = http://e\n"
            "s3-region = r\nheader = X-A: 1\ninsecure = true\ns3-path-style = false\n"
            "accept-changed-parent = true\nincoming = true\n"
            "[disk b]\nurl-file = %s\nwrite-mode = writeback\n", url_file);
  cr_assert_eq (load (text, &o), 0);
  unlink (url_file);
  cr_assert_eq (o.hold_s, 30);
  cr_assert (o.hold_given);
  cr_assert_eq (o.block_size, 128 * 1024);
  cr_assert_eq (o.connect_timeout_s, 7);
  cr_assert_eq (o.readahead, 1 << 20);
  cr_assert (o.parent_owned);
  cr_assert_eq (o.stream, COR_STREAM_PAUSED);
  cr_assert_eq (o.rate, 5 << 20);
  cr_assert_eq (o.nr_disks, 2);
  struct disk_opts *a = &o.disks[0], *b = &o.disks[1];
  cr_assert_str_eq (a->name, "a");
  cr_assert_str_eq (a->url, "file:///a.img");
  cr_assert_eq (a->block_size, 8192);
  cr_assert (a->parent_owned);
  cr_assert_eq (a->write_mode, 1);
  cr_assert_eq (a->stream, COR_STREAM_OFF);
  cr_assert_eq (a->rate, 1024);
  cr_assert (a->have_rate);
  cr_assert_eq (a->release_parent, 0);
  cr_assert_str_eq (a->hint_file, "/h");
  cr_assert_str_eq (a->credentials_file, "/c");
  cr_assert_str_eq (a->token_file, "/t");
  cr_assert_str_eq (a->ca_file, "/ca");
  cr_assert_str_eq (a->client_cert, "/cc");
  cr_assert_str_eq (a->client_key, "/ck");
  cr_assert_str_eq (a->s3_endpoint, "http://e");
  cr_assert_str_eq (a->s3_region, "r");
  cr_assert_eq (a->nr_headers, 1);
  cr_assert_str_eq (a->headers[0], "X-A: 1");
  cr_assert (a->insecure);
  cr_assert (a->s3_virtual_host);
  cr_assert (a->accept_changed_parent);
  cr_assert (a->incoming);
  cr_assert_str_eq (b->name, "b");
  cr_assert_str_eq (b->url, "nbd://h/e");   /* read_small_file drops the newline */
  cr_assert_eq (b->write_mode, 0);
  cr_assert_eq (b->stream, -1);
  cr_assert_eq (b->release_parent, -1);
  cr_assert_not (b->have_rate);
  mount_opts_free (&o);
}

/* Daemon-wide settings given on the command line (o->cli_set) keep
 * their value; parent-owned is added; rate has no command-line form. */
Test (config, command_line_wins)
{
  struct mount_opts o;
  int fd = mkstemp (path);

  cr_assert_geq (fd, 0);
  static const char text[] = "[corfs]\nhold = 30\nblock-size = 128K\nconnect-timeout = 7\n"
    "readahead = 1M\nstream = off\nrate = 5M\nparent-owned = false\n";
  cr_assert_eq (write (fd, text, strlen (text)), (ssize_t) strlen (text));
  close (fd);
  memset (&o, 0, sizeof o);
  o.hold_s = 11; o.block_size = 4096; o.connect_timeout_s = 3; o.readahead = 0;
  o.stream = COR_STREAM_PAUSED; o.parent_owned = true;
  o.cli_set = CLI_HOLD | CLI_BLOCK_SIZE | CLI_CONNECT_TIMEOUT | CLI_READAHEAD | CLI_STREAM;
  cr_assert_eq (config_load (path, &o), 0);
  unlink (path);
  strcpy (path, "/tmp/corfs-unit-config.XXXXXX");
  cr_assert_eq (o.hold_s, 11);
  cr_assert (o.hold_given);
  cr_assert_eq (o.block_size, 4096);
  cr_assert_eq (o.connect_timeout_s, 3);
  cr_assert_eq (o.readahead, 0);
  cr_assert_eq (o.stream, COR_STREAM_PAUSED);
  cr_assert_eq (o.rate, 5 << 20);
  cr_assert (o.parent_owned);
  mount_opts_free (&o);
}

/* Each refusal names the file's line and says why; with several bad
 * lines, the first one's reason and number. */
Test (config, refusals_name_the_line)
{
  static const struct { const char *text, *err; } cases[] = {
    { "[corfs]\nfoo = 1\n", "line 2: unknown setting foo in [corfs]" },
    { "[disk a]\nurl = file:///x\nfoo = 1\n", "line 3: unknown setting foo in [disk a]" },
    { "[other]\nx = 1\n", "line 2: unknown section [other] (expected [corfs], [disk NAME] or [source NAME ID])" },
    { "[disk a/b]\nurl = file:///x\n", "line 2: [disk a/b]: a disk name is [A-Za-z0-9._-]+" },
    { "[corfs]\nparent-owned = maybe\n", "line 2: parent-owned: expected true or false" },
    { "[disk a]\ninsecure = 2\n", "line 2: insecure: expected true or false" },
    { "[disk a]\nrelease-parent = x\n", "line 2: release-parent: expected true or false" },
    { "[disk a]\nwrite-mode = fast\n", "line 2: write-mode = fast: expected writeback or mirror" },
    { "[corfs]\nstream = x\n", "line 2: stream = x: expected on, off or paused" },
    { "[disk a]\nrate = fast\n", "line 2: rate: bad rate fast (bytes/s, K/M/G suffixes)" },
    { "[corfs]\nblock-size = big\n", "line 2: block-size: bad size big" },
    { "[corfs]\nreadahead = 2G\n", "line 2: readahead: bad size 2G" },
    { "[corfs]\nhold = 0\n", "line 2: hold 0: expected a whole number of seconds from 1 to 3600" },
    { "[disk a]\nurl-file = /nonexistent/corfs-url\n",
      "line 2: url-file /nonexistent/corfs-url: No such file or directory" },
    { "[corfs]\nfoo = 1\nbar = 2\n[x]\n", "line 2: unknown setting foo in [corfs]" },
  };
  struct mount_opts o;
  char err[1024];

  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    cr_expect_eq (load_err (cases[i].text, &o, err, sizeof err), -1, "%s", cases[i].text);
    cr_expect (strstr (err, cases[i].err), "%s: got '%s'", cases[i].text, err);
    mount_opts_free (&o);
  }
  /* A disk section is added at its first line, whatever the key. */
  cr_assert_eq (load_err ("[disk a]\nfoo = 1\n", &o, err, sizeof err), -1);
  cr_assert_eq (o.nr_disks, 1);
  cr_assert_str_eq (o.disks[0].name, "a");
  mount_opts_free (&o);
}
