/* corfs: per-thread reuse of large I/O buffers.
 *
 * A cold read's fetch buffer, a warm read's reply buffer and a merge
 * piece are about 1 MiB each.  A buffer that size that comes from a fresh
 * mmap is faulted in and zeroed, 256 pages, before the data can land:
 * with aligned allocations (always mmap'd) perf of a cold sequential read
 * showed exc_page_fault and clear_page under the socket receive at 9-10%
 * of the machine's CPU.  glibc's malloc avoids that once its dynamic mmap
 * threshold has risen past the size, but that is a heuristic (a set
 * MALLOC_MMAP_THRESHOLD_ or another allocator turns it off).  Each
 * thread keeps up to two buffers it gave back (each up to
 * IOBUF_KEEP_MAX; a larger one replaces the smaller kept one) for its
 * next requests.  A buffer counts as the size its last user asked for,
 * never more than it is.
 *
 * Thread model: no shared state; each thread's kept buffers are its own
 * (thread-specific data, freed when the thread exits). */
#ifndef CORFS_IOBUF_H
#define CORFS_IOBUF_H

#include <stddef.h>

/* A buffer a thread keeps for reuse is at most this big. */
#define IOBUF_KEEP_MAX (4u << 20)

/* A buffer of at least len bytes (malloc's alignment), or NULL with errno.
 * Release it with iobuf_put (len the same), on any thread. */
void *iobuf_get (size_t len);

/* Give back a buffer from iobuf_get (len as asked for then).  NULL is
 * ignored. */
void iobuf_put (void *buf, size_t len);

/* Bytes of the buffers the calling thread keeps (0: none); for tests. */
size_t iobuf_kept (void);

#endif
