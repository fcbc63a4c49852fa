/* corfs: writeback, merge's and abort's primitive: copy dirty or suspect
 * present blocks to the parent, flush, then clear their bits.
 *
 * Thread model: the calling thread (a merge job, or the abort job
 * under owner_lock) and up to WB_THREADS - 1 helper threads that it
 * starts and joins before returning.  The range is owned in the
 * in-flight table throughout.  wb_copy.lock protects one call's cursor
 * and totals, and is taken by the caller and its helpers only; nothing
 * but meta's lock is taken under it (LOCK ORDER in cor-internal.h).
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "common/iobuf.h"
#include "common/log.h"
#include "common/util.h"
#include "cor/cor-internal.h"
#include "remote/remote.h"

static bool
needs_writeback (struct cor_disk *d, uint64_t blk)
{
  return meta_test (d->md, META_DIRTY, blk) || meta_test (d->md, META_SUSPECT, blk);
}

/* The copy step of cor_writeback, shared by WB_THREADS threads (the
 * caller and helpers it starts): each takes the next run of present
 * blocks needing writeback, at most WB_PIECE bytes, from cursor, and
 * copies it.  One parent request at a time made a merge wait a parent
 * round trip per MiB: 1 GiB into an NBD export answering each write 2 ms
 * late took 3.8 s that way, 1.9 s four at a time. */
#define WB_PIECE (1ULL << 20)
#define WB_THREADS 4

struct wb_copy {
  struct cor_disk *d;
  uint64_t end, deadline_ns;
  pthread_mutex_t lock;         /* protects the fields below */
  uint64_t cursor;
  int64_t written, equal;       /* bytes written; suspect bytes found equal */
  int err;                      /* the first failure; stops the others */
  bool may_compare;             /* set before the workers start */
};

/* Block b of a piece that starts at byte base: its data in buf, the
 * parent's copy in pbuf (NULL: not read).  Equal means not dirty and the
 * same bytes, so it need not be written. */
static bool
wb_block_equal (struct cor_disk *d, const char *buf, const char *pbuf, uint64_t base,
                uint64_t b)
{
  uint64_t o = block_offset (d, b) - base;

  return pbuf && !meta_test (d->md, META_DIRTY, b) &&
    memcmp (buf + o, pbuf + o, blocks_length (d, b, b + 1)) == 0;
}

/* Write the blocks of [blk, run) (their data in buf, from blk) whose
 * copy in pbuf differs, or all of them when pbuf is NULL; blocks that
 * are dirty are written whatever pbuf holds.  Adds to *written and
 * *equal.  0 or -1 with *err. */
static int
wb_write_differing (struct cor_disk *d, const char *buf, const char *pbuf,
                    uint64_t blk, uint64_t run, uint64_t deadline_ns,
                    int64_t *written, int64_t *equal, int *err)
{
  uint64_t base = block_offset (d, blk);

  while (blk < run) {
    if (wb_block_equal (d, buf, pbuf, base, blk)) {
      *equal += blocks_length (d, blk, blk + 1);
      blk++;
      continue;
    }
    uint64_t e = blk + 1, n;
    while (e < run && !wb_block_equal (d, buf, pbuf, base, e))
      e++;
    n = blocks_length (d, blk, e);
    if (remote_pwrite (d->remote, buf + (block_offset (d, blk) - base), n,
                       block_offset (d, blk), deadline_ns, err) == -1) {
      if (!*err)
        *err = EIO;
      return -1;
    }
    *written += n;
    blk = e;
  }
  return 0;
}

static void *
wb_copy_worker (void *arg)
{
  struct wb_copy *c = arg;
  struct cor_disk *d = c->d;
  uint64_t piece = WB_PIECE >> d->block_shift ? WB_PIECE >> d->block_shift : 1;

  for (;;) {
    uint64_t blk, run;
    bool compare = false;
    pthread_mutex_lock (&c->lock);
    for (blk = c->cursor; blk < c->end; blk++)
      if (needs_writeback (d, blk) && meta_test (d->md, META_PRESENT, blk))
        break;
    for (run = blk + 1; run < c->end && run - blk < piece; run++)
      if (!needs_writeback (d, run) || !meta_test (d->md, META_PRESENT, run))
        break;
    c->cursor = run;
    bool stop = c->err != 0 || blk >= c->end;
    pthread_mutex_unlock (&c->lock);
    if (stop)
      break;

    /* Suspect blocks that are not dirty (every present block after an
     * unclean shutdown, docs/design.md rule 4) are compared with the parent
     * and written only where they differ: most were fetched and never
     * written, and rewriting a whole fetched disk after each crash would
     * cost the parent as much as a full copy.  Dirty blocks are written
     * without comparing.  Only where a flush can make what we read back
     * stable (may_compare, see cor_writeback). */
    for (uint64_t b = blk; b < run && c->may_compare && !compare; b++)
      compare = !meta_test (d->md, META_DIRTY, b);

    uint64_t off = block_offset (d, blk), len = blocks_length (d, blk, run);
    int64_t written = 0, equal = 0;
    int err = 0;
    char *buf = iobuf_get (len), *pbuf = compare ? iobuf_get (len) : NULL;
    if (!buf || (compare && !pbuf))
      err = ENOMEM;
    else if (cor_overlay_read (d, buf, len, off) == -1) {
      err = errno;
      log_error ("cor: disk %s: merge: overlay read at offset %" PRIu64 ": %m", d->name, off);
    }
    else if (compare && remote_pread (d->remote, pbuf, len, off, c->deadline_ns, &err) == -1) {
      if (!err)
        err = EIO;
    }
    else
      wb_write_differing (d, buf, compare ? pbuf : NULL, blk, run, c->deadline_ns,
                          &written, &equal, &err);
    iobuf_put (pbuf, len);
    iobuf_put (buf, len);
    __atomic_fetch_add (&d->wb_written_bytes, written, __ATOMIC_RELAXED);
    pthread_mutex_lock (&c->lock);
    if (err && !c->err)
      c->err = err;
    c->written += written;
    c->equal += equal;
    pthread_mutex_unlock (&c->lock);
  }
  return NULL;
}

