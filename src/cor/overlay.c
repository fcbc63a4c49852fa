/* corfs: the overlay file: stores, punches. */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "common/iobuf.h"
#include "common/log.h"
#include "common/util.h"
#include "cor/cor-internal.h"
#include "meta/meta.h"
#include "remote/remote.h"


/* Make [offset, offset + len) of the overlay read as zeros: punch a hole
 * (which also zeroes partial filesystem blocks at the edges), or write
 * zeros where the filesystem cannot punch.  0 or -1 with errno. */
int
cor_overlay_zero (struct cor_disk *d, uint64_t offset, uint64_t len)
{
  static const char zeros[65536];

  if (fallocate (d->overlay_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                 offset, len) == 0)
    return 0;
  if (errno != EOPNOTSUPP)
    return -1;
  while (len > 0) {
    size_t n = len > sizeof zeros ? sizeof zeros : len;
    if (full_pwrite (d->overlay_fd, zeros, n, offset) == -1)
      return -1;
    offset += n;
    len -= n;
  }
  return 0;
}

/* Data is written to the overlay at most this much at a time, fetched
 * data and guest writes alike.  The kernel sizes new page-cache folios by
 * the write (ext4 has large folios since Linux 6.16), and big folios cost
 * twice on the VMs this was measured on:
 *   - filling them: writing 1 GiB to a fresh ext4 file took 0.32-0.38 s
 *     in 128 or 256 KiB writes, 0.48-0.77 s in 512 KiB ones (and perf of
 *     a stream in 2 MiB writes had copy_folio_from_iter_atomic at 45%);
 *   - every later small write into one: ext4 walks all the folio's
 *     buffer heads (ext4_block_write_begin, block_commit_write), so a
 *     4 KiB write cost 4.4 us in a file written in 64 KiB pieces, 5.3 us
 *     at 128 KiB, 7.6 us at 512 KiB and 12.7 us at 1 MiB (one thread),
 *     under ext4's inode lock, which every writer of the overlay shares.
 * With lock non-NULL, each piece is written holding it.  0 or -1 with
 * errno. */
#define OVERLAY_WRITE_MAX (128 * 1024)

int
cor_overlay_pwrite (struct cor_disk *d, const char *buf, uint64_t len, uint64_t offset,
                pthread_mutex_t *lock)
{
  for (uint64_t done = 0; done < len; done += OVERLAY_WRITE_MAX) {
    size_t n = len - done > OVERLAY_WRITE_MAX ? OVERLAY_WRITE_MAX : len - done;
    if (lock)
      pthread_mutex_lock (lock);
    int r = full_pwrite (d->overlay_fd, buf + done, n, offset + done);
    if (lock)
      pthread_mutex_unlock (lock);
    if (r == -1)
      return -1;
  }
  return 0;
}

void
cor_overlay_willneed (struct cor_disk *d, uint64_t first, uint64_t end)
{
  /* The overlay's fd has POSIX_FADV_RANDOM, under which WILLNEED still
   * reads, into single pages (small folios: see OVERLAY_WRITE_MAX). */
  if ((errno = posix_fadvise (d->overlay_fd, block_offset (d, first),
                              blocks_length (d, first, end), POSIX_FADV_WILLNEED)) != 0)
    log_debug ("cor: disk %s: posix_fadvise WILLNEED at offset %" PRIu64 ": %m",
               d->name, block_offset (d, first));
}

/* Store fetched data for blocks [first, end) in the overlay: all-zero
 * blocks are punched, runs of data blocks written (*wrote_data set once
 * one was).  0 or -1 with errno. */
int
cor_overlay_store (struct cor_disk *d, const char *buf, uint64_t first, uint64_t end,
              bool *wrote_data)
{
  uint64_t base = block_offset (d, first);
  uint64_t blk = first;

  while (blk < end) {
    uint64_t off = block_offset (d, blk) - base, len = blocks_length (d, blk, blk + 1);
    bool zero = is_zero (buf + off, len);
    uint64_t run = blk + 1;
    while (run < end) {
      uint64_t o = block_offset (d, run) - base;
      if (is_zero (buf + o, blocks_length (d, run, run + 1)) != zero)
        break;
      run++;
    }
    len = blocks_length (d, blk, run);
    if (zero) {
      if (cor_overlay_zero (d, block_offset (d, blk), len) == -1)
        return -1;
    }
    else {
      /* The filesystem serialises writes to one file anyway (ext4's
       * inode lock); queueing here, asleep, instead of in the kernel,
       * where waiters spin on the lock owner, cut a cold read's CPU
       * time in half on 2 loaded cores. */
      if (cor_overlay_pwrite (d, buf + off, len, block_offset (d, blk), &d->store_lock) == -1)
        return -1;
      *wrote_data = true;
    }
    blk = run;
  }
  return 0;
}
