/* corfs: engine internals shared by engine.c and commit.c. */
#ifndef CORFS_COR_INTERNAL_H
#define CORFS_COR_INTERNAL_H

#include <pthread.h>

#include "cor/cor.h"

enum cor_health { COR_RW, COR_RO, COR_FAILED };

/* A range of blocks [first, end) owned by one operation (a fetch or a
 * write): the in-flight table.  Nodes live on the owner's stack. */
struct busy {
  uint64_t first, end;
  struct busy *next;
};

struct cor_disk {
  struct cor_engine *e;
  char *name;
  struct meta_disk *md;
  struct remote *remote;
  int overlay_fd;
  uint64_t size, nr_blocks;
  uint32_t block_size;
  unsigned block_shift;
  uint64_t hold_ns;

  pthread_mutex_t lock;         /* protects busy; never held across I/O */
  pthread_cond_t cond;          /* broadcast when a busy range is released */
  struct busy *busy;            /* protected by lock */

  /* Atomics. */
  int needs_sync;               /* overlay written since the last fdatasync */
  int health;                   /* enum cor_health; only ever goes up */
  uint64_t fetched_bytes, fetch_requests, fetch_errors;
  uint64_t guest_read_bytes, guest_write_bytes, flushes;
};

struct cor_engine {
  struct meta *meta;
  pthread_mutex_t lock;         /* protects everything below */
  pthread_cond_t wake;          /* the committer sleeps here */
  pthread_cond_t done;          /* flushers wait here for a commit */
  uint64_t seq_started, seq_done;
  int last_result;              /* 0 or errno of commit seq_done */
  bool requested, stop, running;
  pthread_t thread;
  struct cor_disk **disks;
  size_t nr_disks;
};

/* commit.c: run one group commit now (the committer thread, or the final
 * commit after it stopped).  0 or errno. */
int cor_commit_once (struct cor_engine *e);

/* Stop the committer thread and run the final commit.  0 or errno. */
int cor_engine_stop (struct cor_engine *e);

/* Mark the disk failed (sticky) after an overlay sync error. */
void cor_disk_fail (struct cor_disk *d, const char *why, int err);

#endif
