/* corfs: engine internals shared by engine.c and commit.c. */
#ifndef CORFS_COR_INTERNAL_H
#define CORFS_COR_INTERNAL_H

#include <pthread.h>

#include "cor/cor.h"

enum cor_health { COR_RW, COR_RO, COR_FAILED };

#define COR_STREAM_WORKERS 3
#define COR_RA_WORKERS 3        /* prefetches in flight per disk: one fewer
                                 * than NBD connections, so a guest fault
                                 * never queues behind prefetches for one */
#define COR_RA_STREAMS 4        /* sequential readers tracked per disk */
#define COR_RA_QUEUE 64

/* A range of blocks [first, end) owned by one operation (a fetch or a
 * write): the in-flight table.  Nodes live on the owner's stack. */
struct busy {
  uint64_t first, end;
  bool write;                   /* a write (guest, writeback, own_all), not a fetch */
  struct busy *next;
};

struct cor_disk {
  struct cor_engine *e;
  char *name;
  struct meta_disk *md;
  struct remote *remote;
  struct format *format;        /* the parent's reader; NULL: raw (remote_* calls) */
  int overlay_fd;
  uint64_t size, nr_blocks;
  uint32_t block_size;
  unsigned block_shift;
  uint64_t hold_ns;

  pthread_mutex_t lock;         /* protects busy; never held across I/O */
  pthread_mutex_t store_lock;   /* serialises stores of fetched data (engine.c) */
  pthread_cond_t cond;          /* broadcast when a busy range is released */
  struct busy *busy;            /* protected by lock */
  /* Exclusive operations (own_all, engine.c) waiting for the disk to
   * drain; while non-zero no new range is claimed: guests wait (within
   * their own deadline), the streamer and readahead back off, so that a
   * stream of new claims cannot starve the exclusive one.  A guest
   * request whose own deadline is before exclusive_deadline_ns (the
   * earliest waiter's; 0 while one holds the gate shut) is let through:
   * it ends first.  Changed under lock, with __atomic stores; read
   * under lock, or without it (__atomic_load) as a hint. */
  int exclusive_waiters;
  uint64_t exclusive_deadline_ns;
  /* Guest requests waiting to claim blocks (fault_in, modify,
   * read_through): the streamer and readahead back off for them as for
   * the gate, so that a large all-or-nothing claim (a discard) is not
   * starved by chunk after chunk.  Same rules as exclusive_waiters. */
  int guest_waiters;

  /* The streamer (stream.c).  Lock order: stream.lock before d->lock. */
  struct {
    pthread_mutex_t lock;       /* protects the fields below */
    pthread_cond_t cond;        /* state changes, rate changes, stop */
    int state;                  /* enum stream_state (stream.c) */
    bool workers_started, stop;
    bool finishing;             /* a worker is making completion durable */
    pthread_t workers[COR_STREAM_WORKERS];
    uint64_t rate;              /* bytes/s, 0 = unlimited */
    double tokens;              /* rate limiter; may go negative (debt) */
    uint64_t tokens_ns;         /* last refill */
    uint64_t cursor;            /* next block to look at */
    struct cor_range *hints;
    size_t nr_hints, hint_idx;
    uint64_t hint_cursor;       /* next block within hints[hint_idx] */
    uint64_t errors;
    uint64_t backoff_ns;
    char last_error[512];
    uint64_t rate_window_ns, rate_window_bytes;  /* recent throughput */
    double recent_bps;
    uint64_t last_progress_ns;
    bool release_parent;
  } stream;

