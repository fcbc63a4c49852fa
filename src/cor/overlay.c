/* corfs: the overlay file, and the only code that uses its fd: open and
 * size, stores of fetched data (all-zero blocks punched), guest writes
 * and punches, reads, writeout hints, sync, seek, close.
 *
 * Thread model: any engine thread, concurrently: positioned I/O needs no
 * lock.  d->store_lock serialises stores of fetched data (see
 * cor_overlay_store); nothing else is taken under it (LOCK ORDER in
 * cor-internal.h).  The caller owns the blocks it writes in the
 * in-flight table.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "cor/cor-internal.h"

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

int
cor_overlay_read (struct cor_disk *d, void *buf, uint64_t len, uint64_t offset)
{
  return full_pread (d->overlay_fd, buf, len, offset);
}

int
cor_overlay_read_ref (struct cor_disk *d, int fd, void *buf, size_t n, uint64_t offset,
                      int *err)
{
  /* A read that misses the page cache brings in the whole blocks around
   * it: the overlay has no readahead (POSIX_FADV_RANDOM, see
   * cor_overlay_open), and a guest reading at random in a small area
   * would otherwise wait for the disk once per 4 KiB.  RWF_NOWAIT tells a
   * miss without waiting; a hit costs nothing more. */
  ssize_t r = preadv2 (fd, &(struct iovec) { buf, n }, 1, offset, RWF_NOWAIT);
  if (r == (ssize_t) n)
    return 0;
  if (r > 0) {
    buf = (char *) buf + r;
    n -= r;
    offset += r;
  }
  if (r >= 0 || errno == EAGAIN) {
    uint64_t first, end;
    cor_block_range (offset, n, d->block_shift, &first, &end);
    cor_overlay_willneed (d, first, end);
  }
  if (full_pread (fd, buf, n, offset) == -1) {
    *err = errno;
    log_error ("cor: disk %s: overlay read of %zu bytes at offset %" PRIu64 ": %m",
               d->name, n, offset);
    return -1;
  }
  return 0;
}

void
cor_overlay_writeout (struct cor_disk *d, uint64_t first, uint64_t end)
{
  sync_file_range (d->overlay_fd, block_offset (d, first), blocks_length (d, first, end),
                   SYNC_FILE_RANGE_WRITE);
}

int
cor_overlay_sync (struct cor_disk *d)
{
  return fdatasync (d->overlay_fd);
}

int64_t
cor_overlay_seek (struct cor_disk *d, uint64_t pos, bool data)
{
  return lseek (d->overlay_fd, pos, data ? SEEK_DATA : SEEK_HOLE);
}

uint64_t
cor_disk_allocated (const struct cor_disk *d)
{
  struct stat st;
  return fstat (d->overlay_fd, &st) == 0 ? (uint64_t) st.st_blocks * 512 : 0;
}

/* Size a new overlay (sparse) to the disk; refuse one of another size
 * while blocks are recorded present: it is not ours, or was lost (an
 * empty file), and its blocks would read as zeros.  0 or -1 (logged). */
static int
overlay_check_size (struct cor_disk *d, const char *path, uint64_t present, uint64_t size)
{
  if (size == d->size)
    return 0;
  /* Longer, with no data past the disk's last block: a grow that
   * extended the overlay but did not reach the index (cor_disk_grow
   * extends first).  The kernel never saw that size, so nothing was
   * written past the disk's end: truncate it back, losing nothing. */
  uint64_t past = (d->size + d->block_size - 1) & ~((uint64_t) d->block_size - 1);
  if (size > d->size && present > 0 &&
      (past >= size || (lseek (d->overlay_fd, past, SEEK_DATA) == -1 && errno == ENXIO))) {
    log_warn ("cor: disk %s: overlay %s is %" PRIu64 " bytes, the disk %" PRIu64
              " (a grow that was not recorded): truncating it back", d->name, path,
              size, d->size);
    present = 0;
  }
  if (present > 0) {
    if (size == 0)
      log_error ("cor: disk %s: overlay %s is empty, but the index records %" PRIu64
                 " blocks present in it (was it lost or replaced?); refusing to serve "
                 "zeros for them", d->name, path, present);
    else
      log_error ("cor: disk %s: overlay %s has size %" PRIu64 " but the disk is %"
                 PRIu64 " bytes", d->name, path, size, d->size);
    errno = EINVAL;
    return -1;
  }
  if (ftruncate (d->overlay_fd, d->size) == -1 || fsync (d->overlay_fd) == -1) {
    log_error ("cor: disk %s: sizing overlay %s: %m", d->name, path);
    return -1;
  }
  return 0;
}

int
cor_overlay_extend (struct cor_disk *d, uint64_t size)
{
  /* fsync, not fdatasync: the size is what must be durable. */
  if (ftruncate (d->overlay_fd, size) == -1 || fsync (d->overlay_fd) == -1)
    return -1;
  return 0;
}

int
cor_overlay_open (struct cor_disk *d, const char *path)
{
  struct stat st;

  /* Only a disk with nothing present may get a new overlay: where the
   * index records present blocks, a missing overlay is lost data, not a
   * file to create. */
  uint64_t present = meta_count (d->md, META_PRESENT);
  d->overlay_fd = open (path, O_RDWR | O_CLOEXEC | O_NOFOLLOW | (present ? 0 : O_CREAT), 0600);
  if (d->overlay_fd == -1 || fstat (d->overlay_fd, &st) == -1) {
    if (present)
      log_error ("cor: disk %s: overlay %s: %m; the index records %" PRIu64 " blocks "
                 "present in it", d->name, path, present);
    else
      log_error ("cor: disk %s: overlay %s: %m", d->name, path);
    return -1;
  }
  if (overlay_check_size (d, path, present, st.st_size) == -1)
    return -1;
  /* No readahead on the overlay: every read of it is already as large as
   * its reader wants (the FUSE request, which the kernel's readahead on
   * the disk file sized), and ext4's readahead fills 2 MiB folios, which
   * make each later small write into them cost ~10x (see
   * OVERLAY_WRITE_MAX): 4 KiB random writes through the mount fell from
   * 152k to 31k IOPS after a warm sequential read.  Reading 1 GiB in
   * 1 MiB preads from a cold ext4 file measured 1314-1382 MB/s with this
   * advice, 541-1101 MB/s without.  Advice only: a failure costs speed. */
  if ((errno = posix_fadvise (d->overlay_fd, 0, 0, POSIX_FADV_RANDOM)) != 0)
    log_debug ("cor: disk %s: posix_fadvise RANDOM on the overlay: %m", d->name);
  return 0;
}

void
cor_overlay_close (struct cor_disk *d)
{
  if (d->overlay_fd >= 0 && close (d->overlay_fd) == -1)
    log_error ("cor: disk %s: closing the overlay: %m", d->name);
  d->overlay_fd = -1;
}

int
cor_overlay_fd (const struct cor_disk *d)
{
  return d->overlay_fd;
}
