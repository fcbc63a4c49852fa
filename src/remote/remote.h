/* corfs: parents ("remotes") behind one ops table.
 *
 * A remote is opened from a URL, and the backend chosen by its scheme:
 *   file:///path                          a local image or block device (file.c)
 *   nbd://host[:port]/export, nbds://...,
 *   nbd+unix:///export?socket=PATH        NBD through libnbd (nbd.c)
 *   http(s)://..., s3://bucket/key        HTTP range requests and S3 through
 *                                         libcurl (http.c)
 *   nfs://server/export/path/file         NFSv3 or v4 through libnfs (nfs.c)
 * Callers use the remote_* wrappers below, never the ops pointers: the
 * wrappers check the contract, retry transient failures with exponential
 * backoff and jitter until the caller's deadline (one loop and one policy
 * for every request: retry.c), keep the parent's state for status, and
 * pin its identity.  Each NBD, HTTP and NFS remote keeps its connections
 * in a pool (pool.c), one request per connection at a time.
 *
 * Contract of every read: all count bytes or an error; never a short read,
 * never zeros in place of data (docs/design.md rule 6).
 *
 * Identity (docs/design.md rule 9): each backend produces an identity string
 * on every (re)connect ("file:dev=..,ino=..,size=..,mtime=..",
 * "nbd:size=..,sample=..", "http:size=..,etag=..", "nfs:size=..,fileid=.."),
 * and the wrapper compares it with the pinned one: a mismatch fails
 * closed with ESTALE ("parent changed") and is never retried.
 *
 * Threads: every function may be called from any thread, concurrently
 * (the engine's fault path, the streamer and readahead workers, merge
 * jobs, the control thread).  None calls back into the caller.  The
 * callers hold no engine lock across a call, except d->owner_lock in the
 * owner-state changes (activate, hand-off, reclaim, re-pin, abort): the
 * remote's own locks are leaves below it.
 *
 * Blocking: a call that takes deadline_ns (CLOCK_MONOTONIC) returns by
 * then, give or take one attempt's slack: each attempt is bounded by
 * min(deadline, now + request_timeout) (connects by connect_timeout), a
 * wait for a free pooled connection by the deadline, HTTP's Retry-After
 * by the deadline, and a retry starts only if 250 ms are left.  Except
 * for a file parent, whose system calls cannot be interrupted (a hung
 * local disk or NFS mount under file:// blocks them).  remote_open and
 * the accessors do no I/O; remote_close, remote_release and
 * remote_repin's closing of idle connections only close connections
 * (libnfs sends an NFS CLOSE, bounded by the context's timeout).
 * remote_cancel makes NBD connects, commands and block-status questions
 * end within 100 ms (ECANCELED) and stops every retry; the other
 * backends finish the attempt in flight.
 */
#ifndef CORFS_REMOTE_H
#define CORFS_REMOTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct remote;

struct remote_config {
  const char *url;              /* may carry credentials: never logged */
  const char *disk;             /* disk name, for messages */
  const char *pinned_identity;  /* "" or NULL: pin on first connect */
  uint64_t connect_timeout_ns;  /* one connection attempt */
  uint64_t request_timeout_ns;  /* one request */
  unsigned connections;         /* parallel connections (NBD); 0 = default */
  bool writable;                /* open for writing (merge, mirror) */
  /* HTTP(S) and S3 (all optional) */
  const char *credentials_file; /* user:password (basic), or S3 KEY:SECRET[:TOKEN]
                                   or an AWS credentials file */
  const char *token_file;       /* bearer token, re-read when it changes */
  const char *const *headers;   /* "Name: value", NULL-terminated */
  const char *ca_file, *client_cert, *client_key;
  bool insecure;                /* skip TLS verification (loud in the log) */
  const char *s3_endpoint;      /* e.g. http://127.0.0.1:9000 */
  const char *s3_region;        /* default us-east-1 */
  bool s3_virtual_host;         /* bucket.host/key instead of host/bucket/key */
  /* Several sources of one image (sources.c): with nr_sources > 0 the
   * remote is a source set over sources[0..nr_sources), in order of
   * preference, each with its own URL and settings (the fields above
   * are then ignored, but for disk, pinned_identity and writable, which
   * must be false).  A set's identity is "sources:size=..,seed=..,fp=..";
   * a pinned identity of another form is the first source's own pin
   * (a disk recorded with one source). */
  const struct remote_config *sources;
  size_t nr_sources;
  uint64_t source_timeout_ns;   /* a source's most time without progress;
                                   0: 1.5 s */
  bool spread;                  /* policy spread: large reads (the streamer's,
                                   readahead's) go round the healthy sources,
                                   for bandwidth; else (failover) every read
                                   goes to the first healthy one */
};

