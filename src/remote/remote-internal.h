/* corfs: the backend side of the remote seam (see remote.h). */
#ifndef CORFS_REMOTE_INTERNAL_H
#define CORFS_REMOTE_INTERNAL_H

#include "remote/remote.h"

struct remote_conn;

/* Every backend is called from any thread concurrently (there is no
 * serialized backend: libnbd handles, libnfs contexts and curl easy
 * handles are each used by one request at a time through the pool, and
 * the file backend's fd is shared with pread/pwrite). */
struct remote_ops {
  const char *name;
  /* Does this backend handle the URL's scheme? */
  bool (*handles) (const char *url);
  /* Parse the URL and allocate backend state in *h; do not connect.
   * The remote's pool (remote_pool_of) already exists for a backend
   * with connections.  -1 with *err (EINVAL for a bad URL, reason
   * logged). */
  int (*open) (struct remote *r, const struct remote_config *cfg, void **h, int *err);
  /* Must cope with a backend that never connected.  The pool's
   * connections are closed by the pool, after this. */
  void (*close) (void *h);
  /* Connect if needed and return the size.  Bounded by deadline_ns. */
  int64_t (*get_size) (struct remote *r, void *h, uint64_t deadline_ns, int *err);
  /* Open a connection of its own (never one that a request may be
   * using or that predates the call), write the parent's identity into
   * id, close it, and return the size; pins nothing (see remote_repin).
   * Bounded by deadline_ns.  -1 with *err. */
  int64_t (*identify) (struct remote *r, void *h, uint64_t deadline_ns, char *id, size_t len,
                       int *err);
  /* Read all of count bytes or fail; bounded by deadline_ns. */
  int (*pread) (struct remote *r, void *h, void *buf, size_t count,
                uint64_t offset, uint64_t deadline_ns, int *err);
  /* Optional (NULL: read-only protocol): write all of count bytes or
   * fail; flush makes returned writes stable (with all, whatever the
   * parent holds, as far as flush_covers_all promised it); make_writable
   * reopens for writing (EROFS if impossible). */
  int (*pwrite) (struct remote *r, void *h, const void *buf, size_t count,
                 uint64_t offset, uint64_t deadline_ns, int *err);
  int (*flush) (struct remote *r, void *h, bool all, uint64_t deadline_ns, int *err);
  /* Optional: make count bytes at offset read as zeros without sending
   * them (NBD WRITE_ZEROES, a punched hole); covered by flush like a
   * write.  EOPNOTSUPP when the parent cannot: the wrapper then writes
   * zeros. */
  int (*zero) (struct remote *r, void *h, uint64_t offset, uint64_t count,
               uint64_t deadline_ns, int *err);
  /* Optional (NULL: no): see remote_flush_covers_all. */
  int (*flush_covers_all) (struct remote *r, void *h, uint64_t deadline_ns, int *err);
  int (*make_writable) (struct remote *r, void *h, uint64_t deadline_ns, int *err);
  /* Optional: zero extents (see remote_zero_extents).  Append to *v. */
  int (*zero_extents) (struct remote *r, void *h, uint64_t offset, uint64_t count,
                       uint64_t deadline_ns, struct remote_extent **v, size_t *n,
                       int *err);
  /* Optional (NULL: never writable): see remote_parent_writable. */
  int (*parent_writable) (struct remote *r, void *h, uint64_t deadline_ns, int *err);
  /* Optional: close connections (see remote_release): the pool's idle
   * ones (remote_pool_close_idle) and whatever the backend keeps. */
  void (*release) (void *h);
  /* Optional: remote_cancel's part for the backend (a source set
   * cancels its sources). */
  void (*cancel) (void *h);

  /* Connections, for the pool (pool.c).  NULL conn_open: the backend has
   * none (file: one fd that every thread shares) and gets no pool.
   *
   * pool_slots: how many connections cfg allows at most.
   * conn_data_size: bytes of the backend's per-slot state
   * (remote_conn.data, zeroed at first, kept across reconnects).
   *
   * conn_open opens c->handle (NULL before), bounded by deadline_ns and
   * the connect timeout.  With id NULL it checks the parent's identity
   * against the pin (remote_check_identity) and notes the connection;
   * with id it writes the identity there and pins nothing (a re-pin's
   * question).  The size (0 for a backend that learns none when it
   * connects), or -1 with *err and c->handle NULL.
   *
   * conn_close closes c->handle and sets it NULL.  It is called on a
   * slot its caller holds, never under the pool lock. */
  unsigned (*pool_slots) (const struct remote_config *cfg);
  size_t conn_data_size;
  int64_t (*conn_open) (struct remote *r, void *h, struct remote_conn *c, char *id, size_t len,
                        uint64_t deadline_ns, int *err);
  void (*conn_close) (struct remote_conn *c);
};

/* ---- The connection pool (pool.c) ----
 *
 * One per remote today, kept in a registry under a key of everything
 * that makes two connections interchangeable (remote_pool_key), so that
 * disks can later share one.  A slot holds at most one connection, used
 * by one request at a time: a request takes a slot for its whole
 * duration (take), then returns it, or discards it (closes its
 * connection: a timeout or a dead connection leaves it in an unknown
 * state).  Closed slots are reopened by the next request that takes
 * them.  Waiting for a free slot is bounded by the request's deadline
 * (ETIMEDOUT).
 *
 * Threads: any thread.  The pool lock covers the slots' busy marks and
 * the waits for a free slot only; it is never held across a backend call
 * (conn_open, conn_close), nothing is locked under it, and it is never
 * taken with r->lock or a backend's own lock held.  The registry lock is
 * taken only to find, add or drop a pool, never with a pool lock held. */
struct remote_pool;

