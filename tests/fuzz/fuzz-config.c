/* libFuzzer harness: the config file (src/daemon/config.c through inih),
 * as `corfs mount --config FILE` reads it.  The input is the file's text,
 * put in a memfd and read through /proc/self/fd.  Checked: config_load
 * returns 0 or -1; on 0 every disk has a valid name and every header a
 * "Name: value" form; then everything is freed (leaks are reported). */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/util.h"
#include "daemon/daemon.h"

#define CHECK(cond) \
  do { if (!(cond)) { fprintf (stderr, "fuzz-config: check failed: %s\n", #cond); \
                      abort (); } } while (0)

static int fd = -1;
static char path[64];

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  /* A url-file naming stdin must not wait for input. */
  int null = open ("/dev/null", O_RDONLY);
  if (null >= 0) {
    dup2 (null, 0);
    close (null);
  }
  fd = memfd_create ("corfs-fuzz-config", MFD_CLOEXEC);
  if (fd == -1) {
    perror ("fuzz-config: memfd_create");
    exit (1);
  }
  snprintf (path, sizeof path, "/proc/self/fd/%d", fd);
  return 0;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct mount_opts o;
  int r;

  if (ftruncate (fd, 0) == -1 || (size && pwrite (fd, data, size, 0) != (ssize_t) size))
    return 0;
  memset (&o, 0, sizeof o);
  if (size && (data[0] & 1))
    o.cli_set = CLI_HOLD | CLI_BLOCK_SIZE;      /* some settings from the command line */
  r = config_load (path, &o);
  CHECK (r == 0 || r == -1);
  if (r == 0)
    for (size_t i = 0; i < o.nr_disks; i++) {
      CHECK (o.disks[i].name && name_is_valid (o.disks[i].name));
      for (size_t k = 0; k < o.disks[i].nr_headers; k++)
        CHECK (o.disks[i].headers[k] && strchr (o.disks[i].headers[k], ':'));
      CHECK (!o.disks[i].headers || !o.disks[i].headers[o.disks[i].nr_headers]);
    }
  mount_opts_free (&o);
  return 0;
}
