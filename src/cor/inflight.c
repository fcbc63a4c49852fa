/* corfs: the in-flight table and the gate (docs/design.md rule 5).
 *
 * One operation per block at a time: a fetch, a write, a read-through or
 * an exclusive operation owns its blocks as a struct busy in d->busy
 * from before it starts until its bits are set.  The named primitives
 * (declared in cor-internal.h) are the only ways in:
 *   inflight_claim                  claim a range whole, waiting with a
 *                                   deadline (writes, writeback, incoming
 *                                   read-through);
 *   inflight_claim_missing_unlocked claim the missing run, never waiting
 *                                   (fault-in, populate);
 *   inflight_release                give a claim back, waking waiters;
 *   inflight_fg_begin/end           the foreground bracket;
 *   inflight_own_all, inflight_hold_writers, inflight_gate_release
 *                                   the exclusive gate.
 *
 * Thread model: any engine thread.  One lock, d->lock, protects the busy
 * list, the gate (exclusive_waiters, exclusive_deadline_ns) and
 * guest_waiters (also read without it, with atomics, as hints); it is
 * never held across I/O, and only meta's lock is taken under it (see
 * LOCK ORDER in cor-internal.h).  Waiters sleep on d->cond with their
 * deadline (CLOCK_MONOTONIC).
 */
#include <inttypes.h>
#include <stdio.h>

#include "common/cleanup.h"
#include "common/log.h"
#include "common/util.h"
#include "cor/cor-internal.h"
#include "remote/remote.h"

/* ---- in-flight table ---- */

/* Must be called with d->lock held.  The busy range overlapping
 * [first, end), or NULL. */
struct busy *
inflight_find_unlocked (struct cor_disk *d, uint64_t first, uint64_t end)
{
  for (struct busy *b = d->busy; b; b = b->next)
    if (b->first < end && first < b->end)
      return b;
  return NULL;
}

/* Must be called with d->lock held.  write: the owner changes data or
 * the dirty/changed bits (not a fetch); checkpoint waits only for these. */
void
inflight_claim_unlocked (struct cor_disk *d, struct busy *b, uint64_t first, uint64_t end, bool write)
{
  b->first = first;
  b->end = end;
  b->write = write;
  b->next = d->busy;
  d->busy = b;
}

void
inflight_release (struct cor_disk *d, struct busy *b)
{
  pthread_mutex_lock (&d->lock);
  for (struct busy **pp = &d->busy; *pp; pp = &(*pp)->next)
    if (*pp == b) {
      *pp = b->next;
      break;
    }
  pthread_cond_broadcast (&d->cond);
  pthread_mutex_unlock (&d->lock);
}

/* Must be called with d->lock held.  Is a guest request with deadline_ns
 * held off by the gate?  Not if its deadline is before the exclusive
 * operation's: it began before the gate closed and ends (at worst with
 * EIO) before that operation would give up, so letting it through costs
 * the operation nothing and the guest a needless EIO. */
bool
inflight_gated_unlocked (const struct cor_disk *d, uint64_t deadline_ns)
{
  return d->exclusive_waiters > 0 && deadline_ns >= d->exclusive_deadline_ns;
}

/* Must be called with d->lock held.  Should the streamer and readahead
 * back off (an exclusive operation or a guest waits to claim blocks)? */
bool
inflight_background_yields_unlocked (const struct cor_disk *d)
{
  return d->exclusive_waiters > 0 || d->guest_waiters > 0;
}

/* Must be called with d->lock held (dropped while asleep).  Sleep until
 * a busy range is released, the gate changes, or deadline_ns.  0, or -1
 * without sleeping once the deadline has passed. */
int
inflight_wait_unlocked (struct cor_disk *d, uint64_t deadline_ns)
{
  if (now_ns () >= deadline_ns)
    return -1;
  struct timespec ts = { deadline_ns / NS_PER_SEC, deadline_ns % NS_PER_SEC };
  pthread_cond_timedwait (&d->cond, &d->lock, &ts);   /* d->cond is monotonic */
  return 0;
}

/* Must be called with d->lock held (dropped while asleep).  A guest
 * request's wait: like inflight_wait_unlocked, counted in guest_waiters
 * meanwhile so that background fetches back off for it (the
 * guest_waiters bracket). */
static int
guest_wait_unlocked (struct cor_disk *d, uint64_t deadline_ns)
{
  int r;

  __atomic_store_n (&d->guest_waiters, d->guest_waiters + 1, __ATOMIC_SEQ_CST);
  r = inflight_wait_unlocked (d, deadline_ns);
  __atomic_store_n (&d->guest_waiters, d->guest_waiters - 1, __ATOMIC_SEQ_CST);
  return r;
}

int
inflight_claim (struct cor_disk *d, struct busy *self, uint64_t first, uint64_t end,
                uint64_t deadline_ns, unsigned flags,
                bool (*still_wanted) (const struct cor_disk *d))
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&d->lock);
  while (inflight_gated_unlocked (d, deadline_ns) || inflight_find_unlocked (d, first, end))
    if (((flags & INFLIGHT_GUEST) ? guest_wait_unlocked (d, deadline_ns)
         : inflight_wait_unlocked (d, deadline_ns)) == -1)
      return -1;
  if (still_wanted && !still_wanted (d))
    return 1;
  inflight_claim_unlocked (d, self, first, end, (flags & INFLIGHT_WRITE) != 0);
  return 0;
}

