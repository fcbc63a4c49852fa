/* corfs: the copy-on-read engine.
 *
 * A cor_disk joins a parent (src/remote), an overlay file laid out at the
 * same offsets as the disk, and the disk's index (src/meta).  Reads fault
 * missing blocks in from the parent; writes go to the overlay and mark
 * blocks present and dirty.  One committer thread per engine makes the
 * index durable in batches (DESIGN.md rules 1 to 3 and 7).
 *
 * Threads: cor_read, cor_write and cor_flush may be called from any
 * number of threads at once (the FUSE loop's workers).  The engine creates
 * one thread, the committer, in cor_engine_start.
 */
#ifndef CORFS_COR_H
#define CORFS_COR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct cor_engine;
struct cor_disk;
struct meta;
struct meta_disk;
struct remote;

/* Create an engine over an open index.  0, or -1 with errno. */
int cor_engine_new (struct meta *m, struct cor_engine **ep);

/* Start the committer thread.  0, or -1 with errno. */
int cor_engine_start (struct cor_engine *e);

/* Stop the committer, run the final commit, close every disk (cleanly
 * unless its overlay failed or the final commit failed), and free.
 * Returns 0 if everything was closed cleanly, -1 otherwise (logged). */
int cor_engine_free (struct cor_engine *e);

struct cor_disk_config {
  const char *name;
  const char *overlay_path;     /* created sparse at the disk's size if absent */
  struct meta_disk *md;         /* ownership passes to the engine */
  struct remote *remote;        /* ownership passes to the engine */
  uint64_t hold_ns;             /* how long a guest request may wait for the parent */
};

/* Add a disk.  On success the engine owns md and remote; on failure the
 * caller still does.  0, or -1 with errno (reason logged). */
int cor_disk_add (struct cor_engine *e, const struct cor_disk_config *cfg,
                  struct cor_disk **dp);

size_t cor_disk_count (struct cor_engine *e);
/* The i'th disk, or NULL.  Disks live until cor_engine_free. */
struct cor_disk *cor_disk_get (struct cor_engine *e, size_t i);
struct cor_disk *cor_disk_find (struct cor_engine *e, const char *name);
const char *cor_disk_name (const struct cor_disk *d);
uint64_t cor_disk_size (const struct cor_disk *d);
/* Bytes of overlay storage allocated (for st_blocks). */
uint64_t cor_disk_allocated (const struct cor_disk *d);
bool cor_disk_writable (const struct cor_disk *d);

/* Read count bytes at offset into buf, fetching missing blocks first.
 * Returns the number of bytes read (less than count only at the end of
 * the disk), or -1 with *err (EIO if the parent could not supply a block
 * within the hold time: never zeros in place of data). */
ssize_t cor_read (struct cor_disk *d, void *buf, size_t count, uint64_t offset,
                  int *err);

/* Write count bytes at offset.  A partial write of a missing block fetches
 * it first.  0 or -1 with *err (EROFS when the disk is read-only, ENOSPC
 * past the end of the disk). */
int cor_write (struct cor_disk *d, const void *buf, size_t count, uint64_t offset,
               int *err);

/* Make every write answered before this call durable, data and index.
 * 0 or -1 with *err (EIO forever after an overlay sync failure). */
int cor_flush (struct cor_disk *d, int *err);

/* Status snapshot (see docs/control.md for the meaning of each field). */
struct cor_status {
  uint64_t size, block_size, nr_blocks, present_blocks, dirty_blocks;
  const char *health;           /* "rw", "ro", "failed" */
  const char *owner_state;      /* "active", "incoming", ... */
  uint64_t epoch;
  uint32_t generation;
  bool widened;                 /* the last unclean shutdown widened the maps */
  const char *parent_url;       /* credentials removed */
  const char *parent_backend;
  const char *parent_state;     /* "idle", "connected", "retrying", "down", "changed" */
  char parent_error[1280];
  uint64_t fetched_bytes, fetch_requests, fetch_errors;
  uint64_t guest_read_bytes, guest_write_bytes, flushes;
  uint64_t remote_retries, remote_reconnects;
};
void cor_disk_status (struct cor_disk *d, struct cor_status *st);

/* Call fn for each maximal extent (offset, length in bytes) of present
 * (dirty == false) or dirty blocks; stops early if fn returns -1. */
int cor_disk_extents (struct cor_disk *d, bool dirty,
                      int (*fn) (void *opaque, uint64_t offset, uint64_t length),
                      void *opaque);

/* Block arithmetic, exposed for the unit tests.  first/end are the
 * blocks [first, end) covering bytes [offset, offset + count), count > 0. */
static inline void
cor_block_range (uint64_t offset, uint64_t count, unsigned block_shift,
                 uint64_t *first, uint64_t *end)
{
  *first = offset >> block_shift;
  *end = ((offset + count - 1) >> block_shift) + 1;
}

#endif
