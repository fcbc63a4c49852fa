/* corfs: a source set: one parent image reachable through several
 * sources (mirrors, protocols), as a remote of its own, so that the
 * engine, the streamer and readahead keep calling remote_* unchanged.
 *
 * The set is a backend (rsources_ops) whose state holds the sources,
 * each a remote of its own (its backend, pool, pin and settings: a
 * source's credentials, headers and TLS files are its own and never
 * reach another source's host), in order of preference.
 *
 * One image, checked on every source: a content fingerprint (sfp_hash:
 * the first and last 4 KiB block and FP_SAMPLES more at offsets drawn
 * from a seed chosen at random when the disk is first attached) is taken
 * from the first source that answers, and every source must have the
 * same size and fingerprint before it serves a byte; one that differs is
 * refused (state "mismatch", logged) and never read from.  The set's
 * identity, pinned and recorded like any parent's, is
 * "sources:size=N,seed=S,fp=F": a later mount checks every source
 * against it.  Each source keeps its own pin (ETag, file identity, NBD
 * sample hash), recorded with the disk once it is first checked (the
 * prober tells notify "source-pinned"; the daemon writes source_ids) and
 * given back at the next mount: a source whose pin breaks, while mounted
 * or between mounts, is refused too.
 *
 * Failover: a read tries the sources in order, each piece of at most
 * PIECE bytes bounded by the source timeout (so a large read that flows
 * is never cut: the deadline is per piece, i.e. "no progress for that
 * long"), and on failure or stall moves to the next source, within the
 * caller's deadline.  Sources are opened single-attempt (no retries of
 * their own): the set moves on instead, and the wrapper's retry loop
 * around the set retries the whole chain until the hold.  A stalled
 * request is abandoned by its own backend at the deadline, which closes
 * its connection from the thread that owns it (libnbd cannot cancel one
 * command).  A failed source is skipped by later requests while a
 * healthy one is left (if none is, they are tried again in order), and
 * the prober thread retries it with backoff; once it answers and matches
 * the fingerprint again, it is back in its place.
 *
 * The set is read-only: several sources are refused for disks that write
 * their parent (the daemon checks; open refuses a writable config).
 *
 * Notes on the thread model: any thread (fault path, streamer, readahead,
 * ctl status), plus the set's one prober thread, started at the first
 * failure and stopped by cancel or close.  set->lock protects the
 * sources' states and counters, the fingerprint and the prober's flags;
 * it is never held across a call to a source (which may block).  A
 * source's check lock is held across its verification (so concurrent
 * readers verify once; a reader waits for it no longer than its own
 * deadline), set->fp_lock across establishing the fingerprint.
 * Lock order: set->fp_lock -> src->check -> set->lock -> (a source
 * remote's own locks are taken only by calls made with set->lock not
 * held).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"
#include "remote/remote-internal.h"
#include "remote/sources-internal.h"

#define PIECE (1u << 20)
#define PROBE_MIN_NS (250 * 1000000ULL)
#define PROBE_MAX_NS (30 * NS_PER_SEC)
#define DEFAULT_SOURCE_TIMEOUT_NS (1500 * 1000000ULL)
#define DEFAULT_CONNECT_NS (10 * NS_PER_SEC)

/* ---- the fingerprint (pure: unit-tested) ---- */