enum remote_state { REMOTE_IDLE, REMOTE_CONNECTED, REMOTE_RETRYING,
                    REMOTE_DOWN, REMOTE_CHANGED };

/* Check the URL and create the remote; does not connect (a disk whose
 * blocks are all present never needs its parent).  0, or -1 with errno
 * (EINVAL: malformed or unsupported URL, with the reason logged). */
int remote_open (const struct remote_config *cfg, struct remote **rp);

/* Close connections and free.  r may be NULL. */
void remote_close (struct remote *r);

/* Connect if not yet connected and return the size in bytes.  Retries
 * until deadline_ns (CLOCK_MONOTONIC).  -1 with *err set on failure
 * (ERANGE: the parent reported a size that is not one, negative or above
 * 1 EiB; the reason is in the status's last error). */
int64_t remote_get_size (struct remote *r, uint64_t deadline_ns, int *err);

/* Read count bytes at offset, retrying until deadline_ns.  offset + count
 * must not exceed the size.  0 or -1 with *err (EIO after the deadline,
 * ESTALE if the parent changed). */
int remote_pread (struct remote *r, void *buf, size_t count, uint64_t offset,
                  uint64_t deadline_ns, int *err);

/* Write count bytes at offset to the parent, retrying until deadline_ns.
 * Only for a remote opened writable (merge into a parent the disk owns).
 * 0 or -1 with *err (EROFS: the parent is read-only). */
int remote_pwrite (struct remote *r, const void *buf, size_t count, uint64_t offset,
                   uint64_t deadline_ns, int *err);

/* Make count bytes at offset of the parent read as zeros, like
 * remote_pwrite of zeros (and, like it, covered by remote_flush): with
 * the parent's own zeroing where it has one (NBD WRITE_ZEROES, a punched
 * hole in a file), else by writing zeros from a small buffer, never
 * allocating count bytes.  Bounded by deadline_ns as a whole.  0 or -1
 * with *err. */
int remote_pwrite_zeros (struct remote *r, uint64_t offset, uint64_t count,
                         uint64_t deadline_ns, int *err);

/* Make every write that returned stable on the parent (NBD FLUSH on every
 * connection that wrote, fdatasync for files).  0 or -1 with *err
 * (EOPNOTSUPP, not retried: written to an NBD server that offers no flush,
 * so the writes can never be made stable). */
int remote_flush (struct remote *r, uint64_t deadline_ns, int *err);

/* remote_flush (all false) or remote_flush_all (true), for a caller whose
 * writes were all issued at or after since_ns (CLOCK_MONOTONIC): it fails
 * too when writes issued since then were lost with a connection (NBD)
 * before any flush covered them, even if another caller's flush was the
 * one that found the loss.  remote_flush and remote_flush_all, whose
 * callers cannot tell, fail on any loss found while they run. */
int remote_flush_since (struct remote *r, bool all, uint64_t since_ns, uint64_t deadline_ns,
                        int *err);

/* Can remote_flush_all make stable whatever the parent holds, writes by
 * connections since closed (a crashed daemon's, a lost connection's)
 * included?  Files (fdatasync covers the inode) and NFS (every write is
 * FILE_SYNC) can; an NBD server only if it advertises multi-conn (then a
 * flush on one connection covers every connection's writes) and flush.
 * 1 or 0, or -1 with *err. */
int remote_flush_covers_all (struct remote *r, uint64_t deadline_ns, int *err);

/* remote_flush, and more: everything the parent holds (see
 * remote_flush_covers_all), even with nothing written through this
 * remote.  0 or -1 with *err. */
int remote_flush_all (struct remote *r, uint64_t deadline_ns, int *err);

/* Open for writing from now on (reconnecting if needed).  0 or -1 with
 * *err (EROFS when the parent cannot be written). */
int remote_make_writable (struct remote *r, uint64_t deadline_ns, int *err);

/* While modifying is true, our own writes change the parent's identity:
 * a mismatch on reconnect is accepted and re-pinned instead of failing.
 * Turn it on only after remote_verify: an image swapped in before then
 * would otherwise be adopted silently by the first reconnect.
 *
 * remote_verify asks the parent's identity on a new connection of its
 * own and compares it with expected when that is given and non-empty
 * (and pins it: a mount that verifies a recorded identity the pool has
 * not pinned), else with the pin (pinning it if nothing is pinned yet).
 * 0, or -1 with *err (ESTALE: the parent changed, or was found changed
 * before; the state is then "changed").
 *
 * remote_repin pins the parent's current identity instead of the old
 * one, asking on a new connection of its own (never one a request is
 * using), and closes the idle pooled connections so that each is checked
 * against the new pin when it reconnects; *identity receives it, never
 * empty.  The parent must have expect_size bytes (else EMEDIUMTYPE, the
 * sizes in the last error).  A parent found changed is refused (ESTALE)
 * unless accept_changed: only a caller that means to take the parent as
 * it is now (activation, a mirror's abort) sets it, never a merge.  0 or
 * -1 with *err (the pin is then unchanged). */