struct remote_conn {
  void *handle;                 /* the backend's connection; NULL: closed */
  void *data;                   /* the backend's per-slot state */
  bool ever_connected;          /* opened before: the next open reconnects */
  bool fresh;                   /* the next request must go over a new
                                 * connection (HTTP's FRESH_CONNECT) */
  /* The pool's own. */
  bool busy;                    /* under the pool lock */
  unsigned index;
};

/* The registry key of cfg for backend: the URL with its scheme in lower
 * case, and everything else that decides what a connection reaches and
 * how it is authenticated (credentials and token files, headers, TLS
 * files and verification, S3 endpoint, region and addressing, writable,
 * timeouts, the number of connections), and, for now, the disk name: a
 * connection is checked against the identity its disk pinned and counted
 * in its disk's statistics, so two disks must not share one yet.
 * malloc'd (it may hold credentials: never log it), or NULL (ENOMEM). */
char *remote_pool_key (const struct remote_config *cfg, const char *backend);

/* The pool of key, created with nslots slots for ops if there is none,
 * else the existing one (nslots is then ignored), with one more
 * reference.  0, or -1 with errno (ENOMEM). */
int remote_pool_get (const char *key, const struct remote_ops *ops, unsigned nslots,
                     struct remote_pool **pp);
/* Drop a reference; the last one closes the connections and frees the
 * pool.  p may be NULL. */
void remote_pool_put (struct remote_pool *p);
unsigned remote_pool_slots (const struct remote_pool *p);

/* Take a free slot, preferring one with an open connection, waiting
 * until deadline_ns for one to be free; open it (conn_open with id NULL,
 * for r and h) if it is closed.  NULL with *err (ETIMEDOUT: none free in
 * time; or conn_open's error, the slot given back). */
struct remote_conn *remote_pool_take (struct remote_pool *p, struct remote *r, void *h,
                                      uint64_t deadline_ns, int *err);
/* Take slot i in particular, as it is (open or not), waiting until
 * deadline_ns for it to be free (a flush must reach every connection
 * that wrote).  NULL with *err = ETIMEDOUT. */
struct remote_conn *remote_pool_take_slot (struct remote_pool *p, unsigned i,
                                           uint64_t deadline_ns, int *err);
/* Open held slot c if it is closed.  0, or -1 with *err (still held). */
int remote_pool_open (struct remote_pool *p, struct remote *r, void *h, struct remote_conn *c,
                      uint64_t deadline_ns, int *err);
/* Give back a held slot, its connection open or not. */
void remote_pool_return (struct remote_pool *p, struct remote_conn *c);
/* Close a held slot's connection and give the slot back. */
void remote_pool_discard (struct remote_pool *p, struct remote_conn *c);
/* Close every connection no request holds (remote_release, remote_repin:
 * each is checked against the pin when it is next opened).  Busy ones
 * stay open. */
void remote_pool_close_idle (struct remote_pool *p);

/* A connection of the caller's own, outside the slots: never one that a
 * request holds or that predates the call, and never a wait for a free
 * slot (identify, NBD's parent_writable).  conn_open as above, with id;
 * c is the caller's (zeroed by this call).  The size, or -1 with *err;
 * close it with remote_pool_close_own either way. */
int64_t remote_pool_open_own (struct remote_pool *p, struct remote *r, void *h,
                              struct remote_conn *c, char *id, size_t len,
                              uint64_t deadline_ns, int *err);
void remote_pool_close_own (struct remote_pool *p, struct remote_conn *c);

/* The pool of r (NULL for a backend without connections). */
struct remote_pool *remote_pool_of (const struct remote *r);

/* Append an extent to a malloc'd vector (merging with the previous one
 * when adjacent).  0 or -1 (ENOMEM). */
int remote_extent_append (struct remote_extent **v, size_t *n, uint64_t offset,
                          uint64_t length);

extern const struct remote_ops rfile_ops;
extern const struct remote_ops rnbd_ops;
extern const struct remote_ops rhttp_ops;
extern const struct remote_ops rnfs_ops;
extern const struct remote_ops rsources_ops;

/* A source of a set: one attempt per request, no retries (the set moves
 * to the next source instead, and retries the chain). */
void remote_set_single_attempt (struct remote *r);

/* Backends call this after every (re)connect with a fresh identity string.
 * Pins it the first time; afterwards a different string marks the remote
 * changed.  Returns 0, or -1 with *err = ESTALE. */
int remote_check_identity (struct remote *r, const char *identity, int *err);

/* The largest parent size accepted: 1 EiB.  Far above any real image,
 * and far enough below 2^63 that offsets plus lengths never overflow an
 * off_t or an int64_t. */
#define REMOTE_MAX_SIZE (1ULL << 60)

/* Backends call this on every size a parent reports (what: where it came
 * from, for the message).  0, or -1 with *err = ERANGE and the reason
 * noted: a parent reporting an absurd size is broken or hostile, and
 * retrying does not help. */
int remote_check_size (struct remote *r, const char *what, uint64_t size, int *err);

/* Backends call these so that status shows the connection's state. */
void remote_note_connected (struct remote *r, bool reconnect);
void remote_note_error (struct remote *r, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

/* Has remote_cancel been called?  Backends that wait in slices check it. */
bool remote_is_cancelled (const struct remote *r);

/* A backend's flush found that writes were lost before a flush covered
 * them (a connection dropped while holding them), every one of them
 * returned before lost_ns (CLOCK_MONOTONIC).  The wrapper then fails
 * every flush whose caller's writes may be among them (remote_flush_since),
 * not only the one that found the loss. */
void remote_note_lost_writes (struct remote *r, uint64_t lost_ns);

/* Disk name and redacted URL for messages. */
const char *remote_disk (const struct remote *r);

#endif
