/* corfs: engine internals shared by the engine's files (src/cor).
 *
 * Design notes.
 *
 * Blocks are block_size bytes (a power of two, 4 KiB to 4 MiB); the last
 * block of a disk may be short.  The overlay file has the disk's size and
 * holds each block at the disk's offset, so a complete overlay is the raw
 * image and SEEK_DATA/SEEK_HOLE work on it.
 *
 * Invariants:
 *   - A block is marked present only after its data is in the overlay
 *     (the write returned), and becomes durable in the index only after
 *     the committer's fdatasync (commit.c).
 *   - One operation per block at a time (docs/design.md rule 5): a fetch or a
 *     write owns its blocks in the in-flight table ("busy" ranges) from
 *     before it starts until its bits are set; so does an incoming disk's
 *     read-through for the time of its parent read (see read_through).
 *     A fetch claims only blocks that are neither present nor busy, so
 *     it never overwrites newer guest data; a reader that finds a
 *     missing block busy waits for it, so each block is fetched once
 *     however many readers want it.
 *   - Writes claim their whole range at once, waiting until no part of it
 *     is busy (all or nothing, so two writers cannot deadlock).  A write
 *     whose first or last block is missing and only partly covered fetches
 *     that block first; blocks covered whole are never fetched.
 *   - Every guest request has one deadline, its hold from when the engine
 *     got it; every wait and fetch it makes ends by then (EIO), whatever
 *     the owner of a busy block (a streamer chunk, a prefetch) was given.
 *   - Exclusive operations (activate, handoff, pivot, abort) own every
 *     block (inflight_own_all).  While one waits for the claims in flight to end,
 *     the gate (exclusive_waiters) holds off new ones: guests wait within
 *     their deadline, the streamer and readahead back off.  A guest whose
 *     own deadline is before the operation's passes (it ends first; the
 *     gate would only turn it into an EIO).  It waits at most the hold,
 *     then fails with nothing changed.  checkpoint waits only for write
 *     claims (fetches never touch dirty or changed bits) and holds the
 *     gate shut, claiming nothing, while it switches generations.
 *   - A guest that must wait to claim a range (a write or discard, which
 *     claim all or nothing; an incoming read-through) counts in
 *     guest_waiters meanwhile, and the streamer and readahead back off
 *     for it as for the gate: otherwise their chunks, one after another,
 *     would keep a large range from ever being free at once.
 *   - All-zero fetched blocks are punched rather than written, which keeps
 *     the overlay sparse and also clears whatever an earlier, uncommitted
 *     write left there.
 *   - Dirty and changed bits are set before the overlay write (intent;
 *     they may over-count after a failed write, never under-count), present
 *     after it.  Crashes are covered by meta's unclean-shutdown widening.
 *
 * Threads.  The engine's callers: FUSE worker threads (cor_read,
 * cor_write, cor_zero, cor_flush, many at once), ctl's command and job
 * threads (owner-state changes, checkpoint, stream commands, status) and
 * merge's job threads (cor_writeback, cor_update_record, abort's pieces).  The threads
 * the engine creates itself:
 *   - the committer, one per engine (commit.c, cor_engine_start);
 *   - the streamer, COR_STREAM_WORKERS per disk, on the first start
 *     (stream.c);
 *   - readahead, COR_RA_WORKERS per disk, on the first prefetch
 *     (readahead.c);
 *   - writeback helpers, up to WB_THREADS - 1 per cor_writeback call,
 *     joined before it returns (writeback.c).
 * Streamer and readahead threads are joined at cor_engine_free/finish,
 * the committer stops last (its final commit).
 *
 * LOCK ORDER (outermost first; a lock is only ever taken while holding
 * locks above it in this list, never below):
 *
 *   d->owner_lock       orders the record's writers: owner-state changes
 *                       (owner.c, pivot.c, abort.c), cor_update_record,
 *                       and the mirror's identity sealed at shutdown
 *                       (owner.c).  Abort holds it from
 *                       cor_abort_begin to cor_abort_end, on a merge
 *                       job's thread, and takes only that job's leaf
 *                       mg->lock (src/merge) under it between runs.
 *     d->stream.lock    the streamer's fields (stream.c)
 *     d->ra.lock        readahead's queue (readahead.c); these two are
 *                       never held together, nor under owner_lock
 *       d->lock         the in-flight table, the gate and the waiter
 *                       counts (inflight.c); never held across I/O
 *     d->attr_lock      the cached mode and owner (owner.c); only meta's
 *                       lock is taken under it
 *     d->store_lock     one overlay store of fetched data at a time
 *                       (overlay.c); nothing is taken under it
 *     wb_copy.lock      one cor_writeback's cursor (writeback.c)
 *     e->lock           the committer's sequence (commit.c): cor_flush
 *                       takes it, and waits on e->done, under owner_lock
 *         meta's lock   innermost (src/meta), taken by meta_* calls under
 *                       any of the above
 *
 * What waits under owner_lock, and why it is held so long.  A transition
 * holds it for its whole run so that no other writer of the record sees
 * it half done (or rolls it back with an older copy): activate holds it
 * across remote I/O (is the parent writable, can it flush, the re-pin),
 * handoff across the flush and a mirror's re-pin, reclaim across a
 * mirror's verify, abort across its whole copy, the flush and the re-pin
 * (from cor_abort_begin to cor_abort_end, on its job's thread), pivot
 * across the flush.  Under it they also wait for the in-flight
 * claims to drain (inflight_own_all, at most the hold) and for the
 * committer (cor_flush).  Every one of these waits has a deadline (the
 * hold), and the daemon's shutdown cuts them short (stopping,
 * remote_cancel).  The other side waits for owner_lock with a deadline
 * too: cor_update_record (ctl's record commands, merge's merging mark,
 * and the streamer's completion, stream.c finish, which holds no stream
 * lock meanwhile) waits at most the hold and fails with EAGAIN; the
 * mirror seal at cor_engine_quiesce waits at most min(hold, 5 s) and then
 * records nothing.  cor_disk_set_attr (chmod, chown) takes no owner_lock
 * at all: meta changes mode and owner alone and keeps them from older
 * record copies, and chmod must never wait for a stalled hand-off.
 *
 * d->lock waiters sleep on d->cond (CLOCK_MONOTONIC: deadlines come from
 * now_ns), broadcast whenever a busy range is released or the gate opens.
 * Exclusive operations run on ctl's job threads (one per disk at a time),
 * abort on a merge job's thread (src/merge/abort.c) while ctl's command
 * waits for it.
 */
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
  bool write;                   /* a write (guest, writeback, inflight_own_all), not a fetch */
  struct busy *next;
};

