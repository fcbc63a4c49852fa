/* corfs: the backend side of the remote seam (see remote.h). */
#ifndef CORFS_REMOTE_INTERNAL_H
#define CORFS_REMOTE_INTERNAL_H

#include "remote/remote.h"

enum remote_thread_model { REMOTE_SERIALIZE, REMOTE_PARALLEL };

struct remote_ops {
  const char *name;
  enum remote_thread_model thread_model;
  /* Does this backend handle the URL's scheme? */
  bool (*handles) (const char *url);
  /* Parse the URL and allocate backend state in *h; do not connect.
   * -1 with *err (EINVAL for a bad URL, reason logged). */
  int (*open) (struct remote *r, const struct remote_config *cfg, void **h, int *err);
  /* Must cope with a backend that never connected. */
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
  /* Optional: close connections (see remote_release). */
  void (*release) (void *h);
};

/* Append an extent to a malloc'd vector (merging with the previous one
 * when adjacent).  0 or -1 (ENOMEM). */
int remote_extent_append (struct remote_extent **v, size_t *n, uint64_t offset,
                          uint64_t length);

extern const struct remote_ops rfile_ops;
extern const struct remote_ops rnbd_ops;
extern const struct remote_ops rhttp_ops;
extern const struct remote_ops rnfs_ops;

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
