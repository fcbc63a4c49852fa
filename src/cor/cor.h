/* corfs: the copy-on-read engine.
 *
 * A cor_disk joins a parent (src/remote), an overlay file laid out at the
 * same offsets as the disk, and the disk's index (src/meta).  Reads fault
 * missing blocks in from the parent; writes go to the overlay and mark
 * blocks present and dirty.  One committer thread per engine makes the
 * index durable in batches (docs/design.md rules 1 to 3 and 7).
 *
 * Threads: cor_read, cor_read_ref, cor_write, cor_zero and cor_flush may
 * be called from any number of threads at once (the FUSE loop's workers);
 * the owner-state commands, checkpoint and the stream commands from ctl's
 * threads; cor_writeback, cor_update_record and abort's pieces
 * (cor_abort_begin, cor_abort_copy, cor_abort_end) from merge's jobs.  The
 * engine creates these threads itself:
 *   - the committer, one per engine, in cor_engine_start;
 *   - the streamer, 3 workers per disk, started once: at
 *     cor_engine_start when the disk's stream mode is on or paused (an
 *     incoming disk's at cor_activate), else at cor_stream_start;
 *   - readahead, 3 workers per disk, at the first prefetch of a disk
 *     configured with readahead;
 *   - writeback helpers, up to 3 per cor_writeback call, joined before it
 *     returns.
 * cor_engine_free and cor_engine_finish join all of them.  The lock
 * order inside the engine is written down in src/cor/cor-internal.h.
 */
#ifndef CORFS_COR_H
#define CORFS_COR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "meta/meta.h"

struct cor_engine;
struct cor_disk;
struct meta;
struct meta_record;
struct meta_disk;
struct remote;
struct format;

/* Create an engine over an open index.  0, or -1 with errno. */
int cor_engine_new (struct meta *m, struct cor_engine **ep);

/* Start the committer thread.  0, or -1 with errno. */
int cor_engine_start (struct cor_engine *e);

/* Stop the committer, run the final commit, close every disk (cleanly
 * unless its overlay failed or the final commit failed), and free.
 * Returns 0 if everything was closed cleanly, -1 otherwise (logged). */
int cor_engine_free (struct cor_engine *e);

/* cor_engine_free for an exit that leaves a job thread running (stuck in
 * the kernel: merge_stop, ctl_stop): the same stops, final commit (the
 * overlays fdatasync'd first) and clean close of every index record, but
 * nothing is freed or closed that such a thread may still use.  0 or -1
 * as cor_engine_free. */
int cor_engine_finish (struct cor_engine *e);

/* Begin shutdown, once no guest request can arrive (the FUSE session has
 * ended): tell the streamers and readahead to stop, cancel every disk's
 * parent requests in flight and later (remote_cancel: the final commit
 * needs none), and make exclusive commands and aborts that are waiting
 * or copying give up.  Nothing is joined: cor_engine_free does that. */
void cor_engine_quiesce (struct cor_engine *e);

enum cor_stream_mode { COR_STREAM_OFF, COR_STREAM_ON, COR_STREAM_PAUSED };

/* A byte range (hints, traces). */
struct cor_range {
  uint64_t offset, length;
};

