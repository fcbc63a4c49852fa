/* corfs: the parent's identity: verify and re-pin (see remote.h).  The
 * first pin and the check on every (re)connect are in remote.c
 * (remote_check_identity).
 *
 * Notes on the thread model: any thread; see wrapper-internal.h.  The
 * identity is asked on a connection of the backend's own (ops->identify,
 * through the pool's remote_pool_open_own for backends with a pool), with
 * no lock held; r->lock is taken only to compare and store the pin.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"
#include "remote/wrapper-internal.h"

/* Identify the parent on a connection of its own (never one a request is
 * using), retried until the deadline.  The size, or -1 with *err. */
static int64_t
identify_fresh (struct remote *r, const char *what, char *id, size_t len,
                uint64_t deadline_ns, int *err)
{
  int64_t size = remote_size_retrying (r, id, len, deadline_ns, err);

  if (size >= 0 && !*id) {
    remote_note_error (r, "%s: the %s backend told no identity", what, r->ops->name);
    remote_note_size_failed (r);
    *err = EPROTO;
    return -1;
  }
  return size;
}

int
remote_verify (struct remote *r, const char *expected, uint64_t deadline_ns, int *err)
{
  char id[sizeof r->identity] = "";
  int ret = 0;

  if (remote_is_changed (r)) {
    *err = ESTALE;
    return -1;
  }
  if (identify_fresh (r, "verify", id, sizeof id, deadline_ns, err) < 0)
    return -1;
  pthread_mutex_lock (&r->lock);
  if (expected && *expected) {
    /* The recorded identity is the pin from now on, whatever was pinned. */
    snprintf (r->identity, sizeof r->identity, "%s", expected);
    r->pinned = true;
  }
  if (!r->pinned) {
    snprintf (r->identity, sizeof r->identity, "%s", id);
    r->pinned = true;
  }
  else if (strcmp (r->identity, id) != 0) {
    log_error ("remote: disk %s: parent %s changed: pinned identity %s, now %s; "
               "refusing to mix data from two images", r->disk, r->url, r->identity, id);
    r->state = REMOTE_CHANGED;
    snprintf (r->last_error, sizeof r->last_error,
              "parent changed (pinned %s, found %s)", r->identity, id);
    *err = ESTALE;
    ret = -1;
  }
  pthread_mutex_unlock (&r->lock);
  return ret;
}

int
remote_repin (struct remote *r, bool accept_changed, uint64_t expect_size, char *identity,
              size_t len, uint64_t deadline_ns, int *err)
{
  char id[sizeof r->identity] = "";
  int64_t size;

  /* A parent found changed stays refused unless the caller means to take
   * a new one (activation, abort): a merge must not adopt a foreign
   * image that it would then write into. */
  if (!accept_changed && remote_is_changed (r)) {
    *err = ESTALE;
    return -1;
  }
  /* Pooled connections are checked against the new pin when they next
   * reconnect: close the idle ones now.  The identity itself comes from
   * a connection of the backend's own, never from one that stayed open
   * (busy when we asked), which would tell no identity at all. */
  if (r->ops->release)
    r->ops->release (r->h);
  __atomic_fetch_add (&r->write_gen, 1, __ATOMIC_SEQ_CST);
  size = identify_fresh (r, "re-pin", id, sizeof id, deadline_ns, err);
  if (size < 0)
    return -1;
  if ((uint64_t) size != expect_size) {
    remote_note_error (r, "re-pin: the parent has %" PRId64 " bytes but the disk has %"
                       PRIu64 "; refusing a parent of another size", size, expect_size);
    *err = EMEDIUMTYPE;
    remote_note_size_failed (r);
    return -1;
  }
  pthread_mutex_lock (&r->lock);
  snprintf (r->identity, sizeof r->identity, "%s", id);
  r->pinned = true;
  if (r->state == REMOTE_CHANGED) {
    r->state = REMOTE_IDLE;
    r->last_error[0] = '\0';
  }
  pthread_mutex_unlock (&r->lock);
  log_info ("remote: disk %s: parent %s pinned as %s", r->disk, r->url, id);
  snprintf (identity, len, "%s", id);
  return 0;
}
