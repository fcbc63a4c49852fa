/* Unit tests: the engine's in-flight table primitives (src/cor/inflight.c),
 * on a real disk over a file:// parent in a scratch directory, no FUSE:
 *  - a claim of a free range succeeds at once and is in the table;
 *  - a claim over a claimed range waits, and fails at its deadline;
 *  - a release wakes a waiting claim, which then gets the range;
 *  - the missing-run claim skips present and claimed blocks, and ends the
 *    run at the next one;
 *  - with no missing, unclaimed block it claims nothing;
 *  - a claim no longer wanted once the range is free claims nothing;
 *  - a guest's wait counts in guest_waiters (the streamer backs off);
 *  - the foreground bracket counts in fg_inflight and stamps last_fg_ns. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "cor/cor-internal.h"
#include "meta/meta.h"
#include "remote/remote.h"

#define KiB 1024ULL
#define SIZE (1024 * KiB)
#define BS (64 * KiB)
#define NR_BLOCKS (SIZE / BS)
#define MS (NS_PER_SEC / 1000)

static char dir[] = "/tmp/corfs-unit-inflight.XXXXXX";
static struct meta *m;
static struct cor_engine *e;
static struct cor_disk *d;

static void
setup (void)
{
  char parent[128], url[160], index_dir[128], overlay[128];
  struct meta_record init;
  struct meta_disk *md;
  struct remote *r;
  int fd, err;

  cr_assert_not_null (mkdtemp (dir));
  snprintf (parent, sizeof parent, "%s/parent.img", dir);
  snprintf (url, sizeof url, "file://%s", parent);
  snprintf (index_dir, sizeof index_dir, "%s/index", dir);
  snprintf (overlay, sizeof overlay, "%s/d.overlay", dir);
  fd = open (parent, O_RDWR | O_CREAT | O_TRUNC, 0600);
  cr_assert_geq (fd, 0);
  cr_assert_eq (ftruncate (fd, SIZE), 0);
  close (fd);
  cr_assert_eq (mkdir (index_dir, 0700), 0);
  cr_assert_eq (meta_open (index_dir, &m), 0);

  struct remote_config rcfg = { .url = url, .disk = "d",
                                .connect_timeout_ns = NS_PER_SEC,
                                .request_timeout_ns = NS_PER_SEC };
  cr_assert_eq (remote_open (&rcfg, &r), 0);
  cr_assert_eq (remote_get_size (r, now_ns () + 5 * NS_PER_SEC, &err), (int64_t) SIZE);
  memset (&init, 0, sizeof init);
  snprintf (init.url, sizeof init.url, "%s", url);
  remote_identity (r, init.identity, sizeof init.identity);
  init.size = SIZE;
  init.block_size = BS;
  init.state = META_ACTIVE;
  init.parent_owned = true;
  init.generation = 1;
  cr_assert_eq (meta_disk_open (m, "d", &init, &md, NULL), 0);

  struct cor_disk_config cfg = { .name = "d", .overlay_path = overlay, .md = md,
                                 .remote = r, .hold_ns = 5 * NS_PER_SEC,
                                 .stream = COR_STREAM_OFF };
  cr_assert_eq (cor_engine_new (m, &e), 0);
  cr_assert_eq (cor_disk_add (e, &cfg, &d), 0);
  cr_assert_eq (cor_engine_start (e), 0);
  cr_assert_eq (cor_disk_nr_blocks (d), NR_BLOCKS);
}

static int
remove_one (const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
  return remove (path) == -1 ? -1 : 0;
}

static void
teardown (void)
{
  cor_engine_quiesce (e);
  cor_engine_free (e);
  meta_close (m);
  nftw (dir, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

TestSuite (cor_inflight, .init = setup, .fini = teardown);

/* The claim in the table overlapping [first, end), as (first, end), or
 * false when there is none. */
static bool
claimed (uint64_t first, uint64_t end, uint64_t *cf, uint64_t *ce)
{
  pthread_mutex_lock (&d->lock);
  struct busy *b = inflight_find_unlocked (d, first, end);
  if (b) {
    *cf = b->first;
    *ce = b->end;
  }
  pthread_mutex_unlock (&d->lock);
  return b != NULL;
}