/* cor_writeback, and abort's copy (for_abort: abort itself marked the
 * disk handed off to hold off guest writes, and holds owner_lock). */
int64_t
cor_writeback_range (struct cor_disk *d, uint64_t first, uint64_t end, uint64_t deadline_ns,
           bool for_abort, int *err)
{
  struct busy self;
  struct wb_copy c = { .d = d, .end = end, .deadline_ns = deadline_ns, .cursor = first };
  pthread_t helpers[WB_THREADS - 1];
  int nr_helpers = 0, r = 0;
  int64_t written;
  uint64_t blk;

  r = inflight_claim (d, &self, first, end, deadline_ns, INFLIGHT_WRITE, NULL);
  if (r == -1) {
    log_error ("cor: disk %s: writeback at offset %" PRIu64 ": blocks still owned by "
               "a fetch or a write when the deadline passed", d->name, block_offset (d, first));
    *err = ETIMEDOUT;
    return -1;
  }
  /* Checked with the blocks owned: a hand-off sets the owner state
   * before it waits for every claim (inflight_own_all), so either it waits for
   * this copy, or this copy sees the disk is no longer ours to write
   * back and leaves the parent alone. */
  if (!for_abort && __atomic_load_n (&d->owner, __ATOMIC_SEQ_CST) != META_ACTIVE) {
    inflight_release (d, &self);
    log_error ("cor: disk %s: writeback at offset %" PRIu64 " refused: the disk is %s, "
               "not active", d->name, block_offset (d, first),
               meta_state_name (__atomic_load_n (&d->owner, __ATOMIC_SEQ_CST)));
    *err = EROFS;
    return -1;
  }

  /* A suspect block the parent reads back equal may hold a write that is
   * not stable there (a mirror write whose flush failed, or one by the
   * daemon that crashed); our flush covers it only if a flush covers the
   * writes of every connection.  Otherwise it is written again, which
   * our own flush does cover.  Unknown (no answer) counts as no; with
   * no suspect block in the range there is nothing to ask. */
  int e2;
  c.may_compare = meta_next (d->md, META_SUSPECT, true, first) < end &&
                  remote_flush_covers_all (d->remote, deadline_ns, &e2) == 1;

  /* Before our first write: the flush must fail if a lost connection
   * took any write issued since (whoever's flush finds it). */
  uint64_t since_ns = now_ns ();

  /* 1. Copy runs of present blocks that need it, several at once.  A
   * helper that cannot start only means fewer at once. */
  pthread_mutex_init (&c.lock, NULL);
  if (blocks_length (d, first, end) > WB_PIECE)
    for (; nr_helpers < WB_THREADS - 1; nr_helpers++)
      if (thread_create_nosig (&helpers[nr_helpers], wb_copy_worker, &c) == -1)
        break;
  wb_copy_worker (&c);
  for (int i = 0; i < nr_helpers; i++)
    pthread_join (helpers[i], NULL);
  pthread_mutex_destroy (&c.lock);
  written = c.written;
  if (c.err) {
    *err = c.err;
    r = -1;
  }
  /* 2. Make them stable on the parent; 3. only then clear the bits.
   * Blocks found equal need a flush as much as written ones, and one
   * that reaches what other connections wrote (remote_flush_all): the
   * data read back may not be stable yet. */
  if (r == 0 && (c.equal > 0 || written > 0) &&
      remote_flush_since (d->remote, c.equal > 0, since_ns, deadline_ns, err) == -1)
    r = -1;
  if (r == 0)
    for (blk = first; blk < end; blk++)
      if (needs_writeback (d, blk)) {
        meta_clear (d->md, META_DIRTY, blk, 1);
        meta_clear (d->md, META_SUSPECT, blk, 1);
      }
  inflight_release (d, &self);
  if (r == 0)
    __atomic_fetch_add (&d->wb_equal_bytes, c.equal, __ATOMIC_RELAXED);
  return r == 0 ? written + c.equal : -1;
}

int64_t
cor_writeback (struct cor_disk *d, uint64_t first, uint64_t end,
               uint64_t deadline_ns, int *err)
{
  return cor_writeback_range (d, first, end, deadline_ns, false, err);
}
