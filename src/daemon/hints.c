/* corfs: what the streamer fetches first.  A disk's hint-file (config
 * file) names ranges by hand; otherwise a new overlay replays the trace
 * of the first cold start of the same parent image (the engine writes it
 * to trace_path_for's path).  Main thread only. */
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "common/log.h"
#include "common/util.h"
#include "cor/cor.h"
#include "daemon/daemon-internal.h"

/* Read a ranges file: one "OFFSET LENGTH" pair (bytes, K/M/G suffixes
 * allowed) per line; '#' starts a comment.  0 or -1 (logged). */
static int
read_ranges (const char *path, struct cor_range **rv, size_t *nr)
{
  FILE *f = fopen (path, "r");
  char line[256];
  int lineno = 0;

  *rv = NULL;
  *nr = 0;
  if (!f) {
    log_error ("daemon: ranges file %s: %m", path);
    return -1;
  }
  while (fgets (line, sizeof line, f)) {
    char a[64], b[64];
    uint64_t off, len;
    lineno++;
    line[strcspn (line, "#\n")] = '\0';
    if (sscanf (line, "%63s %63s", a, b) != 2) {
      if (sscanf (line, "%63s", a) == 1)
        goto bad;
      continue;
    }
    if (parse_size (a, &off) == -1 || parse_size (b, &len) == -1)
      goto bad;
    struct cor_range *nv = realloc (*rv, (*nr + 1) * sizeof *nv);
    if (!nv)
      goto bad;
    *rv = nv;
    nv[*nr].offset = off;
    nv[(*nr)++].length = len;
  }
  fclose (f);
  return 0;
 bad:
  log_error ("daemon: ranges file %s, line %d: expected OFFSET LENGTH", path, lineno);
  fclose (f);
  free (*rv);
  *rv = NULL;
  *nr = 0;
  return -1;
}

/* STATE/traces/HASH.trace for a parent identity: the fault order of the
 * first cold start of that image, replayed by the streamer next time. */
static void
trace_path_for (const char *state, const char *identity, char *buf, size_t len)
{
  uint64_t h = 0xcbf29ce484222325ULL;
  char dir[PATH_MAX];

  for (const char *p = identity; *p; p++) {
    h ^= (unsigned char) *p;
    h *= 0x100000001b3ULL;
  }
  snprintf (dir, sizeof dir, "%s/traces", state);
  mkdir (dir, 0700);
  snprintf (buf, len, "%s/%016" PRIx64 ".trace", dir, h);
}

/* (daemon-internal.h) */
int
disk_hints (const char *state, const char *name, const char *hint_file,
            const char *identity, bool fresh, char *trace, size_t len,
            struct cor_range **hints, size_t *nr)
{
  *hints = NULL;
  *nr = 0;
  trace_path_for (state, identity, trace, len);
  if (hint_file)
    return read_ranges (hint_file, hints, nr);
  if (access (trace, R_OK) == 0 && fresh && read_ranges (trace, hints, nr) == 0)
    log_info ("daemon: disk %s: streaming the %zu ranges of %s first", name, *nr, trace);
  return 0;
}