Test (cor_inflight, claim_of_a_free_range_succeeds_at_once)
{
  struct busy self;
  uint64_t cf = 0, ce = 0, t0 = now_ns ();

  cr_assert_eq (inflight_claim (d, &self, 3, 7, t0 + 5 * NS_PER_SEC, INFLIGHT_WRITE, NULL), 0);
  cr_assert_lt (now_ns () - t0, 500 * MS, "a free range must not wait");
  cr_assert (claimed (0, NR_BLOCKS, &cf, &ce));
  cr_assert_eq (cf, 3);
  cr_assert_eq (ce, 7);
  cr_assert (self.write);
  inflight_release (d, &self);
  cr_assert_not (claimed (0, NR_BLOCKS, &cf, &ce), "released: the table is empty");
}

Test (cor_inflight, claim_over_a_claimed_range_times_out_at_its_deadline)
{
  struct busy held, self;
  uint64_t cf, ce;

  cr_assert_eq (inflight_claim (d, &held, 2, 5, now_ns () + NS_PER_SEC, 0, NULL), 0);
  uint64_t t0 = now_ns ();
  int r = inflight_claim (d, &self, 4, 6, t0 + 300 * MS, INFLIGHT_WRITE, NULL);
  uint64_t elapsed = now_ns () - t0;
  cr_assert_eq (r, -1, "an overlapping claim must fail at its deadline");
  cr_assert_geq (elapsed, 300 * MS, "gave up after %" PRIu64 " ms, before its deadline",
                 elapsed / MS);
  cr_assert_lt (elapsed, 1300 * MS, "gave up after %" PRIu64 " ms, long after its deadline",
                elapsed / MS);
  cr_assert (claimed (5, 6, &cf, &ce) == false, "the failed claim claimed nothing");
  cr_assert (claimed (0, NR_BLOCKS, &cf, &ce));
  cr_assert_eq (cf, 2);
  inflight_release (d, &held);
}

struct waiter {
  uint64_t first, end, deadline_ns;
  unsigned flags;
  struct busy self;
  int r;
  uint64_t done_ns;
};

static void *
wait_claim (void *arg)
{
  struct waiter *w = arg;

  w->r = inflight_claim (d, &w->self, w->first, w->end, w->deadline_ns, w->flags, NULL);
  w->done_ns = now_ns ();
  return NULL;
}

Test (cor_inflight, release_wakes_a_waiter)
{
  struct busy held;
  pthread_t t;
  uint64_t cf, ce;

  cr_assert_eq (inflight_claim (d, &held, 0, 8, now_ns () + NS_PER_SEC, INFLIGHT_WRITE, NULL), 0);
  struct waiter w = { .first = 6, .end = 10, .deadline_ns = now_ns () + 10 * NS_PER_SEC,
                      .flags = INFLIGHT_WRITE };
  cr_assert_eq (pthread_create (&t, NULL, wait_claim, &w), 0);
  usleep (150 * 1000);
  cr_assert_eq (__atomic_load_n (&w.done_ns, __ATOMIC_SEQ_CST), 0, "it must wait while held");
  uint64_t released = now_ns ();
  inflight_release (d, &held);
  pthread_join (t, NULL);
  cr_assert_eq (w.r, 0, "the waiter gets the range once it is free");
  cr_assert_lt (w.done_ns - released, 2 * NS_PER_SEC,
                "woken by the release, not by its deadline 10 s away");
  cr_assert (claimed (0, NR_BLOCKS, &cf, &ce));
  cr_assert_eq (cf, 6);
  cr_assert_eq (ce, 10);
  inflight_release (d, &w.self);
}