struct cor_disk_config {
  const char *name;
  const char *overlay_path;     /* created sparse at the disk's size if absent */
  struct meta_disk *md;         /* ownership passes to the engine */
  struct remote *remote;        /* ownership passes to the engine */
  /* The parent's image format, opened on remote (ownership passes to
   * the engine); NULL for raw, read straight from the remote. */
  struct format *format;
  uint64_t hold_ns;             /* how long a guest request may wait for the parent */
  enum cor_stream_mode stream;  /* what cor_engine_start does with the streamer */
  uint64_t rate;                /* streamer bytes/s, 0 = unlimited */
  bool release_parent;          /* close the parent's connections once complete */
  const struct cor_range *hints;  /* streamed first, in order (copied) */
  size_t nr_hints;
  const char *trace_path;       /* where to save the order of guest faults, or NULL */
  uint64_t readahead;           /* most bytes fetched ahead of a sequential reader; 0 none */
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
/* The disk's size: its parent's, or more once grown (cor_disk_grow). */
uint64_t cor_disk_size (const struct cor_disk *d);
/* The parent's size (what its identity is pinned with). */
uint64_t cor_disk_parent_size (const struct cor_disk *d);

/* Grow the disk to new_size bytes (truncate, QEMU's block_resize): the
 * range past the old end reads zeros, is never fetched, and is marked
 * dirty and changed; the new size is durable in the index before this
 * returns (a crash leaves the old size or the new one).  Refused, with
 * the reason logged: a smaller size (EINVAL), a mirror-mode or
 * parent-owned disk, or one that is not active or standalone (incoming,
 * activating, handed off) (EPERM), a merge in progress (EBUSY), a
 * read-only or failed disk (EROFS).  The same size: 0, nothing done.
 * Any thread; waits at most the hold for the disk to drain.  0, or -1
 * with *err. */
int cor_disk_grow (struct cor_disk *d, uint64_t new_size, int *err);
/* Bytes of overlay storage allocated (for st_blocks). */
uint64_t cor_disk_allocated (const struct cor_disk *d);
bool cor_disk_writable (const struct cor_disk *d);
/* Mirror mode: guest writes go to the parent too. */
bool cor_disk_mirror (const struct cor_disk *d);

/* The disk file's permission bits and owner: as recorded by
 * cor_disk_set_attr, else mode 0600 and the daemon's uid and gid.  Any
 * thread. */
void cor_disk_attr (struct cor_disk *d, uint32_t *mode, uint32_t *uid, uint32_t *gid);

/* chmod and chown: durably record the permission bits (mode & 0777) and
 * the owner; -1 keeps a value as it is.  Independent of the owner state:
 * a read-only disk is enforced with EROFS, never through these bits.
 * Never waits for an owner-state change in progress (a handoff stuck on
 * a stalled parent): only the index's own commit.  0, or -1 with *err. */
int cor_disk_set_attr (struct cor_disk *d, int64_t mode, int64_t uid, int64_t gid,
                       int *err);

/* Read count bytes at offset into buf, fetching missing blocks first.
 * Returns the number of bytes read (less than count only at the end of
 * the disk), or -1 with *err (EIO if the parent could not supply a block
 * within the hold time: never zeros in place of data). */
ssize_t cor_read (struct cor_disk *d, void *buf, size_t count, uint64_t offset,
                  int *err);

/* Where a read's data is, for a frontend that can reply without another
 * copy: in buf + skip (fresh from the parent; the caller gives it back
 * with cor_read_ref_release), or, when buf is NULL, in the file fd at the read's own offset
 * (the overlay, to be read or spliced from).  The data at fd is what the
 * disk held when cor_read_ref returned; a write after that may change
 * it, as it may for any read racing a write. */
struct cor_read_ref {
  char *buf;                    /* release with cor_read_ref_release */
  size_t buf_len, skip;
  int fd;
  /* Optional, set by the caller: when one fetch from the parent covers
   * the whole read, deliver is called with the data as soon as it
   * arrives, before it is stored in the overlay (a cold read's reply
   * need not wait for the store), and delivered is set.  The read then
   * counts as done even if the store fails (logged; the blocks stay
   * missing and are fetched again next time). */
  void (*deliver) (void *opaque, const char *data, size_t n);
  void *opaque;
  bool delivered;
  /* Optional, set by the caller: the reader is buffered, so the kernel
   * reads ahead for it and the engine's readahead stays out of the way
   * (for it, prefetching only adds a store and a read back per byte). */
  bool kernel_reads_ahead;
};

/* cor_read, but the data stays where it is (above).  Same returns; on
 * -1 there is nothing to release (and delivered is false). */
ssize_t cor_read_ref (struct cor_disk *d, size_t count, uint64_t offset,
                      struct cor_read_ref *ref, int *err);

/* Give back ref->buf (if any) after the reply; buf is NULL after. */
void cor_read_ref_release (struct cor_read_ref *ref);

/* Copy the n bytes a cor_read_ref at offset returned into buf (from its
 * buffer, or read from the overlay).  Frees nothing.  0 or -1 (*err). */
int cor_read_ref_copy (struct cor_disk *d, const struct cor_read_ref *ref, void *buf,
                       size_t n, uint64_t offset, int *err);

/* Write count bytes at offset.  A partial write of a missing block fetches
 * it first.  0 or -1 with *err (EROFS when the disk is read-only, ENOSPC
 * past the end of the disk). */
int cor_write (struct cor_disk *d, const void *buf, size_t count, uint64_t offset,
               int *err);

/* Make every write answered before this call durable, data and index.
 * 0 or -1 with *err (EIO forever after an overlay sync failure). */
int cor_flush (struct cor_disk *d, int *err);

/* Write zeros over [offset, offset + count): blocks wholly inside are
 * punched in the overlay and marked present and dirty without a fetch;
 * partly covered missing edge blocks are fetched first, then zeroed (so
 * the whole range reads as zeros in both modes).  0 or -1 with *err. */
int cor_zero (struct cor_disk *d, uint64_t offset, uint64_t count, int *err);

/* lseek SEEK_DATA / SEEK_HOLE: a hole is reported only where every byte
 * reads as zero (a present block that is a hole in the overlay; missing
 * blocks count as data).  Returns the offset, or -1 with *err (ENXIO). */
int64_t cor_seek (struct cor_disk *d, uint64_t offset, bool data, int *err);

/* The streamer (stream.c): fills every missing block in the background,
 * hints first, then in order, yielding to guest faults, rate-limited.
 * start: begin (or restart after cancel, or resume); pause/resume/cancel
 * as named.  0, or -1 with *err (EINVAL: nothing to do / wrong state). */
int cor_stream_start (struct cor_disk *d, int *err);
int cor_stream_pause (struct cor_disk *d, int *err);
int cor_stream_resume (struct cor_disk *d, int *err);
int cor_stream_cancel (struct cor_disk *d, int *err);
void cor_stream_set_rate (struct cor_disk *d, uint64_t bytes_per_s);

/* Events, each with its name (cor_event_name: the "type" of the event's
 * JSON) and what done, total and message carry.  The engine emits:
 *   stream-progress   bytes covered, disk size   (streamer, stream.c)
 *   stream-complete   size, size                 (streamer)
 *   mirror-ready      size, size                 (streamer, mirror disks)
 *   stream-error      0, 0, the error            (streamer)
 *   activated         epoch, 0                   (cor_activate)
 *   handed-off        epoch, 0                   (cor_handoff)
 *   reclaimed         epoch, 0                   (cor_reclaim)
 *   pivoted           size, size                 (cor_pivot)
 *   aborted           0, 0                       (cor_abort, cor_abort_end)
 * and its jobs (src/merge, through cor_emit):
 *   merge-error       0, 0, the error
 *   synced            bytes, bytes
 *   flattened         bytes, bytes
 *   copy-complete     size, size, the destination
 *   copy-failed       0, 0, the error
 * fn is called on the thread that caused the event (a streamer worker, a
 * command's or job's thread): it must not block and must copy what it
 * keeps.  Set before cor_engine_start. */
enum cor_event_type {
  COR_EV_STREAM_PROGRESS, COR_EV_STREAM_COMPLETE, COR_EV_MIRROR_READY, COR_EV_STREAM_ERROR,
  COR_EV_ACTIVATED, COR_EV_HANDED_OFF, COR_EV_RECLAIMED, COR_EV_PIVOTED, COR_EV_ABORTED,
  COR_EV_MERGE_ERROR, COR_EV_SYNCED, COR_EV_FLATTENED, COR_EV_COPY_COMPLETE,
  COR_EV_COPY_FAILED,
  COR_EV_NR
};
/* The event's name, as above (the one name table). */
const char *cor_event_name (enum cor_event_type type);

struct cor_event {
  const char *type;
  const char *disk;
  uint64_t done, total;         /* bytes, for progress */
  const char *message;          /* or NULL */
};
void cor_set_event_fn (struct cor_engine *e,
                       void (*fn) (void *opaque, const struct cor_event *ev),
                       void *opaque);

/* Emit an event about d through the engine's callback (if any); for the
 * engine and its jobs (src/merge).  cor_emit takes the name (one of
 * cor_event_name's). */
void cor_emit_event (struct cor_disk *d, enum cor_event_type type, uint64_t done,
                     uint64_t total, const char *message);
void cor_emit (struct cor_disk *d, const char *type, uint64_t done, uint64_t total,
               const char *message);

/* Merge primitive (for src/merge): copy the present blocks of [first, end)
 * that are dirty or suspect to the parent, flush the parent, then clear
 * their dirty and suspect bits (docs/design.md rule 11: the clearing becomes
 * durable with the next commit).  Suspect blocks that are not dirty are
 * read from the parent first and written only where they differ (rule 4).
 * The blocks are owned in the in-flight table throughout, so a guest
 * write waits and re-dirties them after.  Dirty blocks that are not
 * present are only cleared (nothing to copy).  Returns the bytes settled
 * (written, or found equal), or -1 with *err. */
int64_t cor_writeback (struct cor_disk *d, uint64_t first, uint64_t end,
                       uint64_t deadline_ns, int *err);

/* Start a new change generation with every writer held off (new claims
 * wait while it drains the disk, at most the hold).  Returns the new
 * generation, or 0 with a one-line reason in errbuf. */
uint32_t cor_checkpoint (struct cor_disk *d, char *errbuf, size_t len);

/* Extents (first block, number of blocks) changed in generations >= since
 * (meta_changed_extents).  0, or -1 with errno (EINVAL: no such
 * generation). */
int cor_changed_extents (struct cor_disk *d, uint32_t since, bool *widened,
                         int (*fn) (void *opaque, uint64_t first_blk, uint64_t nr_blks),
                         void *opaque);

/* Block geometry and the index and parent behind a disk (for src/merge;
 * they live as long as the disk). */
unsigned cor_disk_block_shift (const struct cor_disk *d);
uint64_t cor_disk_nr_blocks (const struct cor_disk *d);
struct meta_disk *cor_disk_meta (struct cor_disk *d);
struct remote *cor_disk_remote (struct cor_disk *d);

/* The parent's image format (its reader), or NULL for a raw parent. */
struct format *cor_disk_format (struct cor_disk *d);

/* Migration switch-over (docs/design.md "Disk states" and rule 10).  Epochs
 * are chosen by the management tool, strictly increasing per disk: a
 * lower one is refused as stale, the same epoch for the same transition
 * is a no-op.
 *   activate: incoming -> active.  Refused while the parent is writable
 *     unless force.  The disk never keeps what it read while incoming, so
 *     the steps are: own every block (waits for in-flight operations),
 *     commit state=activating with the epoch, drop the kernel's page cache
 *     for the file (the callback src/fs registers), commit state=active;
 *     only then writes are accepted and the streamer starts.
 *   handoff: active -> handed-off: refuse new writes, wait for those in
 *     flight, flush, commit the state; the disk stays read-only.
 *   reclaim: handed-off -> active, with an epoch above the hand-off's.
 * 0, or -1 with a one-line reason in errbuf. */
int cor_activate (struct cor_disk *d, uint64_t epoch, bool force, char *errbuf, size_t len);
int cor_handoff (struct cor_disk *d, uint64_t epoch, char *errbuf, size_t len);
int cor_reclaim (struct cor_disk *d, uint64_t epoch, char *errbuf, size_t len);

/* Mirror (docs/design.md "Write modes"): a disk recorded with mirror=true
 * sends every guest write to the parent and the overlay before it is
 * acknowledged, while the streamer fills the overlay.
 *   pivot: once complete, detach the parent for good (standalone).
 *   abort: copy every block the parent may lack (dirty or suspect) to
 *     it, flush, then make the disk read-only (handed-off, same epoch):
 *     the parent is current and the VM can be pointed back at it.
 * 0, or -1 with a reason in errbuf. */
int cor_pivot (struct cor_disk *d, char *errbuf, size_t len);
int cor_abort (struct cor_disk *d, char *errbuf, size_t len);

/* cor_abort in its pieces, for merge's abort job (src/merge/abort.c),
 * which adds progress, status and cancel; all on one thread (abort.c):
 *   begin: take d->owner_lock and keep it; refuse unless the disk is an
 *     active mirror; own every block (waits at most the hold), then
 *     refuse new writes.  0, or -1 with errbuf (nothing held or changed).
 *   copy: copy the run [first, end) of blocks the parent may lack
 *     (cor_next_unsettled_run) to it and clear their bits, within a
 *     fresh hold; ECANCELED once the daemon is shutting down.  The bytes
 *     settled, or -1 with *err.
 *   end: with copy_err 0 (nothing left to copy): flush, pin the parent,
 *     record handed-off, cancel the streamer, emit `aborted`; with
 *     copy_err (the copy failed at block blk): make the mirror active
 *     again.  Releases owner_lock either way.  0, or -1 with errbuf.
 * cor_abort is begin, copy until no run is left, end. */
int cor_abort_begin (struct cor_disk *d, char *errbuf, size_t len);
int64_t cor_abort_copy (struct cor_disk *d, uint64_t first, uint64_t end, int *err);
int cor_abort_end (struct cor_disk *d, int copy_err, uint64_t blk, char *errbuf, size_t len);
/* Blocks per cor_abort_copy run in cor_abort (what a guest waits for at
 * most, were it not refused anyway). */
#define COR_ABORT_RUN 256

/* The one derivation of "blocks the parent may lack" (dirty or
 * suspect), for merge and abort: the first such block at or after from,
 * and in *end the end of the run of such blocks from it, at most max
 * long.  The disk's block count or more if there is none. */
uint64_t cor_next_unsettled_run (struct cor_disk *d, uint64_t from, uint64_t max,
                                 uint64_t *end);

/* Read, modify and durably write the disk's record, serialised with the
 * owner-state transitions (activate, handoff, pivot, ...) so that no
 * writer rolls back another's change.  fn returns 0 to write, 1 to
 * leave the record as it is, or -1 with a reason in errbuf.  Waits at
 * most the hold for a transition in progress, then fails (errno EAGAIN,
 * the reason in errbuf).  0 or -1. */
int cor_update_record (struct cor_disk *d,
                       int (*fn) (struct meta_record *rec, void *arg, char *errbuf, size_t len),
                       void *arg, char *errbuf, size_t len);

/* src/fs registers how to drop the kernel's cached pages of disk i. */
void cor_set_invalidate_fn (struct cor_engine *e,
                            void (*fn) (void *opaque, size_t disk_index), void *opaque);

/* May the file be opened for writing (incoming disks may: QEMU reopens
 * read-write before activation; writes then fail with EROFS)? */
bool cor_disk_openable_rw (const struct cor_disk *d);

/* One source of a disk with several (a source set, see
 * src/remote/sources.c). */
#define COR_MAX_SOURCES 8
struct cor_source_status {
  const char *url, *backend;    /* credentials removed */
  const char *state;            /* "unchecked", "ok", "failed", "mismatch" */
  uint64_t reads, bytes, errors, latency_us;
  char error[256];
};

/* A disk with several sources: add one (its URL and its own settings;
 * checked against the image's size and fingerprint first, within the
 * hold) or remove one (by its URL as status shows it, never the last),
 * and record the list.  Long: run on a ctl job thread.  0, or -1 with
 * the reason in why. */
struct remote_config;
int cor_disk_sources_add (struct cor_disk *d, const struct remote_config *src, char *why,
                          size_t len);
int cor_disk_sources_remove (struct cor_disk *d, const char *url, char *why, size_t len);

/* Status snapshot (see docs/control.md for the meaning of each field). */
struct cor_status {
  uint64_t parent_size;         /* size is the disk's: larger once grown */
  uint64_t size, block_size, nr_blocks, present_blocks, dirty_blocks, suspect_blocks;
  const char *health;           /* "rw", "ro", "failed" */
  enum meta_state owner_state;  /* meta_state_name gives its name */
  uint64_t epoch;
  uint32_t generation;
  bool widened;                 /* the last unclean shutdown widened the maps */
  const char *parent_url;       /* credentials removed */
  const char *parent_backend;
  const char *parent_format;    /* the parent's image format: "raw", "qcow2" */
  const char *parent_state;     /* "idle", "connected", "retrying", "down", "changed" */
  char parent_error[1280];
  uint64_t fetched_bytes, fetch_requests, fetch_errors;
  uint64_t guest_read_bytes, guest_write_bytes, flushes;
  uint64_t remote_retries, remote_reconnects;
  /* streamer */
  const char *stream_state;     /* "off", "running", "paused", "cancelled", "complete" */
  uint64_t stream_rate;         /* bytes/s, 0 = unlimited */
  uint64_t streamed_bytes, stream_errors;
  double stream_bytes_per_s;    /* recent progress (fetched or found zero) per second */
  double stream_fetched_bytes_per_s;    /* recent bytes fetched from the parent per second */
  int64_t eta_s;                /* missing data over the fetched rate; -1 when unknown */
  char stream_error[512];
  uint64_t foreground_fetched_bytes, background_fetched_bytes, zero_skipped_bytes;
  /* merge and abort: bytes written to the parent, and suspect bytes
   * found equal to the parent's (so not written) */
  uint64_t writeback_bytes, writeback_equal_bytes;
  /* guest fault latency histogram: counts per bucket upper bound (us) */
#define COR_LAT_BUCKETS 12
  uint64_t fault_latency[COR_LAT_BUCKETS + 1];   /* last one: +Inf */
  uint64_t fault_latency_sum_us;
  /* the sources of a disk with several, in order of preference */
  size_t nr_sources;
  struct cor_source_status sources[COR_MAX_SOURCES];
};
extern const uint64_t cor_latency_bounds_us[COR_LAT_BUCKETS];
void cor_disk_status (struct cor_disk *d, struct cor_status *st);

/* Call fn for each maximal extent (offset, length in bytes) of present
 * (dirty == false) or dirty blocks, in order, from the block holding byte
 * from_offset on (an extent running through that block is given from that
 * block); stops early if fn returns -1. */
int cor_disk_extents (struct cor_disk *d, bool dirty, uint64_t from_offset,
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
