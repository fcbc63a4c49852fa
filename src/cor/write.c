/* corfs: the write path: guest writes and zeroing (modify), mirror
 * writes to the parent and the overlay, and the mirror flush.
 *
 * Thread model: FUSE worker threads, many at once; a write owns its whole
 * range in the in-flight table (inflight_claim, with the hold as its
 * deadline) and takes no lock of its own (LOCK ORDER in cor-internal.h).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"
#include "cor/cor-internal.h"
#include "remote/remote.h"

/* Mirror mode: make the parent's copies of acknowledged writes stable.
 * mirror_write marks a block clean as soon as both writes returned, so a
 * failed flush (the parent, or a connection that held unflushed writes,
 * went away) leaves clean blocks the parent may lack: every block is
 * then marked suspect, which abort (and merge) copy to the parent again
 * and mirror writes never clear.  Coarse, and only on a failure (which
 * blocks were on a lost connection is not known).  A loss found by
 * another flush (a merge or abort chunk's) fails this one too when it may
 * hold writes issued since the previous mirror flush began
 * (remote_flush_since).  A parent that offers no flush fails every one
 * (EOPNOTSUPP).  0 or -1 with *err. */
int
cor_mirror_flush (struct cor_disk *d, int *err)
{
  /* The writes this flush must cover were issued after the last flush
   * began: that one covered (or, failing, marked suspect) every write
   * issued before it. */
  uint64_t start = now_ns (), since = __atomic_load_n (&d->mirror_flushed_ns, __ATOMIC_SEQ_CST);
  int r = remote_flush_since (d->remote, false, since, start + d->hold_ns, err);

  /* Advance, never back (flushes may overlap). */
  while (since < start &&
         !__atomic_compare_exchange_n (&d->mirror_flushed_ns, &since, start, false,
                                       __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
    ;
  if (r == 0)
    return 0;
  meta_set (d->md, META_SUSPECT, 0, d->nr_blocks);
  log_error ("cor: disk %s: mirror: flushing the parent %s failed (%s); every block "
             "is marked suspect, for abort to copy again", d->name,
             remote_url (d->remote), strerror (*err));
  return -1;
}

/* Mirror mode, with blocks [first, end) owned and partial edge blocks
 * present: the block is dirty (in memory) from before either write until
 * both succeeded; an overlay failure drops the blocks from the overlay
 * (not present: reads go to the parent, which has the data if its write
 * succeeded); a parent failure leaves them dirty for abort.  The write
 * is acknowledged only when both have it.  0 or -1 (*err).
 *
 * The dropped blocks are not punched: the cleared present bit reaches
 * the index only with the next commit (up to COMMIT_INTERVAL_S later),
 * and a crash before it would leave a present block reading zeros where
 * the guest never wrote any (abort would then copy those zeros to the
 * parent).  Unpunched, each byte of the range holds its old data or this
 * unacknowledged write's, whichever index survives; forcing a commit
 * first instead would mean an fdatasync of the overlay that just failed.
 * The space is reused when the blocks are fetched again. */
static int
mirror_write (struct cor_disk *d, const void *buf, uint64_t count, uint64_t offset,
              uint64_t first, uint64_t end, uint64_t deadline_ns, int *err)
{
  uint64_t nr = end - first;
  bool *was_dirty = malloc (nr);
  bool zeros = !buf;
  int r = 0, oerr = 0;

  if (!was_dirty) {
    *err = ENOMEM;
    return -1;
  }
  for (uint64_t b = 0; b < nr; b++)
    was_dirty[b] = meta_test (d->md, META_DIRTY, first + b);
  meta_set (d->md, META_DIRTY, first, nr);
  meta_set (d->md, META_CHANGED, first, nr);
  /* A discard may cover GiBs (fstrim, mkfs): the parent zeroes the range
   * itself where it can, else it is sent from a small buffer. */
  if ((zeros ? remote_pwrite_zeros (d->remote, offset, count, deadline_ns, err)
       : remote_pwrite (d->remote, buf, count, offset, deadline_ns, err)) == -1) {
    log_error ("cor: disk %s: mirror: parent %s of %" PRIu64 " bytes at offset %"
               PRIu64 " failed; the blocks stay dirty (abort will copy them)",
               d->name, zeros ? "zeroing" : "write", count, offset);
    r = -1;
  }
  if ((zeros ? cor_overlay_zero (d, offset, count)
       : cor_overlay_pwrite (d, buf, count, offset, NULL)) == -1) {
    oerr = errno;
    log_error ("cor: disk %s: mirror: overlay write at offset %" PRIu64 ": %s; "
               "dropping the blocks from the overlay", d->name, offset, strerror (oerr));
    meta_clear (d->md, META_PRESENT, first, nr);
    if (r == 0)
      *err = oerr;
    r = -1;
  }
  else {
    __atomic_store_n (&d->needs_sync, 1, __ATOMIC_SEQ_CST);
    meta_set (d->md, META_PRESENT, first, nr);
  }
  if (r == 0) {
    /* Both have it: the blocks are clean again, unless an earlier failed
     * parent write left other bytes of them different. */
    for (uint64_t b = 0; b < nr; b++)
      if (!was_dirty[b])
        meta_clear (d->md, META_DIRTY, first + b, 1);
    if (!zeros)
      __atomic_fetch_add (&d->guest_write_bytes, count, __ATOMIC_RELAXED);
  }
  free (was_dirty);
  return r;
}

/* The guest write path, for data (buf) or zeros (buf == NULL): own the
 * blocks, fetch missing partly covered edge blocks, set dirty and changed
 * (intent), change the overlay, set present.  One deadline, the hold from
 * now, bounds all of it: the wait for blocks that a streamer chunk, a
 * prefetch or another write owns (whose own deadlines may be later), and
 * the edge fetches after it.  0 or -1 with *err. */
static int
modify (struct cor_disk *d, const void *buf, uint64_t count, uint64_t offset, int *err)
{
  uint64_t first, end, last, deadline_ns = now_ns () + d->hold_ns;
  struct busy self;
  int r = 0;

  if (!cor_disk_writable (d)) {
    *err = EROFS;               /* failed, incoming or handed off */
    return -1;
  }
  if (count == 0)
    return 0;
  if (offset >= d->size || count > d->size - offset) {
    *err = ENOSPC;
    return -1;
  }
  cor_block_range (offset, count, d->block_shift, &first, &end);
  last = end - 1;

  r = inflight_claim (d, &self, first, end, deadline_ns, INFLIGHT_GUEST | INFLIGHT_WRITE, NULL);
  if (r == -1) {
    log_error ("cor: disk %s: %s of %" PRIu64 " bytes at offset %" PRIu64 ": its blocks "
               "were still owned by a fetch from the parent %s, another write or an "
               "exclusive command when its hold time ran out", d->name,
               buf ? "write" : "zero", count, offset, remote_url (d->remote));
    *err = EIO;
    return -1;
  }
  /* A hand-off may have begun while we waited: it owns the order. */
  if (!cor_disk_writable (d)) {
    inflight_release (d, &self);
    *err = EROFS;
    return -1;
  }

  /* Partly covered edge blocks that are missing keep their other bytes:
   * fetch them first.  Blocks covered whole are never fetched. */
  inflight_fg_begin (d);
  if (!meta_test (d->md, META_PRESENT, first) &&
      (offset != block_offset (d, first) ||
       offset + count < block_offset (d, first) + blocks_length (d, first, first + 1)))
    r = cor_fetch_blocks (d, first, first + 1, deadline_ns, NULL, NULL, NULL, err);
  if (r == 0 && last != first && !meta_test (d->md, META_PRESENT, last) &&
      offset + count < block_offset (d, last) + blocks_length (d, last, last + 1))
    r = cor_fetch_blocks (d, last, last + 1, deadline_ns, NULL, NULL, NULL, err);
  inflight_fg_end (d);

  if (r == 0 && d->mirror) {
    r = mirror_write (d, buf, count, offset, first, end, deadline_ns, err);
    inflight_release (d, &self);
    return r;
  }
  if (r == 0) {
    meta_set (d->md, META_DIRTY, first, end - first);
    meta_set (d->md, META_CHANGED, first, end - first);
    if ((buf ? cor_overlay_pwrite (d, buf, count, offset, NULL)
         : cor_overlay_zero (d, offset, count)) == -1) {
      *err = errno;
      log_error ("cor: disk %s: overlay %s of %" PRIu64 " bytes at offset %" PRIu64 ": %m",
                 d->name, buf ? "write" : "zero", count, offset);
      r = -1;
    }
    else {
      __atomic_store_n (&d->needs_sync, 1, __ATOMIC_SEQ_CST);
      meta_set (d->md, META_PRESENT, first, end - first);
      if (buf)
        __atomic_fetch_add (&d->guest_write_bytes, count, __ATOMIC_RELAXED);
    }
  }
  inflight_release (d, &self);
  return r;
}

int
cor_write (struct cor_disk *d, const void *buf, size_t count, uint64_t offset,
           int *err)
{
  return modify (d, buf, count, offset, err);
}

int
cor_zero (struct cor_disk *d, uint64_t offset, uint64_t count, int *err)
{
  return modify (d, NULL, count, offset, err);
}