Test (cor_inflight, missing_run_claim_skips_present_and_claimed_blocks)
{
  struct busy held, self, self2;
  uint64_t first, run = 0, cf, ce;

  meta_set (d->md, META_PRESENT, 0, 2);          /* 0, 1 present */
  meta_set (d->md, META_PRESENT, 6, 1);          /* 6 present */
  cr_assert_eq (inflight_claim (d, &held, 2, 4, now_ns () + NS_PER_SEC, 0, NULL), 0);

  pthread_mutex_lock (&d->lock);
  first = inflight_claim_missing_unlocked (d, &self, 0, NR_BLOCKS, &run);
  pthread_mutex_unlock (&d->lock);
  cr_assert_eq (first, 4, "blocks 0-1 are present and 2-3 claimed: the run starts at 4");
  cr_assert_eq (run, 6, "block 6 is present: the run ends there");
  cr_assert (claimed (4, 5, &cf, &ce));
  cr_assert_eq (cf, 4);
  cr_assert_eq (ce, 6);
  cr_assert_not (self.write, "a fetch's claim");

  /* From 2 again: 2-5 are claimed, 6 present; the next run is 7 to the end. */
  pthread_mutex_lock (&d->lock);
  first = inflight_claim_missing_unlocked (d, &self2, 2, NR_BLOCKS, &run);
  pthread_mutex_unlock (&d->lock);
  cr_assert_eq (first, 7);
  cr_assert_eq (run, NR_BLOCKS);
  inflight_release (d, &self2);
  inflight_release (d, &self);
  inflight_release (d, &held);
}

Test (cor_inflight, missing_run_claim_claims_nothing_when_none_is_free)
{
  struct busy held, self;
  uint64_t first, run = 12345, cf, ce;

  meta_set (d->md, META_PRESENT, 0, 4);
  cr_assert_eq (inflight_claim (d, &held, 4, 8, now_ns () + NS_PER_SEC, 0, NULL), 0);
  pthread_mutex_lock (&d->lock);
  first = inflight_claim_missing_unlocked (d, &self, 0, 8, &run);
  pthread_mutex_unlock (&d->lock);
  cr_assert_eq (first, 8, "nothing missing and unclaimed before the end");
  cr_assert_eq (run, 12345, "run_end untouched");
  cr_assert (claimed (0, NR_BLOCKS, &cf, &ce));
  cr_assert_eq (cf, 4, "only the held claim is in the table");
  inflight_release (d, &held);
  cr_assert_not (claimed (0, NR_BLOCKS, &cf, &ce));
}

static bool
never (const struct cor_disk *disk)
{
  (void) disk;
  return false;
}

Test (cor_inflight, claim_not_wanted_once_free_claims_nothing)
{
  struct busy self;
  uint64_t cf, ce;

  cr_assert_eq (inflight_claim (d, &self, 0, 4, now_ns () + NS_PER_SEC, 0, never), 1);
  cr_assert_not (claimed (0, NR_BLOCKS, &cf, &ce));
}

Test (cor_inflight, guest_wait_counts_in_guest_waiters)
{
  struct busy held;
  pthread_t t;

  cr_assert_eq (inflight_claim (d, &held, 0, 2, now_ns () + NS_PER_SEC, INFLIGHT_WRITE, NULL), 0);
  struct waiter w = { .first = 1, .end = 3, .deadline_ns = now_ns () + 10 * NS_PER_SEC,
                      .flags = INFLIGHT_GUEST | INFLIGHT_WRITE };
  cr_assert_eq (pthread_create (&t, NULL, wait_claim, &w), 0);
  bool seen = false;
  for (int i = 0; i < 200 && !seen; i++) {
    pthread_mutex_lock (&d->lock);
    seen = d->guest_waiters == 1 && inflight_background_yields_unlocked (d);
    pthread_mutex_unlock (&d->lock);
    if (!seen)
      usleep (10 * 1000);
  }
  cr_assert (seen, "a waiting guest claim must make the background yield");
  inflight_release (d, &held);
  pthread_join (t, NULL);
  cr_assert_eq (w.r, 0);
  cr_assert_eq (__atomic_load_n (&d->guest_waiters, __ATOMIC_SEQ_CST), 0,
                "no longer counted once it has claimed");
  inflight_release (d, &w.self);
}

Test (cor_inflight, foreground_bracket_counts_and_stamps)
{
  uint64_t t0 = now_ns ();

  inflight_fg_begin (d);
  cr_assert_eq (__atomic_load_n (&d->fg_inflight, __ATOMIC_SEQ_CST), 1);
  inflight_fg_end (d);
  cr_assert_eq (__atomic_load_n (&d->fg_inflight, __ATOMIC_SEQ_CST), 0);
  cr_assert_geq (__atomic_load_n (&d->last_fg_ns, __ATOMIC_SEQ_CST), t0);
}
