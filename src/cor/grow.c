/* corfs: growing a disk (cor_disk_grow): truncate to a larger size, or
 * QEMU's block_resize, which truncates the file.
 *
 * The blocks past the old end are not the parent's: they read as zeros
 * and are never fetched.  The index marks them present (the overlay,
 * extended first, holds their zeros), dirty and changed, in the same
 * commit as the new size (meta_disk_grow).  The kernel learns the size
 * from the setattr reply, after that commit: a crash before it leaves the
 * old size (the longer overlay is cut back at the next open, overlay.c),
 * after it the new one.  The parent's size stays in the record beside
 * the disk's: the parent is still checked and pinned at its own size.
 *
 * A parent that does not end on a block boundary: its last block is
 * short, and its bytes past the parent's end read as zeros.  Growing
 * makes that block whole, and a fetch of it would then ask the parent
 * for bytes past its end, so it is brought in first.
 *
 * Refused: shrinking (the guest's data would go), and disks whose parent
 * is not only read by this one: a mirror (its parent is the disk, at the
 * parent's size), a parent-owned disk (the parent is written back into),
 * and disks another host may still own or write (incoming, activating,
 * handed off).  A merge in progress writes the parent: refused as well.
 *
 * Thread model: FUSE worker threads (fs_setattr).  Takes d->owner_lock
 * (outermost, waited for at most the hold, as cor_update_record does)
 * for the whole grow, so that no owner-state change or record update
 * runs meanwhile; owns every block (inflight_own_all: no guest write,
 * fetch or prefetch runs), flushes (cor_flush: nothing pending in the
 * index), then extends the overlay and commits.  d->size and
 * d->nr_blocks change with atomic stores while every block is owned;
 * lock-free readers see the old or the new value, either of which is
 * consistent (the new blocks are present before nr_blocks grows).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"
#include "cor/cor-internal.h"

/* Must be called with d->owner_lock held.  Whether the disk may grow:
 * 0, or an errno with the reason in why. */
static int
grow_refusal (struct cor_disk *d, uint64_t new_size, char *why, size_t len)
{
  struct meta_record rec;

  meta_disk_record (d->md, &rec);
  if (new_size < d->size) {
    snprintf (why, len, "shrinking is not supported (the disk is %" PRIu64 " bytes)", d->size);
    return EINVAL;
  }
  if (d->mirror) {
    snprintf (why, len, "a mirror-mode disk has its parent's size (pivot first)");
    return EPERM;
  }
  if (rec.parent_owned) {
    snprintf (why, len, "the disk is parent-owned (its blocks are merged into the parent)");
    return EPERM;
  }
  if (rec.state != META_ACTIVE && rec.state != META_STANDALONE) {
    snprintf (why, len, "the disk is %s (only an active or standalone disk grows)",
              meta_state_name (rec.state));
    return EPERM;
  }
  if (rec.merging) {
    snprintf (why, len, "a merge into the parent is in progress");
    return EBUSY;
  }
  if (__atomic_load_n (&d->health, __ATOMIC_SEQ_CST) != COR_RW) {
    snprintf (why, len, "the disk is read-only after an error");
    return EROFS;
  }
  return 0;
}

/* Must be called with d->owner_lock held.  Bring in a short last block
 * of the parent (see above), so that no fetch ever needs bytes past the
 * parent's end.  0 or an errno (why). */
static int
fetch_short_tail (struct cor_disk *d, char *why, size_t len)
{
  uint64_t last = d->nr_blocks - 1;
  char byte;
  int err = 0;

  if (d->size % d->block_size == 0 || d->nr_blocks == 0 ||
      meta_test (d->md, META_PRESENT, last))
    return 0;
  if (cor_read (d, &byte, 1, d->size - 1, &err) == -1 ||
      !meta_test (d->md, META_PRESENT, last)) {
    snprintf (why, len, "the parent's last (short) block could not be fetched first: %s",
              strerror (err ? err : EIO));
    return err ? err : EIO;
  }
  return 0;
}

/* Must be called with d->owner_lock held and every block owned.  Flush,
 * extend the overlay, commit, publish the size.  0 or an errno (why). */
static int
grow_owned (struct cor_disk *d, uint64_t new_size, char *why, size_t len)
{
  uint64_t old_size = d->size;
  struct meta_record rec;
  int err = 0;

  if (!meta_test (d->md, META_PRESENT, d->nr_blocks - 1) && d->size % d->block_size) {
    snprintf (why, len, "the parent's last (short) block is not present");
    return EIO;
  }
  if (cor_flush (d, &err) == -1) {
    snprintf (why, len, "flushing first: %s", strerror (err));
    return err;
  }
  if (cor_overlay_extend (d, new_size) == -1) {
    err = errno;
    snprintf (why, len, "extending the overlay: %s", strerror (err));
    return err;
  }
  if (meta_disk_grow (d->md, new_size, &rec) == -1) {
    err = errno;
    snprintf (why, len, "recording the size: %s", strerror (err));
    if (cor_overlay_extend (d, old_size) == -1)
      log_error ("cor: disk %s: cutting the overlay back to %" PRIu64 " bytes: %m "
                 "(the next mount does)", d->name, old_size);
    return err;
  }
  __atomic_store_n (&d->nr_blocks, meta_nr_blocks (d->md), __ATOMIC_RELEASE);
  __atomic_store_n (&d->size, rec.disk_size, __ATOMIC_RELEASE);
  return 0;
}

/* Must be called with d->owner_lock held.  0 or an errno (why). */
static int
grow_locked (struct cor_disk *d, uint64_t new_size, char *why, size_t len)
{
  struct busy self;
  int err;

  if ((err = grow_refusal (d, new_size, why, len)) != 0 || new_size == d->size)
    return err;
  if ((err = fetch_short_tail (d, why, len)) != 0)
    return err;
  if (inflight_own_all (d, &self, "grow", why, len) == -1)
    return EAGAIN;
  err = grow_owned (d, new_size, why, len);
  inflight_release (d, &self);
  return err;
}

int
cor_disk_grow (struct cor_disk *d, uint64_t new_size, int *err)
{
  uint64_t deadline_ns = now_ns () + d->hold_ns, old_size = cor_disk_size (d);
  struct timespec ts = { deadline_ns / NS_PER_SEC, deadline_ns % NS_PER_SEC };
  char why[1024] = "";
  int r;

  if (new_size == old_size)
    return 0;
  if ((r = pthread_mutex_clocklock (&d->owner_lock, CLOCK_MONOTONIC, &ts)) != 0) {
    snprintf (why, sizeof why, "an owner-state change took longer than the hold time");
    r = r == ETIMEDOUT ? EAGAIN : r;
  }
  else {
    r = grow_locked (d, new_size, why, sizeof why);
    pthread_mutex_unlock (&d->owner_lock);
  }
  if (r) {
    log_warn ("cor: disk %s: resize from %" PRIu64 " to %" PRIu64 " bytes refused: %s",
              d->name, old_size, new_size, why);
    *err = r;
    return -1;
  }
  log_info ("cor: disk %s: grown from %" PRIu64 " to %" PRIu64 " bytes (the parent's "
            "size is %" PRIu64 "); the new range reads zeros", d->name, old_size,
            new_size, d->parent_size);
  return 0;
}
