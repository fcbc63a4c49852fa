/* corfs: scope-based cleanup, as nbdkit's common/utils/cleanup.h does it. */
#ifndef CORFS_CLEANUP_H
#define CORFS_CLEANUP_H

#include <pthread.h>
#include <stdlib.h>
#include <assert.h>
#include <unistd.h>

static inline void cleanup_free (void *ptr) { free (*(void **) ptr); }
#define CLEANUP_FREE __attribute__ ((cleanup (cleanup_free)))

/* Closes a file descriptor unless it is -1. */
static inline void
cleanup_close (int *fd)
{
  if (*fd >= 0)
    close (*fd);
}
#define CLEANUP_CLOSE __attribute__ ((cleanup (cleanup_close)))

static inline void
cleanup_unlock (pthread_mutex_t **ptr)
{
  int r = pthread_mutex_unlock (*ptr);
  assert (r == 0);
  (void) r;
}
#define CLEANUP_UNLOCK __attribute__ ((cleanup (cleanup_unlock)))
#define ACQUIRE_LOCK_FOR_CURRENT_SCOPE(mutex)                       \
  CLEANUP_UNLOCK pthread_mutex_t *_lock = mutex;                    \
  do { int _r = pthread_mutex_lock (_lock); assert (_r == 0); (void) _r; } while (0)

#endif
