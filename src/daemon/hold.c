/* corfs: the hold (how long a guest request waits for an unreachable
 * parent) against the kernel's FUSE request timeout.  A kernel that
 * times a request out aborts the whole mount, so the hold must end well
 * before it: mount_parse refuses a hold given that does not fit, and the
 * daemon lowers the default (effective_hold_s).  Main thread only. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/log.h"
#include "common/util.h"
#include "daemon/daemon-internal.h"

const char *fuse_sysctl_dir = "/proc/sys/fs/fuse";

uint64_t
fuse_kernel_timeout_s (const char **which)
{
  static const char *names[] = { "default_request_timeout", "max_request_timeout", NULL };
  static const char *sysctls[] = { "fs.fuse.default_request_timeout",
                                   "fs.fuse.max_request_timeout" };
  uint64_t min = 0;

  /* The kernel gives a mount the default, capped by the maximum: the
   * smaller one that is set. */
  *which = NULL;
  for (size_t i = 0; names[i]; i++) {
    char path[4096];
    snprintf (path, sizeof path, "%s/%s", fuse_sysctl_dir, names[i]);
    char *s = read_small_file (path);
    uint64_t t = s ? strtoull (s, NULL, 10) : 0;
    free (s);
    if (t > 0 && (min == 0 || t < min)) {
      min = t;
      *which = sysctls[i];
    }
  }
  return min;
}

uint64_t
hold_max_for_kernel (uint64_t kernel_s)
{
  return kernel_s >= 2 ? kernel_s / 2 : 1;
}

int
hold_fit (uint64_t hold_s, bool given, uint64_t kernel_s, const char *which,
          uint64_t *effective, char *err, size_t len)
{
  uint64_t max = hold_max_for_kernel (kernel_s);

  *effective = hold_s;
  if (kernel_s == 0 || hold_s <= max)
    return 0;
  if (given) {
    snprintf (err, len, "hold %" PRIu64 " s: the kernel aborts a FUSE mount whose "
              "request waits %" PRIu64 " s (%s), and a hold may be at most half of "
              "that (a request can also wait in the kernel's queue): give a hold of at "
              "most %" PRIu64 " s", hold_s, kernel_s,
              which ? which : "fs.fuse request timeout", max);
    return -1;
  }
  *effective = max;
  return 0;
}

/* The hold to use: the default lowered below the kernel's FUSE request
 * timeout if one is set (a hold that was given and does not fit was
 * refused by mount_parse; the kernel's setting may have changed since:
 * lowered too, then). */
uint64_t
effective_hold_s (const struct mount_opts *o)
{
  const char *which;
  uint64_t kernel_s = fuse_kernel_timeout_s (&which), h;
  char why[512];

  if (hold_fit (o->hold_s, false, kernel_s, which, &h, why, sizeof why) == 0 &&
      h != o->hold_s)
    log_warn ("daemon: hold lowered from %" PRIu64 " to %" PRIu64 " s: %s is %" PRIu64 " s",
              o->hold_s, h, which, kernel_s);
  return h;
}
