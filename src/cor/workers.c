/* corfs: the engine's shared worker pools: a bounded number of threads
 * that run the background work of every disk (the streamer's chunks,
 * readahead's prefetches), fair between disks.
 *
 * Design notes.  A disk with background work of one kind is a member of
 * that kind's pool (struct cor_pool_member, in the disk).  A member is
 * kicked when it may have work (a stream started or resumed, a prefetch
 * queued); a worker then runs one unit of its work (ops->run: one chunk,
 * one prefetch), which says when the member wants to run again: now, not
 * before a time (a rate limit's debt, giving way to a guest, an error's
 * backoff), or not until kicked again (COR_POOL_IDLE).  Work never waits
 * inside a unit for anything but its own I/O, so a disk that must wait
 * does not hold a thread meanwhile.
 *
 * Fairness: workers take the ready member with the fewest units running,
 * the least recently served first (round-robin: a member served moves to
 * the end of the list, one that just got work goes first).  So with many disks each gets a worker in turn,
 * and one disk alone gets up to max_active of them at once (several
 * requests in flight, what makes a high-latency parent stream at its
 * bandwidth).  A disk whose parent stalls holds only the workers it
 * holds already; it gets no more while others are ready.
 *
 * Threads start on the first kick (a mount that never streams or reads
 * ahead starts none) and end at cor_pool_stop.  cor_pool_leave takes a
 * member out and waits for its units running; the disk's own stop flag,
 * set before, makes its next unit return COR_POOL_IDLE at once.
 *
 * Notes on the thread model: any thread kicks (FUSE threads through
 * readahead, ctl's through the stream commands); the pool's workers run
 * the units.  p->lock protects the list, every member's pool fields and
 * the workers; it is a leaf: taken under a disk's stream.lock or
 * ra.lock (a kick), never held across ops->run, and nothing is taken
 * under it (LOCK ORDER in cor-internal.h).
 */
#include <errno.h>
#include <stdlib.h>
#include <time.h>

#include "common/log.h"
#include "common/util.h"
#include "cor/cor-internal.h"

void
cor_pool_init (struct cor_pool *p, const struct cor_pool_ops *ops, unsigned workers)
{
  p->ops = ops;
  pthread_mutex_init (&p->lock, NULL);
  cond_init_monotonic (&p->cond);
  p->head = p->tail = NULL;
  p->max_workers = workers ? workers : 1;
  p->nr_workers = 0;
  p->workers = NULL;
  p->started = p->stop = false;
}

void
cor_pool_member_init (struct cor_pool_member *m, struct cor_disk *d, int max_active)
{
  m->d = d;
  m->next = m->prev = NULL;
  m->linked = m->left = false;
  m->kicks = 0;
  m->active = 0;
  m->max_active = max_active > 0 ? max_active : 1;
  m->ready_ns = COR_POOL_IDLE;
}

/* Must be called with p->lock held. */
static void
unlink_unlocked (struct cor_pool *p, struct cor_pool_member *m)
{
  if (!m->linked)
    return;
  if (m->prev)
    m->prev->next = m->next;
  else
    p->head = m->next;
  if (m->next)
    m->next->prev = m->prev;
  else
    p->tail = m->prev;
  m->next = m->prev = NULL;
  m->linked = false;
}

/* Must be called with p->lock held.  Put m last (just served), or first
 * (it just got work: not served since it had none). */
static void
insert_unlocked (struct cor_pool *p, struct cor_pool_member *m, bool first)
{
  unlink_unlocked (p, m);
  if (first) {
    m->prev = NULL;
    m->next = p->head;
    if (p->head)
      p->head->prev = m;
    else
      p->tail = m;
    p->head = m;
  }
  else {
    m->prev = p->tail;
    m->next = NULL;
    if (p->tail)
      p->tail->next = m;
    else
      p->head = m;
    p->tail = m;
  }
  m->linked = true;
}

/* Must be called with p->lock held.  The member to serve now: ready,
 * below its max_active, with the fewest units running, the first in the
 * list among those.  NULL if none; *wake is then the earliest time one
 * becomes ready (UINT64_MAX: none will until kicked or a unit ends). */
