/* Unit tests: the engine's shared worker pools (src/cor/workers.c), with
 * fake members (the pool hands its disk pointer to ops->run and never
 * looks inside):
 *  - with more members than workers, every member with work is served in
 *    turn (round-robin), none twice before the others once;
 *  - one member alone gets up to max_active units at once, never more;
 *  - a member that asks for a time later is not run before it;
 *  - a kick during a unit that then says idle runs it once more;
 *  - cor_pool_leave waits for the units running, and a kick after it
 *    runs nothing;
 *  - no thread starts before the first kick, and at most max_workers. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <string.h>

#include "common/util.h"
#include "cor/cor-internal.h"

#define MEMBERS 8
#define WORKERS 3

/* What each fake member does: units left, how long a unit sleeps, and
 * what it returns after the last one. */
static struct fake {
  struct cor_pool_member m;
  int left;                     /* units still wanted */
  int ran, active, max_seen;
  int calls;                    /* units run, with work or not */
  uint64_t sleep_ns, not_before_ns, first_run_ns;
} fakes[MEMBERS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int order[MEMBERS * 16], nr_order;
static struct cor_pool pool;
static struct cor_pool *kick_pool;      /* kicked from inside a unit */
static int gate = 1;                    /* units wait while 0 */

static uint64_t
fake_run (struct cor_disk *d)
{
  struct fake *f = (struct fake *) d;
  uint64_t ret;

  while (!__atomic_load_n (&gate, __ATOMIC_SEQ_CST))
    sleep_ns (1000000ULL);
  pthread_mutex_lock (&lock);
  f->calls++;
  if (f->left <= 0) {           /* as real work: nothing left to do */
    pthread_mutex_unlock (&lock);
    return COR_POOL_IDLE;
  }
  f->left--;
  if (f->first_run_ns == 0)
    f->first_run_ns = now_ns ();
  f->active++;
  if (f->active > f->max_seen)
    f->max_seen = f->active;
  if (nr_order < (int) (sizeof order / sizeof order[0]))
    order[nr_order++] = f - fakes;
  pthread_mutex_unlock (&lock);
  if (f->sleep_ns)
    sleep_ns (f->sleep_ns);
  if (kick_pool) {
    struct cor_pool *p = kick_pool;
    kick_pool = NULL;
    cor_pool_kick (p, &f->m);   /* a kick the unit's own return would lose */
  }
  pthread_mutex_lock (&lock);
  f->active--;
  f->ran++;
  ret = f->left > 0 ? 0 : COR_POOL_IDLE;
  pthread_mutex_unlock (&lock);
  return ret;
}

static const struct cor_pool_ops fake_ops = { "fake", fake_run };

static void
setup (void)
{
  memset (fakes, 0, sizeof fakes);
  nr_order = 0;
  kick_pool = NULL;
  cor_pool_init (&pool, &fake_ops, WORKERS);
  for (int i = 0; i < MEMBERS; i++)
    cor_pool_member_init (&fakes[i].m, (struct cor_disk *) &fakes[i], 2);
}

static void
teardown (void)
{
  cor_pool_stop (&pool);
  cor_pool_destroy (&pool);
}

TestSuite (cor_workers, .init = setup, .fini = teardown);

/* Wait (at most 10 s) until every fake has run its units. */
static bool
all_done (void)
{
  for (int t = 0; t < 1000; t++) {
    bool done = true;
    pthread_mutex_lock (&lock);
    for (int i = 0; i < MEMBERS; i++)
      done &= fakes[i].left <= 0 && fakes[i].active == 0;
    pthread_mutex_unlock (&lock);
    if (done)
      return true;
    sleep_ns (10 * 1000000ULL);
  }
  return false;
}

Test (cor_workers, round_robin_between_members)
{
  cr_assert_eq (cor_pool_threads (&pool), 0, "threads before the first kick");
  for (int i = 0; i < MEMBERS; i++) {
    fakes[i].left = 4;
    fakes[i].sleep_ns = 2 * 1000000ULL;
  }
  /* Kick them all before any unit runs (the workers start on the
   * first kick and would serve the first member alone meanwhile). */
  __atomic_store_n (&gate, 0, __ATOMIC_SEQ_CST);
  for (int i = 0; i < MEMBERS; i++)
    cr_assert_eq (cor_pool_kick (&pool, &fakes[i].m), 0);
  __atomic_store_n (&gate, 1, __ATOMIC_SEQ_CST);
  cr_assert (all_done (), "the members' units did not all run");
  cr_assert_eq (cor_pool_threads (&pool), WORKERS);
  for (int i = 0; i < MEMBERS; i++)
    cr_expect_eq (fakes[i].ran, 4, "member %d ran %d units, not 4", i, fakes[i].ran);
  /* Round-robin: no member starts a unit while another has had two
   * fewer (the first kicked got two workers at once, alone, before the
   * others were kicked: a lead of two). */
  int count[MEMBERS] = { 0 };
  for (int k = 0; k < nr_order; k++) {
    int m = order[k];
    for (int i = 0; i < MEMBERS; i++)
      cr_expect_leq (count[m] - count[i], 2, "member %d started unit %d while member %d "
                     "had had %d", m, count[m] + 1, i, count[i]);
    count[m]++;
  }
}

Test (cor_workers, one_member_gets_max_active)
{
  fakes[0].left = 12;
  fakes[0].sleep_ns = 20 * 1000000ULL;
  cr_assert_eq (cor_pool_kick (&pool, &fakes[0].m), 0);
  cr_assert (all_done ());
  cr_expect_eq (fakes[0].ran, 12);
  cr_expect_eq (fakes[0].max_seen, 2, "%d units at once (max_active 2, %d workers)",
                fakes[0].max_seen, WORKERS);
}

/* A unit returning a time: the member waits for it. */
static uint64_t
later_run (struct cor_disk *d)
{
  struct fake *f = (struct fake *) d;

  pthread_mutex_lock (&lock);
  uint64_t now = now_ns ();
  if (f->ran == 1 && now < f->not_before_ns)
    f->max_seen = -1;           /* ran early */
  f->ran++;
  uint64_t ret = f->ran == 1 ? (f->not_before_ns = now + 100 * 1000000ULL) : COR_POOL_IDLE;
  pthread_mutex_unlock (&lock);
  return ret;
}

Test (cor_workers, ready_time_is_kept)
{
  static const struct cor_pool_ops ops = { "later", later_run };
  struct cor_pool p;

  cor_pool_init (&p, &ops, 2);
  /* One unit at a time: a second one started with the first would not
   * have seen its answer. */
  cor_pool_member_init (&fakes[0].m, (struct cor_disk *) &fakes[0], 1);
  cr_assert_eq (cor_pool_kick (&p, &fakes[0].m), 0);
  for (int t = 0; t < 500 && __atomic_load_n (&fakes[0].ran, __ATOMIC_SEQ_CST) < 2; t++)
    sleep_ns (10 * 1000000ULL);
  cr_expect_eq (fakes[0].ran, 2, "the member did not run again after its time");
  cr_expect_neq (fakes[0].max_seen, -1, "the member ran before the time it asked for");
  cor_pool_stop (&p);
  cor_pool_destroy (&p);
}

Test (cor_workers, kick_during_a_unit_is_not_lost)
{
  fakes[0].left = 1;            /* its one unit says idle... */
  fakes[0].sleep_ns = 20 * 1000000ULL;
  kick_pool = &pool;            /* ...after a kick came in meanwhile */
  cr_assert_eq (cor_pool_kick (&pool, &fakes[0].m), 0);
  for (int t = 0; t < 500 && __atomic_load_n (&fakes[0].calls, __ATOMIC_SEQ_CST) < 2; t++)
    sleep_ns (10 * 1000000ULL);
  cr_expect_eq (fakes[0].calls, 2, "a kick during the unit was lost (%d units)",
                fakes[0].calls);
}

Test (cor_workers, leave_waits_for_units)
{
  fakes[0].left = 1000;
  fakes[0].sleep_ns = 30 * 1000000ULL;
  cr_assert_eq (cor_pool_kick (&pool, &fakes[0].m), 0);
  while (__atomic_load_n (&fakes[0].ran, __ATOMIC_SEQ_CST) == 0)
    sleep_ns (1000000ULL);
  cor_pool_leave (&pool, &fakes[0].m);
  pthread_mutex_lock (&lock);
  int active = fakes[0].active, ran = fakes[0].calls;
  pthread_mutex_unlock (&lock);
  cr_expect_eq (active, 0, "cor_pool_leave returned with %d units running", active);
  cr_assert_eq (cor_pool_kick (&pool, &fakes[0].m), 0);
  sleep_ns (100 * 1000000ULL);
  cr_expect_eq (fakes[0].calls, ran, "a member that left ran again after a kick");
}
