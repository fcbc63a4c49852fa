/* corfs: a disk's sources changed at run time (corfs sources --add,
 * --remove): the source set (src/remote/sources.c) checks and changes
 * its list, and the disk's record follows it (url = the first source,
 * sources = the others, credentials removed), so that a remount without
 * --disk finds them.
 *
 * Notes on the thread model: a ctl job thread (one long command per disk
 * at a time).  The set's own locks order its list; the record is written
 * through cor_update_record (d->owner_lock, then the meta lock), never
 * with a remote lock held.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"
#include "cor/cor-internal.h"
#include "remote/remote.h"

static int record (struct cor_disk *d, char *why, size_t len);

static void
on_source (void *opaque, const char *event, const char *url, const char *why)
{
  char msg[1024];

  if (!strcmp (event, "source-pinned")) {
    /* The set's prober, no lock held: a source's own pin, to record. */
    if (record (opaque, msg, sizeof msg) == -1)
      log_warn ("cor: disk %s: a source's pin: %s", ((struct cor_disk *) opaque)->name, msg);
    return;
  }

  snprintf (msg, sizeof msg, "%s%s%s", url, why && *why ? ": " : "", why ? why : "");
  cor_emit (opaque, event, 0, 0, msg);
}

void
cor_sources_watch (struct cor_disk *d)
{
  remote_set_source_notify (d->remote, on_source, d);
}

/* cor_update_record's change: the set's list as it is now. */
static int
set_sources (struct meta_record *rec, void *arg, char *errbuf, size_t len)
{
  struct remote *r = arg;
  size_t n = remote_nr_sources (r), used = 0, iused = 0;
  char list[META_SOURCES_MAX] = "", ids[META_SOURCE_IDS_MAX] = "";

  for (size_t i = 0; i < n; i++) {
    struct remote_source_info si;
    remote_source_info (r, i, &si);
    int w = snprintf (ids + iused, sizeof ids - iused, "%s%s", i ? "\t" : "", si.identity);
    if (w < 0 || (size_t) w >= sizeof ids - iused) {
      snprintf (errbuf, len, "the sources' identities are too long to record");
      return -1;
    }
    iused += w;
    if (i == 0) {
      snprintf (rec->url, sizeof rec->url, "%s", si.url);
      continue;
    }
    int k = snprintf (list + used, sizeof list - used, "%s%s", used ? " " : "", si.url);
    if (k < 0 || (size_t) k >= sizeof list - used) {
      snprintf (errbuf, len, "the sources' URLs are too long to record");
      return -1;
    }
    used += k;
  }
  snprintf (rec->sources, sizeof rec->sources, "%s", list);
  snprintf (rec->source_ids, sizeof rec->source_ids, "%s", ids);
  return 0;
}

static int
record (struct cor_disk *d, char *why, size_t len)
{
  char err[256] = "";

  if (cor_update_record (d, set_sources, d->remote, err, sizeof err) == 0)
    return 0;
  snprintf (why, len, "the change is in effect but not recorded: %s", *err ? err : "error");
  return -1;
}

int
cor_disk_sources_add (struct cor_disk *d, const struct remote_config *src, char *why,
                      size_t len)
{
  if (remote_sources_add (d->remote, src, now_ns () + d->hold_ns, why, len) == -1)
    return -1;
  return record (d, why, len);
}

int
cor_disk_sources_remove (struct cor_disk *d, const char *url, char *why, size_t len)
{
  /* Named as status shows it (credentials removed), or as given. */
  char *u = url_redact (url);
  int r = u ? remote_sources_remove (d->remote, u, why, len) : -1;

  if (!u)
    snprintf (why, len, "out of memory");
  free (u);
  if (r == -1)
    return -1;
  return record (d, why, len);
}