static struct cor_pool_member *
pick_unlocked (struct cor_pool *p, uint64_t now, uint64_t *wake)
{
  struct cor_pool_member *best = NULL;

  *wake = UINT64_MAX;
  for (struct cor_pool_member *m = p->head; m; m = m->next) {
    if (m->active >= m->max_active)
      continue;
    if (m->ready_ns > now) {
      if (m->ready_ns < *wake)
        *wake = m->ready_ns;
      continue;
    }
    if (!best || m->active < best->active)
      best = m;
    if (best->active == 0)
      break;
  }
  return best;
}

static void *
pool_worker (void *arg)
{
  struct cor_pool *p = arg;

  pthread_mutex_lock (&p->lock);
  while (!p->stop) {
    uint64_t wake, now = now_ns ();
    struct cor_pool_member *m = pick_unlocked (p, now, &wake);
    if (!m) {
      if (wake == UINT64_MAX)
        pthread_cond_wait (&p->cond, &p->lock);
      else {
        struct timespec ts = { wake / NS_PER_SEC, wake % NS_PER_SEC };
        pthread_cond_timedwait (&p->cond, &p->lock, &ts);
      }
      continue;
    }
    unsigned kicks = m->kicks;
    m->active++;
    insert_unlocked (p, m, false);
    pthread_mutex_unlock (&p->lock);

    uint64_t next = p->ops->run (m->d);

    pthread_mutex_lock (&p->lock);
    m->active--;
    /* A kick while the unit ran may have come after it looked: run
     * again rather than lose it. */
    m->ready_ns = m->kicks != kicks ? 0 : next;
    if (m->ready_ns == COR_POOL_IDLE && m->active == 0)
      unlink_unlocked (p, m);
    /* Others may wait for this member (cor_pool_leave, a worker that
     * found it at max_active). */
    pthread_cond_broadcast (&p->cond);
  }
  pthread_mutex_unlock (&p->lock);
  return NULL;
}

/* Must be called with p->lock held.  Start the workers, once.  0 if at
 * least one runs; -1 (logged) if none could start. */
static int
start_unlocked (struct cor_pool *p)
{
  if (p->started)
    return p->nr_workers > 0 ? 0 : -1;
  p->started = true;
  p->workers = calloc (p->max_workers, sizeof *p->workers);
  for (; p->workers && p->nr_workers < p->max_workers; p->nr_workers++)
    if (thread_create_nosig (&p->workers[p->nr_workers], pool_worker, p) == -1) {
      log_warn ("cor: starting %s workers: %m (%u running)", p->ops->name, p->nr_workers);
      break;
    }
  if (p->nr_workers == 0) {
    log_error ("cor: no %s worker could start", p->ops->name);
    return -1;
  }
  return 0;
}

int
cor_pool_kick (struct cor_pool *p, struct cor_pool_member *m)
{
  int r;

  pthread_mutex_lock (&p->lock);
  if (p->stop)
    r = -1;
  else if (m->left)
    r = 0;                      /* its disk is going away */
  else if ((r = start_unlocked (p)) == 0) {
    m->kicks++;
    m->ready_ns = 0;
    if (!m->linked)
      insert_unlocked (p, m, true);
    pthread_cond_broadcast (&p->cond);
  }
  pthread_mutex_unlock (&p->lock);
  return r;
}

void
cor_pool_leave (struct cor_pool *p, struct cor_pool_member *m)
{
  pthread_mutex_lock (&p->lock);
  m->left = true;
  m->ready_ns = COR_POOL_IDLE;
  while (m->active > 0)
    pthread_cond_wait (&p->cond, &p->lock);
  unlink_unlocked (p, m);
  pthread_mutex_unlock (&p->lock);
}

void
cor_pool_stop (struct cor_pool *p)
{
  pthread_mutex_lock (&p->lock);
  p->stop = true;
  pthread_cond_broadcast (&p->cond);
  unsigned n = p->nr_workers;
  pthread_mutex_unlock (&p->lock);
  for (unsigned i = 0; i < n; i++)
    pthread_join (p->workers[i], NULL);
  pthread_mutex_lock (&p->lock);
  p->nr_workers = 0;
  pthread_mutex_unlock (&p->lock);
}

void
cor_pool_destroy (struct cor_pool *p)
{
  free (p->workers);
  p->workers = NULL;
  pthread_mutex_destroy (&p->lock);
  pthread_cond_destroy (&p->cond);
}

unsigned
cor_pool_threads (struct cor_pool *p)
{
  pthread_mutex_lock (&p->lock);
  unsigned n = p->nr_workers;
  pthread_mutex_unlock (&p->lock);
  return n;
}