  /* Readahead (readahead.c).  ra.lock protects the fields below; it is
   * taken before d->lock, never held across I/O. */
  struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;        /* work queued, or stop */
    bool started, stop;
    pthread_t workers[COR_RA_WORKERS];
    int nr_workers;             /* started */
    struct {
      uint64_t next;            /* block after the stream's last read (atomic) */
      uint64_t window;          /* blocks to keep fetched ahead */
      uint64_t issued;          /* queued up to here */
      uint64_t used;            /* last use, for replacement */
    } streams[COR_RA_STREAMS];
    uint64_t max;               /* most blocks ahead; 0: readahead off */
    uint64_t clock;
    struct { uint64_t first, end; } queue[COR_RA_QUEUE];
    size_t qhead, qlen;
  } ra;

  /* Order of guest faults, saved to trace_path at close (hints for the
   * next cold start of the same image).  Protected by lock. */
  enum cor_stream_mode start_mode;
  char *trace_path;
  struct cor_range *trace;
  size_t nr_trace;

  /* Owner state (enum meta_state), a copy of the record's for the hot
   * path.  Atomic; changed under owner_lock, which orders transitions. */
  int owner;
  pthread_mutex_t owner_lock;
  bool mirror;                  /* write mode; fixed while mounted */
  size_t index;                 /* in the engine's array (inode 2 + index) */

  /* The file's permission bits and owner, the record's (defaults
   * resolved), for getattr without an index lookup.  attr_lock is
   * held across meta_disk_set_attr's commit (before meta's lock), so
   * the cache follows the index; no owner_lock (see engine.c). */
  pthread_mutex_t attr_lock;
  uint32_t mode, uid, gid;      /* protected by attr_lock */

  /* Atomics. */
  int fg_inflight;              /* guest faults talking to the parent */
  uint64_t last_fg_ns;          /* when the last guest fault ended */
  uint64_t fg_fetched_bytes, bg_fetched_bytes, zero_skipped_bytes, streamed_bytes;
  uint64_t fault_latency[COR_LAT_BUCKETS + 1], fault_latency_sum_us;
  int needs_sync;               /* overlay written since the last fdatasync */
  int health;                   /* enum cor_health; only ever goes up */
  uint64_t fetched_bytes, fetch_requests, fetch_errors;
  uint64_t guest_read_bytes, guest_write_bytes, flushes;
  uint64_t wb_written_bytes, wb_equal_bytes;   /* cor_writeback */
  uint64_t mirror_flushed_ns;   /* when the last mirror flush began (cor_mirror_flush) */
  int store_failing;            /* the last store of fetched data failed (logged once) */
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
  void (*event_fn) (void *opaque, const struct cor_event *ev);  /* set before start */
  void *event_opaque;
  void (*invalidate_fn) (void *opaque, size_t disk_index);       /* set by src/fs */
  void *invalidate_opaque;
  int stopping;                 /* atomic: cor_engine_quiesce was called */
};


/* engine.c, for the streamer and readahead: make blocks [first, end)
 * present without waiting for busy blocks (they are someone else's).
 * The streamer's fetches skip parent zero extents; with
 * COR_POP_READAHEAD they are plain reads made on a guest's behalf
 * (traced, counted as foreground, the streamer yields to them).  Bounded
 * by deadline_ns.  Returns bytes fetched (>= 0) or -1 with *err. */
enum { COR_POP_READAHEAD = 1 };
/* With next non-NULL, *next is the first block not yet looked at: end, or
 * where it backed off for an exclusive command or a waiting guest (come
 * back there); with covered non-NULL, *covered is the bytes made present
 * (fetched or found zero). */
int64_t cor_populate (struct cor_disk *d, uint64_t first, uint64_t end,
                      uint64_t deadline_ns, unsigned flags, uint64_t *next,
                      uint64_t *covered, int *err);

/* Mirror mode: flush the parent; on failure mark every block suspect
 * (engine.c).  0 or -1 with *err. */
int cor_mirror_flush (struct cor_disk *d, int *err);

/* Start reading blocks [first, end), all present, from the overlay into
 * the page cache, without waiting for it (a hint: errors are ignored). */
void cor_overlay_willneed (struct cor_disk *d, uint64_t first, uint64_t end);

/* readahead.c.  note: a guest read of blocks [first, end) was answered;
 * may queue prefetches. */
void cor_readahead_init (struct cor_disk *d, uint64_t max_bytes);
void cor_readahead_note (struct cor_disk *d, uint64_t first, uint64_t end);
/* Stop: no new prefetch starts; join: wait for the ones running. */
void cor_readahead_stop (struct cor_disk *d);
void cor_readahead_join (struct cor_disk *d);

/* stream.c: set up from the disk config; stop the workers (they end
 * after their chunk in flight) and join them. */
int cor_stream_init (struct cor_disk *d, const struct cor_disk_config *cfg);
void cor_stream_stop (struct cor_disk *d);
void cor_stream_join (struct cor_disk *d);
/* What the streamer should do at engine start. */
void cor_stream_autostart (struct cor_disk *d, enum cor_stream_mode mode);
const char *cor_stream_state_name (struct cor_disk *d);

/* commit.c: run one group commit now (the committer thread, or the final
 * commit after it stopped).  0 or errno. */
int cor_commit_once (struct cor_engine *e);

/* Stop the committer thread and run the final commit.  0 or errno. */
int cor_engine_stop (struct cor_engine *e);

/* Mark the disk failed (sticky) after an overlay sync error. */
void cor_disk_fail (struct cor_disk *d, const char *why, int err);

#endif