struct cor_disk {
  struct cor_engine *e;
  char *name;
  struct meta_disk *md;
  struct remote *remote;
  struct format *format;        /* the parent's reader; NULL: raw (remote_* calls) */
  int overlay_fd;
  /* The disk's size and blocks: they grow (cor_disk_grow, atomic stores,
   * with every block owned), never shrink.  parent_size is the parent's,
   * fixed: the size its identity is pinned with. */
  uint64_t size, nr_blocks;
  uint64_t parent_size;
  uint32_t block_size;
  unsigned block_shift;
  uint64_t hold_ns;

  pthread_mutex_t lock;         /* protects busy; never held across I/O */
  pthread_mutex_t store_lock;   /* serialises stores of fetched data (overlay.c) */
  pthread_cond_t cond;          /* broadcast when a busy range is released */
  struct busy *busy;            /* protected by lock */
  /* Exclusive operations (inflight_own_all) waiting for the disk to
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
    /* Recent throughput over a window of about 2 s: bytes made present
     * (fetched or found zero), and bytes fetched alone. */
    uint64_t rate_window_ns, rate_window_bytes, rate_window_fetched;
    double recent_bps, recent_fetched_bps;
    /* Since the mount: bytes the streamer made present, and of those the
     * ones it fetched: their ratio estimates how much of what is missing
     * is data (the ETA's numerator). */
    uint64_t covered_total, fetched_total;
    /* The survey (survey.c): started once; when done, the missing bytes
     * the parent promised as zeros, and zero_skipped_bytes then. */
    bool survey_started, survey_done;
    uint64_t survey_zero, survey_skipped0;
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
   * the cache follows the index; no owner_lock (see owner.c). */
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


/* populate.c, for the streamer and readahead: make blocks [first, end)
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
 * (write.c).  0 or -1 with *err. */
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

/* Block arithmetic. */
static inline uint64_t
block_offset (const struct cor_disk *d, uint64_t blk)
{
  return blk << d->block_shift;
}

/* Bytes of blocks [first, end), the last one possibly short. */
static inline uint64_t
blocks_length (const struct cor_disk *d, uint64_t first, uint64_t end)
{
  uint64_t e = block_offset (d, end);
  return (e > d->size ? d->size : e) - block_offset (d, first);
}

/* inflight.c: the in-flight table and the gate, under d->lock.  Functions
 * named *_unlocked must be called with d->lock held; the others take it.
 * A struct busy lives on its claimer's stack from the claim to
 * inflight_release. */

/* The busy range overlapping [first, end), or NULL. */
struct busy *inflight_find_unlocked (struct cor_disk *d, uint64_t first, uint64_t end);
/* Add self = [first, end) to the table.  write: the owner changes data
 * or the dirty/changed bits (not a fetch); checkpoint waits only for
 * these. */
void inflight_claim_unlocked (struct cor_disk *d, struct busy *self, uint64_t first,
                              uint64_t end, bool write);
/* Remove self from the table and wake every waiter. */
void inflight_release (struct cor_disk *d, struct busy *self);
/* Is a guest request with deadline_ns held off by the gate?  Not if its
 * deadline is before the exclusive operation's (it ends first). */
bool inflight_gated_unlocked (const struct cor_disk *d, uint64_t deadline_ns);
/* Should the streamer and readahead back off (an exclusive operation or
 * a guest waits to claim blocks)? */
bool inflight_background_yields_unlocked (const struct cor_disk *d);
/* Sleep (d->lock dropped) until a range is released, the gate changes or
 * deadline_ns.  0, or -1 without sleeping once the deadline has passed. */
int inflight_wait_unlocked (struct cor_disk *d, uint64_t deadline_ns);

/* Claim a range and wait with a deadline: claim [first, end) whole,
 * waiting while any of it is busy or the gate holds it off (all or
 * nothing, so two claimers cannot deadlock), until deadline_ns.  With
 * INFLIGHT_GUEST the wait counts in guest_waiters (the streamer gives way
 * to it: otherwise a large range would rarely be free all at once); with
 * INFLIGHT_WRITE the claim is a write's.  still_wanted, if not NULL, is
 * asked under d->lock once the range is free: false claims nothing.
 * 0 (claimed), 1 (not wanted any more), or -1 if the deadline passed
 * first (nothing claimed). */
enum { INFLIGHT_GUEST = 1, INFLIGHT_WRITE = 2 };
int inflight_claim (struct cor_disk *d, struct busy *self, uint64_t first, uint64_t end,
                    uint64_t deadline_ns, unsigned flags,
                    bool (*still_wanted) (const struct cor_disk *d));

/* Claim the missing run, for a fetch: from blk on, the first block before
 * end that is neither present nor busy, and the blocks after it up to the
 * next present or busy one (or end).  Never waits: busy blocks are
 * someone else's.  Returns the run's first block with *run_end its end,
 * or end when there is none (nothing claimed). */
uint64_t inflight_claim_missing_unlocked (struct cor_disk *d, struct busy *self, uint64_t blk,
                                          uint64_t end, uint64_t *run_end);

/* The foreground bracket, around a guest's (or readahead's) talk to the
 * parent: the streamer gives way while fg_inflight is non-zero and for a
 * while after last_fg_ns (stream.c). */
void inflight_fg_begin (struct cor_disk *d);
void inflight_fg_end (struct cor_disk *d);

/* Own every block for an exclusive operation (what names it in the
 * reason): close the gate, wait at most the hold for the claims in
 * flight, claim [0, nr_blocks) as a write.  0, or -1 with a reason in
 * errbuf (logged) and nothing owned.  Release with inflight_release. */
int inflight_own_all (struct cor_disk *d, struct busy *self, const char *what, char *errbuf,
                      size_t len);
/* The same, for a guest request (a grow): waits until its deadline_ns
 * instead of a fresh hold, so the request ends within its own hold. */
int inflight_own_all_by (struct cor_disk *d, struct busy *self, const char *what,
                         uint64_t deadline_ns, char *errbuf, size_t len);
/* checkpoint's hold: wait at most the hold for the write claims in flight
 * and keep the gate shut (no claim passes) until inflight_gate_release.
 * 0 or -1 as inflight_own_all. */
int inflight_hold_writers (struct cor_disk *d, const char *what, char *errbuf, size_t len);
void inflight_gate_release (struct cor_disk *d);

/* overlay.c */
int cor_overlay_zero (struct cor_disk *d, uint64_t offset, uint64_t len);
int cor_overlay_pwrite (struct cor_disk *d, const char *buf, uint64_t len, uint64_t offset,
                        pthread_mutex_t *lock);
int cor_overlay_store (struct cor_disk *d, const char *buf, uint64_t first, uint64_t end,
                       bool *wrote_data);

/* The overlay's file descriptor, for the rest of the engine (only
 * overlay.c uses d->overlay_fd).  Reads: count bytes at offset, 0 or -1
 * with errno; read_ref: a guest read's (fd: the ref's), bringing the
 * blocks around a page-cache miss in (-1 logged, *err).  writeout: start
 * writing blocks [first, end) back (a hint).  seek: lseek SEEK_DATA or
 * SEEK_HOLE.  open: open, create (only while nothing is present) and size
 * it; -1 logged.  close: safe on a disk whose overlay never opened. */
int cor_overlay_read (struct cor_disk *d, void *buf, uint64_t len, uint64_t offset);
int cor_overlay_read_ref (struct cor_disk *d, int fd, void *buf, size_t n, uint64_t offset,
                          int *err);
void cor_overlay_writeout (struct cor_disk *d, uint64_t first, uint64_t end);
int cor_overlay_sync (struct cor_disk *d);
int64_t cor_overlay_seek (struct cor_disk *d, uint64_t pos, bool data);
int cor_overlay_open (struct cor_disk *d, const char *path);
/* Set the overlay's size (a grow: larger; undoing one: back) and make it
 * durable.  0 or -1 with errno. */
int cor_overlay_extend (struct cor_disk *d, uint64_t size);
void cor_overlay_close (struct cor_disk *d);
/* For a reader that reads or splices the overlay itself (cor_read_ref). */
int cor_overlay_fd (const struct cor_disk *d);

/* io.c */
/* A cold read's reply, sent from the fetch buffer before the store (see
 * struct cor_read_ref): count bytes from skip into the buffer. */
struct early_reply {
  void (*fn) (void *opaque, const char *data, size_t n);
  void *opaque;
  size_t skip, count;
  bool done;
};
int cor_fetch_blocks (struct cor_disk *d, uint64_t first, uint64_t end, uint64_t deadline_ns,
                      char **keep, struct early_reply *early, bool *unstored, int *err);
/* The parent's bytes and zero extents at the disk's offsets: through its
 * image format's reader (qcow2), else straight from the remote (raw, as
 * before formats existed).  As remote_pread and remote_zero_extents (the
 * format's extents are clipped to the parent's size). */
struct remote_extent;
int cor_parent_pread (struct cor_disk *d, void *buf, size_t count, uint64_t offset,
                      uint64_t deadline_ns, int *err);
int cor_parent_zero_extents (struct cor_disk *d, uint64_t offset, uint64_t count,
                             uint64_t deadline_ns, struct remote_extent **z, size_t *nz,
                             int *err);
void cor_trace_fault_unlocked (struct cor_disk *d, uint64_t first, uint64_t end);

/* writeback.c */
int64_t cor_writeback_range (struct cor_disk *d, uint64_t first, uint64_t end,
                             uint64_t deadline_ns, bool for_abort, int *err);

/* owner.c */
const char *cor_repin_why (struct cor_disk *d, int err, char *buf, size_t len);
/* At mount, finish an activation that a crash interrupted (rec: the
 * record, state activating): pin the parent and record state active, or
 * incoming again if it cannot be pinned.  0, or -1 (logged) if the
 * record could not be written. */
int cor_resume_activation (struct cor_disk *d, struct meta_record *rec);
void cor_seal_mirror (struct cor_disk *d);
void cor_attr_from_record (struct cor_disk *d, const struct meta_record *rec);

/* survey.c: the missing bytes the parent promises read as zeros, into
 * *zero_missing (asks the parent: no lock held).  false when the stream
 * stopped or the parent could not tell. */
bool cor_stream_survey (struct cor_disk *d, uint64_t *zero_missing);
/* sources.c: a source set's changes (a source failed, refused, back,
 * added, removed) become events of d (source-*), from whichever thread
 * found them.  After the disk is complete; the set stops calling at
 * remote_close. */
void cor_sources_watch (struct cor_disk *d);

#endif