void remote_set_modifying (struct remote *r, bool modifying);
int remote_verify (struct remote *r, const char *expected, uint64_t deadline_ns, int *err);
int remote_repin (struct remote *r, bool accept_changed, uint64_t expect_size, char *identity,
                  size_t len, uint64_t deadline_ns, int *err);

/* Could someone write the parent (activate refuses such a parent unless
 * forced: the source might still be writing it)?  NBD: the export is not
 * read-only; file: a write bit is set and the filesystem is mounted
 * read-write; HTTP/S3: never; NFS: v3 yes, v4 no.  Connects if needed.
 * 1, 0, or -1 with *err. */
int remote_parent_writable (struct remote *r, uint64_t deadline_ns, int *err);

/* A byte range of the parent. */
struct remote_extent {
  uint64_t offset, length;
};

/* Ranges within [offset, offset + count) that the parent promises read as
 * zeros (NBD base:allocation STATE_ZERO, a hole in a file parent), sorted;
 * an empty list when the parent cannot tell.  *extents is malloc'd (the
 * caller frees it).  Bounded by deadline_ns; not retried (callers fall back
 * to reading).  The answer for a large window is kept and later questions
 * inside it are answered from it until corfs itself writes the parent or
 * reconnects to it (the parent is otherwise immutable).  0, or -1 with
 * *err. */
int remote_zero_extents (struct remote *r, uint64_t offset, uint64_t count,
                         uint64_t deadline_ns, struct remote_extent **extents,
                         size_t *nr_extents, int *err);

/* Close every connection to the parent (a complete disk needs it no more);
 * the next request reconnects.  The pinned identity stays. */
void remote_release (struct remote *r);

/* At shutdown, for good: requests in flight end at once (ECANCELED; NBD
 * only, other backends finish the attempt in flight) and none is retried,
 * so that stopping the streamer and jobs does not wait out a stalled
 * parent.  Any thread. */
void remote_cancel (struct remote *r);

/* The identity string (pinned at the first connect).  Copies into buf;
 * "" if not yet connected. */
void remote_identity (struct remote *r, char *buf, size_t len);

/* The URL with credentials removed (lives as long as r). */
const char *remote_url (const struct remote *r);

/* The backend's name: "file", "nbd", "http", "nfs". */
const char *remote_backend (const struct remote *r);

/* Parent state and last error message for status ("" if none). */
enum remote_state remote_status (struct remote *r, char *last_error, size_t len);
const char *remote_state_name (enum remote_state s);

/* Counters for status and metrics. */
struct remote_stats {
  uint64_t requests, bytes, errors, retries, reconnects;
};
void remote_get_stats (struct remote *r, struct remote_stats *st);

/* A source set's sources, for status and metrics: 0 for any other
 * remote.  url and backend live as long as r. */
struct remote_source_info {
  const char *url, *backend;
  const char *state;            /* "unchecked", "ok", "failed", "mismatch" */
  uint64_t reads, bytes, errors, latency_us;
  char error[256];              /* why it failed or was refused */
  char identity[512];           /* its own pin ("" if not pinned yet) */
};
size_t remote_nr_sources (struct remote *r);
/* A source set's sources changed at run time (corfs sources).  add
 * opens src (its URL and its own settings; the set's timeouts), checks
 * that it has the image's size and fingerprint (bounded by deadline_ns),
 * and appends it; remove drops the source whose URL (credentials
 * removed, as remote_source_info gives it) is url, never the last.
 * Either: 0, or -1 with the reason in why (EINVAL for a remote that is
 * not a set).  Any thread. */
int remote_sources_add (struct remote *r, const struct remote_config *src,
                        uint64_t deadline_ns, char *why, size_t len);
int remote_sources_remove (struct remote *r, const char *url, char *why, size_t len);

/* A source set calls fn (opaque, EVENT, url, why) when a source changes:
 * "source-failed", "source-mismatch" (refused: a different image),
 * "source-back" (answers and matches again), "source-added",
 * "source-removed"; from the thread that found it, with no lock of the
 * set held.  Set once, before the engine's threads use r; nothing for a
 * remote that is not a set. */
void remote_set_source_notify (struct remote *r,
                               void (*fn) (void *opaque, const char *event, const char *url,
                                           const char *why),
                               void *opaque);

/* Is id a source set's identity ("sources:...")? */
bool remote_identity_is_set (const char *id);
void remote_source_info (struct remote *r, size_t i, struct remote_source_info *si);

#endif
