/* corfs: a disk's sources at attach: the list of remotes of one image,
 * in order of preference, from the options (--disk NAME=URL given again,
 * [source NAME ID] sections: each source with its own settings) or, for
 * a disk recorded with several and not given again, from its record
 * (URLs only, as for a single parent).  A disk uses a source set (see
 * src/remote/sources.c) when it has several sources, or when its record
 * pins a set's identity (so a later mount with one source still checks
 * that source's fingerprint).
 *
 * Main thread only, before the engine's threads start (like attach.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"
#include "daemon/daemon-internal.h"
#include "meta/meta.h"
#include "remote/remote.h"

/* Source k of the options: its URL and its own settings, over base's
 * timeouts (never the disk's settings: they belong to another host). */
static void
from_opts (struct remote_config *c, const struct remote_config *base,
           const struct disk_opts *s)
{
  *c = (struct remote_config) {
    .url = s->url, .disk = base->disk,
    .connect_timeout_ns = base->connect_timeout_ns,
    .request_timeout_ns = base->request_timeout_ns,
    .connections = base->connections,
    .credentials_file = s->credentials_file, .token_file = s->token_file,
    .headers = (const char *const *) s->headers,
    .ca_file = s->ca_file, .client_cert = s->client_cert, .client_key = s->client_key,
    .insecure = s->insecure, .s3_endpoint = s->s3_endpoint, .s3_region = s->s3_region,
    .s3_virtual_host = s->s3_virtual_host,
  };
}

/* The recorded sources after the first (space-separated), for a disk
 * not given this time.  0 or -1 (logged). */
static int
from_record (struct disk_sources *ds, const struct remote_config *base, const char *list)
{
  char *copy = strdup (list), *tok, *save = NULL;

  if (!copy)
    return -1;
  for (tok = strtok_r (copy, " ", &save); tok && ds->n < MAX_SOURCES;
       tok = strtok_r (NULL, " ", &save)) {
    struct disk_opts s = { .url = tok };
    if (!(ds->owned[ds->n] = strdup (tok))) {
      free (copy);
      return -1;
    }
    s.url = ds->owned[ds->n];
    from_opts (&ds->cfg[ds->n++], base, &s);
  }
  free (copy);
  return 0;
}

/* The redacted URLs of sources 1.. as the record lists them.  0 or -1. */
static int
make_list (struct disk_sources *ds, const char *name)
{
  size_t len = 0;

  ds->list[0] = '\0';
  for (size_t k = 1; k < ds->n; k++) {
    char *u = url_redact (ds->cfg[k].url);
    int n;
    if (!u)
      return -1;
    n = snprintf (ds->list + len, sizeof ds->list - len, "%s%s", k > 1 ? " " : "", u);
    free (u);
    if (n < 0 || (size_t) n >= sizeof ds->list - len) {
      log_error ("daemon: disk %s: the sources' URLs are too long to record", name);
      return -1;
    }
    len += n;
  }
  return 0;
}

/* Entry k of the recorded pins (tab-separated) into buf, "" if none. */
static void
recorded_id (const char *ids, size_t k, char *buf, size_t len)
{
  const char *p = ids;

  for (; k > 0 && p; k--) {
    p = strchr (p, '\t');
    p = p ? p + 1 : NULL;
  }
  buf[0] = '\0';
  if (p)
    snprintf (buf, len, "%.*s", (int) strcspn (p, "\t"), p);
}

/* Each source's own pin, from the record (matched by its URL without
 * credentials, so an order given anew keeps them): a source whose image
 * changed since is refused at its first check, never read. */
static void
pin_sources (struct disk_sources *ds, const struct meta_record *rec)
{
  for (size_t k = 0; k < ds->n; k++) {
    char *u = url_redact (ds->cfg[k].url), *copy, *tok, *save = NULL;
    size_t idx = 0;
    ds->cfg[k].pinned_identity = NULL;
    if (!u)
      continue;
    if (!strcmp (u, rec->url))
      recorded_id (rec->source_ids, 0, ds->ids[k], sizeof ds->ids[k]);
    else if ((copy = strdup (rec->sources))) {
      for (tok = strtok_r (copy, " ", &save), idx = 1; tok;
           tok = strtok_r (NULL, " ", &save), idx++)
        if (!strcmp (tok, u)) {
          recorded_id (rec->source_ids, idx, ds->ids[k], sizeof ds->ids[k]);
          break;
        }
      free (copy);
    }
    free (u);
    if (ds->ids[k][0])
      ds->cfg[k].pinned_identity = ds->ids[k];
  }
}

int
disk_sources_ids (struct remote *r, char *buf, size_t len)
{
  size_t used = 0;

  buf[0] = '\0';
  for (size_t i = 0; i < remote_nr_sources (r); i++) {
    struct remote_source_info si;
    int n;
    remote_source_info (r, i, &si);
    n = snprintf (buf + used, len - used, "%s%s", i ? "\t" : "", si.identity);
    if (n < 0 || (size_t) n >= len - used)
      return -1;
    used += n;
  }
  return 0;
}

int
disk_sources_build (const char *name, const struct disk_opts *dopt,
                    const struct meta_record *rec, struct remote_config *base,
                    uint64_t source_timeout_ms, struct disk_sources *ds)
{
  bool set_pinned = rec && remote_identity_is_set (rec->identity);

  memset (ds, 0, sizeof *ds);
  ds->cfg[ds->n++] = *base;
  ds->cfg[0].pinned_identity = NULL;    /* the set's (see disk_sources_pin) */
  if (dopt) {
    for (size_t k = 0; k < dopt->nr_sources && ds->n < MAX_SOURCES; k++)
      from_opts (&ds->cfg[ds->n++], base, &dopt->sources[k]);
  }
  else if (rec && rec->sources[0] && from_record (ds, base, rec->sources) == -1) {
    log_error ("daemon: disk %s: out of memory", name);
    return -1;
  }
  if (ds->n < 2 && !set_pinned) {
    ds->n = 0;                  /* one parent, as ever */
    return 0;
  }
  if (rec && (rec->parent_owned || rec->mirror || rec->state == META_INCOMING ||
              rec->state == META_ACTIVATING || rec->merging)) {
    log_error ("daemon: disk %s: several sources are refused for a disk that owns or "
               "writes its parent, or is incoming (recorded %s%s)", name,
               meta_state_name (rec->state), rec->parent_owned ? ", parent-owned" : "");
    return -1;
  }
  if (make_list (ds, name) == -1)
    return -1;
  if (rec && rec->source_ids[0] && !rec->merging)
    pin_sources (ds, rec);
  base->sources = ds->cfg;
  base->nr_sources = ds->n;
  base->source_timeout_ns = source_timeout_ms * 1000000ULL;
  base->spread = dopt && dopt->spread;
  return 0;
}

void
disk_sources_pin (struct disk_sources *ds, const char *pinned)
{
  /* A disk recorded with one parent: its pin holds the first source to
   * the image, and the set's fingerprint is taken from it. */
  if (ds->n > 0 && pinned && !remote_identity_is_set (pinned) &&
      !(ds->cfg[0].pinned_identity && *ds->cfg[0].pinned_identity))
    ds->cfg[0].pinned_identity = pinned;
}

void
disk_sources_free (struct disk_sources *ds)
{
  for (size_t k = 0; k < MAX_SOURCES; k++)
    free (ds->owned[k]);
}