uint64_t
inflight_claim_missing_unlocked (struct cor_disk *d, struct busy *self, uint64_t blk,
                                 uint64_t end, uint64_t *run_end)
{
  uint64_t run;

  for (; (blk = meta_next (d->md, META_PRESENT, false, blk)) < end; blk++)
    if (!inflight_find_unlocked (d, blk, blk + 1))
      break;
  if (blk >= end)
    return end;
  for (run = blk + 1; run < end; run++)
    if (meta_test (d->md, META_PRESENT, run) || inflight_find_unlocked (d, run, run + 1))
      break;
  inflight_claim_unlocked (d, self, blk, run, false);
  *run_end = run;
  return blk;
}

void
inflight_fg_begin (struct cor_disk *d)
{
  __atomic_fetch_add (&d->fg_inflight, 1, __ATOMIC_SEQ_CST);
}

void
inflight_fg_end (struct cor_disk *d)
{
  __atomic_store_n (&d->last_fg_ns, now_ns (), __ATOMIC_SEQ_CST);
  __atomic_fetch_sub (&d->fg_inflight, 1, __ATOMIC_SEQ_CST);
}

/* Must be called with d->lock held.  The first write claim, or NULL. */
static struct busy *
find_write_unlocked (struct cor_disk *d)
{
  for (struct busy *b = d->busy; b; b = b->next)
    if (b->write)
      return b;
  return NULL;
}

/* Must be called with d->lock held.  Close the gate for an exclusive
 * operation whose deadline is deadline_ns (see exclusive_deadline_ns). */
static void
gate_close_unlocked (struct cor_disk *d, uint64_t deadline_ns)
{
  if (d->exclusive_waiters == 0 || deadline_ns < d->exclusive_deadline_ns)
    __atomic_store_n (&d->exclusive_deadline_ns, deadline_ns, __ATOMIC_SEQ_CST);
  __atomic_store_n (&d->exclusive_waiters, d->exclusive_waiters + 1, __ATOMIC_SEQ_CST);
}

/* Must be called with d->lock held.  Open it again (for this waiter). */
static void
gate_open_unlocked (struct cor_disk *d)
{
  __atomic_store_n (&d->exclusive_waiters, d->exclusive_waiters - 1, __ATOMIC_SEQ_CST);
  /* With other waiters left, their earliest deadline is unknown here:
   * the one kept is earlier, which only lets fewer guests through. */
  if (d->exclusive_waiters == 0)
    __atomic_store_n (&d->exclusive_deadline_ns, UINT64_MAX, __ATOMIC_SEQ_CST);
  pthread_cond_broadcast (&d->cond);
}

/* Own every block for an exclusive operation (what: its name, for the
 * error): no fetch or write is in flight, and none starts until
 * inflight_release.  Callers that change the owner state hold owner_lock.
 *   1. Close the gate (exclusive_waiters): new claims wait or back off,
 *      so the streamer's next chunks cannot keep the disk busy forever.
 *      Guest requests whose deadline is before ours still get through
 *      (they end before we would give up).
 *   2. Wait for the claims in flight to end, at most the hold: a fetch
 *      that the parent stalls must not hold the command (and its reply)
 *      longer than it would hold a guest; nor past the daemon's shutdown.
 *   3. Claim everything, or give up with nothing owned; open the gate.
 * With writes_only (checkpoint), step 2 waits only for write claims
 * (fetches never touch the dirty or changed bits), and step 3 claims
 * nothing: the gate stays shut (nobody passes) until
 * inflight_gate_release.
 * 0, or -1 with a reason in errbuf (also logged). */
static int
own_all_mode (struct cor_disk *d, struct busy *self, bool writes_only, const char *what,
              char *errbuf, size_t len)
{
  uint64_t deadline_ns = now_ns () + d->hold_ns;
  struct busy *b;
  int r = 0;

  pthread_mutex_lock (&d->lock);
  gate_close_unlocked (d, deadline_ns);
  while ((b = writes_only ? find_write_unlocked (d)
          : inflight_find_unlocked (d, 0, d->nr_blocks)) != NULL) {
    if (__atomic_load_n (&d->e->stopping, __ATOMIC_SEQ_CST)) {
      snprintf (errbuf, len, "disk %s: %s: not done: the daemon is shutting down",
                d->name, what);
      r = -1;
      break;
    }
    if (inflight_wait_unlocked (d, deadline_ns) == -1) {
      snprintf (errbuf, len, "disk %s: %s: not done: the block at offset %" PRIu64
                " was still being %s when the hold time (%" PRIu64
                " s) ran out (parent %s slow or stalled?); try again", d->name, what,
                block_offset (d, b->first), writes_only ? "written" : "fetched or written",
                (uint64_t) (d->hold_ns / NS_PER_SEC), remote_url (d->remote));
      r = -1;
      break;
    }
  }
  if (r == 0 && writes_only) {
    /* Hold the gate shut: no claim passes, whatever its deadline. */
    __atomic_store_n (&d->exclusive_deadline_ns, 0, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock (&d->lock);
    return 0;
  }
  if (r == 0)
    inflight_claim_unlocked (d, self, 0, d->nr_blocks, true);
  gate_open_unlocked (d);               /* the gate may be open again */
  pthread_mutex_unlock (&d->lock);
  if (r == -1)
    log_error ("cor: %s", errbuf);
  return r;
}

int
inflight_own_all (struct cor_disk *d, struct busy *self, const char *what, char *errbuf, size_t len)
{
  return own_all_mode (d, self, false, what, errbuf, len);
}

int
inflight_hold_writers (struct cor_disk *d, const char *what, char *errbuf, size_t len)
{
  return own_all_mode (d, NULL, true, what, errbuf, len);
}

void
inflight_gate_release (struct cor_disk *d)
{
  pthread_mutex_lock (&d->lock);
  gate_open_unlocked (d);
  pthread_mutex_unlock (&d->lock);
}
