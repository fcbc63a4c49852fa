/* Unit tests: the config file (src/daemon/config.c), for what the fuzzer
 * (tests/fuzz/fuzz-config.c) found. */
#include <criterion/criterion.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