static uint64_t
splitmix64 (uint64_t x)
{
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

void
sfp_sample (uint64_t seed, uint64_t size, unsigned i, uint64_t *offset, size_t *len)
{
  uint64_t nblocks = (size + SFP_BLOCK - 1) / SFP_BLOCK, b;

  if (i == 0)
    b = 0;
  else if (i == 1)
    b = nblocks - 1;
  else
    b = splitmix64 (seed ^ splitmix64 (i)) % nblocks;
  *offset = b * SFP_BLOCK;
  *len = size - *offset < SFP_BLOCK ? size - *offset : SFP_BLOCK;
}

/* FNV-1a: not for security, only to tell a different image (see
 * docs/control.md). */
uint64_t
sfp_mix (uint64_t h, const void *data, size_t len)
{
  const unsigned char *p = data;

  for (size_t i = 0; i < len; i++) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

uint64_t
sfp_start (uint64_t seed, uint64_t size)
{
  uint64_t h = 0xcbf29ce484222325ULL;

  h = sfp_mix (h, &seed, sizeof seed);
  return sfp_mix (h, &size, sizeof size);
}

int
sfp_format (char *id, size_t len, uint64_t size, uint64_t seed, uint64_t fp)
{
  return snprintf (id, len, "sources:size=%" PRIu64 ",seed=%016" PRIx64 ",fp=%016" PRIx64,
                   size, seed, fp);
}

int
sfp_parse (const char *id, uint64_t *size, uint64_t *seed, uint64_t *fp)
{
  return sscanf (id, "sources:size=%" SCNu64 ",seed=%" SCNx64 ",fp=%" SCNx64, size, seed,
                 fp) == 3 ? 0 : -1;
}

size_t
sources_pick_order (const enum sources_state *st, size_t n, size_t *order)
{
  size_t k = 0;

  /* Healthy and not yet checked ones first, in order of preference;
   * then the failed ones, in order, in case none of the first answers
   * (they may be back before the prober noticed); never a mismatch. */
  for (size_t i = 0; i < n; i++)
    if (st[i] == SOURCES_OK || st[i] == SOURCES_UNCHECKED)
      order[k++] = i;
  for (size_t i = 0; i < n; i++)
    if (st[i] == SOURCES_FAILED)
      order[k++] = i;
  return k;
}

void
sources_rotate (size_t *order, size_t healthy, unsigned turn)
{
  size_t tmp[SOURCES_CAP];

  if (healthy < 2)
    return;
  for (size_t i = 0; i < healthy; i++)
    tmp[i] = order[(i + turn) % healthy];
  memcpy (order, tmp, healthy * sizeof *order);
}

const char *
sources_state_name (enum sources_state s)
{
  switch (s) {
  case SOURCES_UNCHECKED: return "unchecked";
  case SOURCES_OK: return "ok";
  case SOURCES_FAILED: return "failed";
  case SOURCES_MISMATCH: return "mismatch";
  case SOURCES_REMOVED: return "removed";
  }
  return "?";
}

/* ---- one source ---- */

static size_t
nsrc (struct rsources *set)
{
  return __atomic_load_n (&set->n, __ATOMIC_ACQUIRE);
}

static uint64_t
piece_deadline (const struct rsources *set, uint64_t deadline_ns)
{
  uint64_t d = now_ns () + set->timeout_ns;
  return d < deadline_ns ? d : deadline_ns;
}

/* The deadline of a source's connect and identity question (a check's
 * first step): its connect timeout (an NBD connect is a handshake and
 * sample reads, an HTTP one a HEAD) plus one piece's, never the per-piece
 * no-progress timeout alone, so a slow but working source connects; and
 * never past deadline_ns. */
static uint64_t
connect_deadline (const struct rsources *set, uint64_t deadline_ns)
{
  uint64_t c = set->connect_timeout_ns ? set->connect_timeout_ns : DEFAULT_CONNECT_NS;
  uint64_t d = now_ns () + c + set->timeout_ns;
  return d < deadline_ns ? d : deadline_ns;
}

/* How long a check may take when another source could answer instead
 * (more): half of what is left, so one slow source never uses the whole
 * hold; it is marked failed if that is too short, and the prober checks
 * it again with the time a check needs (check_budget). */
static uint64_t
share_deadline (uint64_t deadline_ns, bool more)
{
  uint64_t now = now_ns ();

  return more && deadline_ns > now ? now + (deadline_ns - now) / 2 : deadline_ns;
}

/* What a whole check needs at most: the connect, then each sample within
 * the per-piece timeout. */
static uint64_t
check_budget (const struct rsources *set)
{
  uint64_t c = set->connect_timeout_ns ? set->connect_timeout_ns : DEFAULT_CONNECT_NS;
  return c + set->timeout_ns + SFP_SAMPLES * set->timeout_ns;
}

static void *prober_main (void *arg);
static void start_prober (struct rsources *set);

void
sources_notify (struct rsources *set, struct src *s, const char *event, const char *why)
{
  void (*fn) (void *, const char *, const char *, const char *) =
    __atomic_load_n (&set->notify, __ATOMIC_ACQUIRE);

  if (fn)
    fn (set->notify_opaque, event, remote_url (s->r), why);
}

void
rsources_set_notify (void *hv, void (*fn) (void *, const char *, const char *, const char *),
                     void *opaque)
{
  struct rsources *set = hv;

  /* The prober may be running: opaque first, then fn, which readers load
   * first. */
  set->notify_opaque = opaque;
  __atomic_store_n (&set->notify, fn, __ATOMIC_RELEASE);
  /* Sources pinned before (at attach) are told now. */
  pthread_mutex_lock (&set->lock);
  if (set->ids_dirty)
    start_prober (set);
  pthread_mutex_unlock (&set->lock);
}

/* Start the prober if it is not running.  Under set->lock. */
static void
start_prober (struct rsources *set)
{
  if (!set->prober_started && !set->stop &&
      pthread_create (&set->prober, NULL, prober_main, set) == 0)
    set->prober_started = true;
  pthread_cond_signal (&set->wake);
}

/* s matched: if its own pin is not recorded yet, have the prober tell
 * (notify "source-pinned", with no lock held: the record is written
 * then).  Under set->lock. */
static void
pinned_afresh (struct rsources *set, struct src *s)
{
  if (s->pin_recorded)
    return;
  s->pin_recorded = true;
  set->ids_dirty = true;
  start_prober (set);
}

/* Mark s failed (or refused: mismatch), with why, and have the prober
 * retry it (not a mismatch: that one is never read again). */
static void
mark (struct rsources *set, struct src *s, enum sources_state st, const char *why)
{
  bool news;

  pthread_mutex_lock (&set->lock);
  /* A refused or removed source stays so. */
  if (s->state == SOURCES_MISMATCH || s->state == SOURCES_REMOVED)
    st = s->state;
  news = s->state != st;
  s->state = st;
  s->verified = false;
  s->errors++;
  snprintf (s->why, sizeof s->why, "%s", why);
  if (st == SOURCES_FAILED && news) {
    s->backoff_ns = PROBE_MIN_NS;
    s->next_probe_ns = now_ns () + s->backoff_ns;
  }
  if (st == SOURCES_FAILED)
    start_prober (set);
  pthread_mutex_unlock (&set->lock);
  if (news)
    sources_notify (set, s, st == SOURCES_MISMATCH ? "source-mismatch" : "source-failed", why);
  if (news && st == SOURCES_MISMATCH)
    log_error ("remote: disk %s: source %s refused: %s; it is never read from",
               set->disk, remote_url (s->r), why);
  else if (news)
    log_warn ("remote: disk %s: source %s failed (%s); failing over to the next source",
              set->disk, remote_url (s->r), why);
}

/* The fingerprint of s with the set's seed: its size into *size, the
 * hash into *fp.  The connect bounded by connect_deadline, each sample by
 * the source timeout, all by deadline_ns.  0, or -1 with *err. */
static int
fingerprint (struct rsources *set, struct src *s, uint64_t seed, uint64_t *size,
             uint64_t *fp, uint64_t deadline_ns, int *err)
{
  unsigned char buf[SFP_BLOCK];
  int64_t sz = remote_get_size (s->r, connect_deadline (set, deadline_ns), err);
  uint64_t h;

  if (sz <= 0) {
    if (sz == 0)
      *err = EIO;
    return -1;
  }
  h = sfp_start (seed, sz);
  for (unsigned i = 0; i < SFP_SAMPLES; i++) {
    uint64_t off;
    size_t len;
    sfp_sample (seed, sz, i, &off, &len);
    if (remote_pread (s->r, buf, len, off, piece_deadline (set, deadline_ns), err) == -1)
      return -1;
    h = sfp_mix (h, buf, len);
  }
  *size = sz;
  *fp = h;
  return 0;
}

/* Check s against the set's size and fingerprint (which must be taken),
 * once per failure: OK, mismatch or failed.  0 if it may serve, else
 * -1. */
int
sources_verify (struct rsources *set, struct src *s, uint64_t deadline_ns)
{
  uint64_t size, fp;
  int err = 0, ret = -1;
  char why[256];
  struct timespec ts = { deadline_ns / NS_PER_SEC, deadline_ns % NS_PER_SEC };

  /* Another thread's check (the prober's may take long on a slow source):
   * wait for it no longer than the caller may wait. */
  if (pthread_mutex_clocklock (&s->check, CLOCK_MONOTONIC, &ts) != 0)
    return -1;
  pthread_mutex_lock (&set->lock);
  if (s->verified || s->state == SOURCES_MISMATCH || s->state == SOURCES_REMOVED) {
    ret = s->verified && s->state != SOURCES_REMOVED ? 0 : -1;
    pthread_mutex_unlock (&set->lock);
    goto out;
  }
  pthread_mutex_unlock (&set->lock);
  if (fingerprint (set, s, set->seed, &size, &fp, deadline_ns, &err) == -1) {
    snprintf (why, sizeof why, "%s", err == ESTALE ? "its own identity changed" : strerror (err));
    mark (set, s, err == ESTALE ? SOURCES_MISMATCH : SOURCES_FAILED, why);
  }
  else if (size != set->size || fp != set->fp) {
    snprintf (why, sizeof why, "a different image (size %" PRIu64 ", fingerprint %016" PRIx64
              "; expected size %" PRIu64 ", fingerprint %016" PRIx64 ")",
              size, fp, set->size, set->fp);
    mark (set, s, SOURCES_MISMATCH, why);
  }
  else {
    bool back;
    pthread_mutex_lock (&set->lock);
    back = s->state == SOURCES_FAILED;
    if (s->state != SOURCES_REMOVED) {
      s->state = SOURCES_OK;
      s->verified = true;
      pinned_afresh (set, s);
    }
    s->why[0] = '\0';
    pthread_mutex_unlock (&set->lock);
    if (back) {
      log_info ("remote: disk %s: source %s is back and matches", set->disk, remote_url (s->r));
      sources_notify (set, s, "source-back", "");
    }
    ret = 0;
  }
 out:
  pthread_mutex_unlock (&s->check);
  return ret;
}

/* Take the fingerprint, if not yet taken, from the first source that
 * answers, in order.  0, or -1 with *err. */
static int
establish (struct rsources *set, uint64_t deadline_ns, int *err)
{
  int ret = -1;

  pthread_mutex_lock (&set->fp_lock);
  if (set->have_fp)
    ret = 0;
  for (size_t i = 0; i < nsrc (set) && ret == -1 && now_ns () < deadline_ns; i++) {
    struct src *s = &set->v[i];
    uint64_t size, fp;
    if (i > 0 && set->first_only)
      break;
    if (s->state == SOURCES_MISMATCH || s->state == SOURCES_REMOVED)
      continue;
    bool more = !set->first_only && i + 1 < nsrc (set);
    if (fingerprint (set, s, set->seed, &size, &fp, share_deadline (deadline_ns, more),
                     err) == -1) {
      mark (set, s, *err == ESTALE ? SOURCES_MISMATCH : SOURCES_FAILED, strerror (*err));
      continue;
    }
    pthread_mutex_lock (&set->lock);
    set->size = size;
    set->fp = fp;
    set->have_fp = true;
    s->state = SOURCES_OK;
    s->verified = true;
    pinned_afresh (set, s);
    pthread_mutex_unlock (&set->lock);
    log_info ("remote: disk %s: fingerprint %016" PRIx64 " of %" PRIu64 " bytes taken from "
              "source %s", set->disk, fp, size, remote_url (s->r));
    ret = 0;
  }
  pthread_mutex_unlock (&set->fp_lock);
  if (ret == 0 && nsrc (set) > 1) {
    pthread_mutex_lock (&set->lock);
    start_prober (set);         /* to check the others */
    pthread_mutex_unlock (&set->lock);
  }
  if (ret == -1 && *err == 0)
    *err = ETIMEDOUT;
  return ret;
}

/* ---- the prober ---- */

/* The source to check first, or NULL: one not yet checked (once the
 * fingerprint is taken: so that status shows a differing source before
 * a request needs it, and a failover finds the next one checked), else
 * the failed one due first; *due_ns: when.  Under set->lock. */
static struct src *
next_due (struct rsources *set, uint64_t *due_ns)
{
  struct src *best = NULL;

  for (size_t i = 0; i < nsrc (set); i++) {
    struct src *s = &set->v[i];
    if (s->state == SOURCES_UNCHECKED && set->have_fp && !s->probed) {
      *due_ns = 0;
      return s;
    }
    if (s->state == SOURCES_FAILED && (!best || s->next_probe_ns < best->next_probe_ns))
      best = s;
  }
  if (best)
    *due_ns = best->next_probe_ns;
  return best;
}

static void *
prober_main (void *arg)
{
  struct rsources *set = arg;

  pthread_mutex_lock (&set->lock);
  while (!set->stop) {
    uint64_t due = 0, now = now_ns ();
    struct src *s;
    if (set->ids_dirty && __atomic_load_n (&set->notify, __ATOMIC_ACQUIRE)) {
      set->ids_dirty = false;
      pthread_mutex_unlock (&set->lock);
      sources_notify (set, &set->v[0], "source-pinned", "");
      pthread_mutex_lock (&set->lock);
      continue;
    }
    s = next_due (set, &due);
    if (!s) {
      pthread_cond_wait (&set->wake, &set->lock);
      continue;
    }
    if (due > now) {
      struct timespec ts;
      clock_gettime (CLOCK_MONOTONIC, &ts);
      uint64_t t = (uint64_t) ts.tv_sec * NS_PER_SEC + ts.tv_nsec + (due - now);
      ts.tv_sec = t / NS_PER_SEC;
      ts.tv_nsec = t % NS_PER_SEC;
      pthread_cond_timedwait (&set->wake, &set->lock, &ts);
      continue;
    }
    s->probed = true;
    s->backoff_ns = s->backoff_ns * 2 > PROBE_MAX_NS ? PROBE_MAX_NS : s->backoff_ns * 2;
    s->next_probe_ns = now + s->backoff_ns;
    pthread_mutex_unlock (&set->lock);
    sources_verify (set, s, now_ns () + check_budget (set));
    pthread_mutex_lock (&set->lock);
  }
  pthread_mutex_unlock (&set->lock);
  return NULL;
}

/* ---- the backend ---- */

static bool
rsources_handles (const char *url)
{
  return false;                 /* chosen by remote_open, never by URL */
}

static void rsources_close (void *hv);

static int
rsources_open (struct remote *r, const struct remote_config *cfg, void **hp, int *err)
{
  struct rsources *set;

  if (cfg->writable || cfg->nr_sources == 0) {
    log_error ("remote: disk %s: several sources are only for disks corfs only reads",
               cfg->disk);
    *err = EINVAL;
    return -1;
  }
  if (cfg->nr_sources > SOURCES_CAP) {
    log_error ("remote: disk %s: more than %d sources", cfg->disk, SOURCES_CAP);
    *err = EINVAL;
    return -1;
  }
  set = calloc (1, sizeof *set);
  if (!set || !(set->v = calloc (SOURCES_CAP, sizeof *set->v)) ||
      !(set->disk = strdup (cfg->disk))) {
    if (set)
      free (set->v);
    free (set);
    *err = ENOMEM;
    return -1;
  }
  set->outer = r;
  pthread_mutex_init (&set->lock, NULL);
  pthread_mutex_init (&set->fp_lock, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init (&ca);
  pthread_condattr_setclock (&ca, CLOCK_MONOTONIC);
  pthread_cond_init (&set->wake, &ca);
  pthread_condattr_destroy (&ca);
  set->timeout_ns = cfg->source_timeout_ns ? cfg->source_timeout_ns : DEFAULT_SOURCE_TIMEOUT_NS;
  if (cfg->pinned_identity && sfp_parse (cfg->pinned_identity, &set->size, &set->seed,
                                         &set->fp) == 0)
    set->have_fp = true;
  else {
    set->seed = ((uint64_t) random () << 33) ^ ((uint64_t) random () << 11) ^ now_ns ();
    set->first_only = cfg->sources[0].pinned_identity && *cfg->sources[0].pinned_identity;
  }
  set->connect_timeout_ns = cfg->connect_timeout_ns;
  set->request_timeout_ns = cfg->request_timeout_ns;
  set->spread = cfg->spread;
  for (size_t i = 0; i < cfg->nr_sources; i++) {
    struct remote_config c = cfg->sources[i];
    c.disk = cfg->disk;
    c.writable = false;
    pthread_mutex_init (&set->v[i].check, NULL);
    set->v[i].pin_recorded = c.pinned_identity && *c.pinned_identity;
    set->n = i + 1;
    if (remote_open (&c, &set->v[i].r) == -1) {
      *err = errno;
      rsources_close (set);
      return -1;
    }
    remote_set_single_attempt (set->v[i].r);
  }
  *hp = set;
  return 0;
}

static void
stop_prober (struct rsources *set)
{
  bool join;

  pthread_mutex_lock (&set->lock);
  set->stop = true;
  join = set->prober_started;
  set->prober_started = false;
  pthread_cond_broadcast (&set->wake);
  pthread_mutex_unlock (&set->lock);
  if (join)
    pthread_join (set->prober, NULL);
}

static void
rsources_close (void *hv)
{
  struct rsources *set = hv;

  stop_prober (set);
  for (size_t i = 0; i < set->n; i++) {
    remote_close (set->v[i].r);
    pthread_mutex_destroy (&set->v[i].check);
  }
  pthread_mutex_destroy (&set->lock);
  pthread_mutex_destroy (&set->fp_lock);
  pthread_cond_destroy (&set->wake);
  free (set->v);
  free (set->disk);
  free (set);
}

static void
rsources_cancel (void *hv)
{
  struct rsources *set = hv;
  struct remote *adding;

  pthread_mutex_lock (&set->lock);
  set->stop = true;
  pthread_cond_broadcast (&set->wake);
  /* The slot an add is checking: the add closes it only once cancelling
   * is over (a source's calls are never made under set->lock). */
  adding = set->adding ? set->adding->r : NULL;
  set->cancelling = adding != NULL;
  pthread_mutex_unlock (&set->lock);
  if (adding) {
    remote_cancel (adding);
    pthread_mutex_lock (&set->lock);
    set->cancelling = false;
    pthread_cond_broadcast (&set->wake);
    pthread_mutex_unlock (&set->lock);
  }
  for (size_t i = 0; i < nsrc (set); i++)
    remote_cancel (set->v[i].r);
}

/* The sources to try, in order (sources_pick_order over a snapshot). */
/* Reads this large or larger are spread under policy spread (a guest's
 * small faults stay with the preferred source). */
#define SPREAD_MIN (256 * 1024)

static size_t
order_now (struct rsources *set, size_t *order, size_t count)
{
  enum sources_state st[SOURCES_CAP];
  size_t n, k, healthy = 0;

  pthread_mutex_lock (&set->lock);
  n = set->n;
  for (size_t i = 0; i < n; i++)
    st[i] = set->v[i].state;
  pthread_mutex_unlock (&set->lock);
  k = sources_pick_order (st, n, order);
  /* The ok ones come first only when no unchecked one sits among them:
   * rotate only a leading run of ok sources. */
  for (healthy = 0; healthy < k && st[order[healthy]] == SOURCES_OK; healthy++)
    ;
  if (set->spread && count >= SPREAD_MIN)
    sources_rotate (order, healthy, __atomic_fetch_add (&set->turn, 1, __ATOMIC_RELAXED));
  return k;
}

/* The set answers once one source matches: the size and identity. */
static int64_t
rsources_get_size (struct remote *r, void *hv, uint64_t deadline_ns, int *err)
{
  struct rsources *set = hv;
  size_t order[SOURCES_CAP], k;
  char id[128];

  if (establish (set, deadline_ns, err) == -1)
    return -1;
  k = order_now (set, order, 0);
  for (size_t j = 0; j < k; j++)
    if (sources_verify (set, &set->v[order[j]], share_deadline (deadline_ns, j + 1 < k)) == 0) {
      sfp_format (id, sizeof id, set->size, set->seed, set->fp);
      if (remote_check_identity (r, id, err) == -1)
        return -1;
      return set->size;
    }
  remote_note_error (r, "no source matches the image (see the sources' states)");
  *err = EIO;
  return -1;
}

/* A fresh fingerprint, from the first source that answers (the set's
 * seed), for remote_verify and remote_repin. */
static int64_t
rsources_identify (struct remote *r, void *hv, uint64_t deadline_ns, char *id, size_t len,
                   int *err)
{
  struct rsources *set = hv;

  for (size_t i = 0; i < nsrc (set); i++) {
    uint64_t size, fp;
    if (set->v[i].state == SOURCES_REMOVED || set->v[i].state == SOURCES_MISMATCH)
      continue;
    if (fingerprint (set, &set->v[i], set->seed, &size, &fp, deadline_ns, err) == 0) {
      sfp_format (id, len, size, set->seed, fp);
      return size;
    }
  }
  if (*err == 0)
    *err = EIO;
  return -1;
}

/* One piece (at most PIECE bytes) from the first source that serves it. */
static int
read_piece (struct rsources *set, void *buf, size_t count, uint64_t offset,
            uint64_t deadline_ns, int *err)
{
  size_t order[SOURCES_CAP], k = order_now (set, order, count);

  for (size_t j = 0; j < k && now_ns () < deadline_ns; j++) {
    struct src *s = &set->v[order[j]];
    uint64_t t0;
    int e = 0;
    char why[256];
    if (sources_verify (set, s, share_deadline (deadline_ns, j + 1 < k)) == -1)
      continue;
    t0 = now_ns ();
    if (remote_pread (s->r, buf, count, offset, piece_deadline (set, deadline_ns), &e) == 0) {
      pthread_mutex_lock (&set->lock);
      s->reads++;
      s->bytes += count;
      s->latency_ns = now_ns () - t0;
      pthread_mutex_unlock (&set->lock);
      return 0;
    }
    remote_status (s->r, why, sizeof why);
    mark (set, s, remote_status (s->r, NULL, 0) == REMOTE_CHANGED ? SOURCES_MISMATCH
          : SOURCES_FAILED, *why ? why : strerror (e));
  }
  remote_note_error (set->outer, "no source could serve %zu bytes at offset %" PRIu64,
                     count, offset);
  *err = EIO;
  return -1;
}

static int
rsources_pread (struct remote *r, void *hv, void *buf, size_t count, uint64_t offset,
                uint64_t deadline_ns, int *err)
{
  struct rsources *set = hv;

  /* Reads come after a size question (attach), which takes the
   * fingerprint; but not if the set was opened for a disk whose blocks
   * were all present then. */
  if (!set->have_fp && establish (set, deadline_ns, err) == -1)
    return -1;
  while (count > 0) {
    size_t n = count > PIECE ? PIECE : count;
    if (read_piece (set, buf, n, offset, deadline_ns, err) == -1)
      return -1;
    buf = (char *) buf + n;
    offset += n;
    count -= n;
  }
  return 0;
}

static void
rsources_release (void *hv)
{
  struct rsources *set = hv;

  for (size_t i = 0; i < nsrc (set); i++)
    remote_release (set->v[i].r);
}

const struct remote_ops rsources_ops = {
  .name = "sources",
  .handles = rsources_handles,
  .open = rsources_open,
  .close = rsources_close,
  .get_size = rsources_get_size,
  .identify = rsources_identify,
  .pread = rsources_pread,
  .release = rsources_release,
  .cancel = rsources_cancel,
};
