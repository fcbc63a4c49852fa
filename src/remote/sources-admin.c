/* corfs: a source set's sources added and removed at run time (corfs
 * sources), and their states for status (see sources.c for the set).
 *
 * Notes on the thread model: any thread (the ctl thread for status, a
 * ctl job thread for add and remove), beside the set's readers and its
 * prober.  set->lock as in sources.c; an add holds set->fp_lock across
 * opening and checking the new source (one add at a time), in a slot
 * past set->n that no reader sees until set->n grows, under set->lock,
 * once the source matched.  A removed source keeps its slot (a request
 * may still be using it) until the set is closed.  Lock order as in
 * sources.c: fp_lock -> src->check -> set->lock.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"
#include "remote/remote-internal.h"
#include "remote/sources-internal.h"

/* The slot of the i-th source not removed, or NULL.  Under set->lock. */
static struct src *
visible (struct rsources *set, size_t i)
{
  for (size_t k = 0; k < set->n; k++)
    if (set->v[k].state != SOURCES_REMOVED && i-- == 0)
      return &set->v[k];
  return NULL;
}

size_t
rsources_count (void *hv)
{
  struct rsources *set = hv;
  size_t n = 0;

  pthread_mutex_lock (&set->lock);
  for (size_t k = 0; k < set->n; k++)
    n += set->v[k].state != SOURCES_REMOVED;
  pthread_mutex_unlock (&set->lock);
  return n;
}

void
rsources_info (void *hv, size_t i, struct remote_source_info *si)
{
  struct rsources *set = hv;
  struct src *s;

  memset (si, 0, sizeof *si);
  si->url = si->backend = si->state = "";
  pthread_mutex_lock (&set->lock);
  if ((s = visible (set, i))) {
    si->url = remote_url (s->r);
    si->backend = remote_backend (s->r);
    si->state = sources_state_name (s->state);
    si->reads = s->reads;
    si->bytes = s->bytes;
    si->errors = s->errors;
    si->latency_us = s->latency_ns / 1000;
    snprintf (si->error, sizeof si->error, "%s", s->why);
  }
  pthread_mutex_unlock (&set->lock);
  /* The source's own lock, never under set->lock; its slot outlives it. */
  if (s)
    remote_identity (s->r, si->identity, sizeof si->identity);
}

/* ---- sources added and removed at run time ---- */

/* Is url (redacted) one of the sources not removed?  Under set->lock. */
static struct src *
find_url (struct rsources *set, const char *url)
{
  for (size_t k = 0; k < set->n; k++)
    if (set->v[k].state != SOURCES_REMOVED && !strcmp (remote_url (set->v[k].r), url))
      return &set->v[k];
  return NULL;
}

int
rsources_add (void *hv, const struct remote_config *src, uint64_t deadline_ns, char *why,
              size_t len)
{
  struct rsources *set = hv;
  struct remote_config c = *src;
  char *url = url_redact (src->url);
  struct src *s;
  int err = 0, ret = -1;

  c.disk = set->disk;
  c.writable = false;
  c.pinned_identity = NULL;
  c.sources = NULL;
  c.nr_sources = 0;
  c.connect_timeout_ns = set->connect_timeout_ns;
  c.request_timeout_ns = set->request_timeout_ns;
  if (!url) {
    snprintf (why, len, "out of memory");
    return -1;
  }
  /* One add at a time (fp_lock): the slot is filled outside set->lock. */
  pthread_mutex_lock (&set->fp_lock);
  pthread_mutex_lock (&set->lock);
  if (find_url (set, url))
    snprintf (why, len, "%s is a source already", url);
  else if (set->n == SOURCES_CAP)
    snprintf (why, len, "no room for more sources (%d added in all)", SOURCES_CAP);
  else if (!set->have_fp)
    snprintf (why, len, "the image's fingerprint is not taken yet (no source answered)");
  else
    ret = 0;
  pthread_mutex_unlock (&set->lock);
  if (ret == 0) {
    s = &set->v[set->n];        /* not yet visible to anyone */
    memset (s, 0, sizeof *s);
    pthread_mutex_init (&s->check, NULL);
    ret = remote_open (&c, &s->r);
    if (ret == -1)
      snprintf (why, len, "%s: %s", url, strerror (errno));
    else {
      bool stopped;
      remote_set_single_attempt (s->r);
      /* An unmount (rsources_cancel) cancels the check, not only the
       * sources readers see. */
      pthread_mutex_lock (&set->lock);
      stopped = set->stop;
      set->adding = s;
      pthread_mutex_unlock (&set->lock);
      ret = stopped ? -1 : sources_verify (set, s, deadline_ns);
      pthread_mutex_lock (&set->lock);
      set->adding = NULL;
      for (int i = 0; i < 1000 && set->cancelling; i++)  /* a cancel's own time */
        pthread_cond_wait (&set->wake, &set->lock);
      pthread_mutex_unlock (&set->lock);
      if (ret == -1)
        snprintf (why, len, "%s: %s", url, stopped ? "the disk is being unmounted"
                  : *s->why ? s->why : "does not answer");
    }
    if (ret == -1) {
      remote_close (s->r);
      pthread_mutex_destroy (&s->check);
      memset (s, 0, sizeof *s);
    }
    else {
      pthread_mutex_lock (&set->lock);
      __atomic_store_n (&set->n, set->n + 1, __ATOMIC_RELEASE);
      pthread_mutex_unlock (&set->lock);
      log_info ("remote: disk %s: source %s added (it matches the image)", set->disk, url);
      sources_notify (set, s, "source-added", "");
    }
  }
  pthread_mutex_unlock (&set->fp_lock);
  (void) err;
  free (url);
  return ret;
}

int
rsources_remove (void *hv, const char *url, char *why, size_t len)
{
  struct rsources *set = hv;
  struct src *s;
  size_t left = 0;

  pthread_mutex_lock (&set->lock);
  s = find_url (set, url);
  for (size_t k = 0; k < set->n; k++)
    left += set->v[k].state != SOURCES_REMOVED;
  if (!s)
    snprintf (why, len, "%s is not a source of this disk", url);
  else if (left == 1)
    snprintf (why, len, "%s is the last source: add another first", url);
  else {
    s->state = SOURCES_REMOVED;
    s->verified = false;
  }
  pthread_mutex_unlock (&set->lock);
  if (!s || left == 1)
    return -1;
  /* Its requests in flight finish (or time out); no new one starts. */
  remote_release (s->r);
  log_info ("remote: disk %s: source %s removed", set->disk, url);
  sources_notify (set, s, "source-removed", "");
  return 0;
}

