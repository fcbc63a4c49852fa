/* corfs: image formats of a parent, between the engine and the remote.
 *
 * A disk's parent is a remote (src/remote) holding an image in a format:
 *   raw      the remote's bytes are the disk (a passthrough: every call
 *            goes straight to the remote_* wrapper of the same job)
 *   qcow2    a QEMU qcow2 image, v2 or v3: zero and unallocated
 *            clusters, zlib and zstd compressed clusters, extended L2
 *            entries (subclusters), a backing file (qcow2 or raw, as
 *            the image's header says) resolved next to the image's URL
 *            (qcow2.c and its helpers)
 * The format is what the disk's configuration says, never probed: a raw
 * parent whose first bytes look like a qcow2 header is presented raw (a
 * guest may write such a header into its own disk).
 *
 * Every byte of the image, the qcow2 metadata included, is read through
 * remote_pread with the caller's deadline, so the remote's retries, its
 * hold, its connection pool and identity pinning apply to the tables as
 * to the data.
 *
 * A bad image is refused with an error naming the image's URL (without
 * credentials) and the fault (the field, the offset), logged, and kept
 * for status (format_last_error): at open for the header and the L1
 * table, at the first use for an L2 entry.  Never a crash or a hang.
 *
 * Threads: every function may be called from any thread, concurrently,
 * once format_open has returned; none calls back into the caller.  The
 * qcow2 reader's L2 cache has a lock of its own, a leaf never held
 * across a remote call.  Blocking: as the remote's calls the function
 * makes (bounded by deadline_ns, CLOCK_MONOTONIC); format_size, the
 * accessors and format_close do no I/O.
 */
#ifndef CORFS_FORMAT_H
#define CORFS_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "remote/remote.h"

struct format;

enum format_kind { FORMAT_RAW, FORMAT_QCOW2 };

/* "raw" or "qcow2" to the kind: 0, or -1 (EINVAL) for another name. */
int format_parse (const char *name, enum format_kind *kind);
const char *format_name (enum format_kind kind);

#define FORMAT_L2_CACHE_DEFAULT (32ULL << 20)

struct format_config {
  enum format_kind kind;
  /* Bound on the memory of cached qcow2 L2 tables; 0: the default
   * (FORMAT_L2_CACHE_DEFAULT).  At least one table is always kept. */
  uint64_t l2_cache_bytes;
  /* Read the metadata at the first call that needs it, not in
   * format_open: a disk whose blocks are all present never contacts
   * its parent.  A first use that fails is tried again by the next. */
  bool lazy;
  /* qcow2 backing files: each is opened as a remote of its own with
   * these settings (the URL replaced by the backing file's: its name
   * resolved next to the image's URL, over the same protocol), never
   * writable.  NULL: an image with a backing file is refused.  Copied. */
  const struct remote_config *remote;
  /* The first backing file's URL instead of its resolved name (an NBD
   * image has no path to resolve it against).  NULL: none.  Copied. */
  const char *backing_url;
};

/* The deepest backing chain read: an image and 7 backing files. */
#define FORMAT_MAX_DEPTH 8

/* Open the image held by r (which the caller keeps and closes after
 * format_close): for qcow2, read and check the header and the L1 table
 * (connecting the remote if needed), unless cfg->lazy.  Raw does no
 * I/O here.  0, or -1
 * with *err: ENOTSUP for what corfs does not read (encrypted images,
 * unknown incompatible features, external data files, backing files),
 * EINVAL for a malformed or corrupt image, or the remote's error; the
 * reason is logged ("qcow2 image URL: ...") and in log_last_error. */
int format_open (struct remote *r, const struct format_config *cfg, uint64_t deadline_ns,
                 struct format **fp, int *err);

/* The same over an image held in memory (not copied: it must outlive
 * the format), named name in messages: unit tests and fuzzing. */
int format_open_memory (const void *image, size_t len, const char *name,
                        const struct format_config *cfg, struct format **fp, int *err);

/* Free.  f may be NULL.  The remote is not closed. */
void format_close (struct format *f);

enum format_kind format_kind (const struct format *f);

/* The virtual size in bytes (for raw, the remote's size; for a lazy
 * qcow2 image, read from its header: either may connect, so it takes a
 * deadline).  -1 with *err on failure. */
int64_t format_size (struct format *f, uint64_t deadline_ns, int *err);

/* Read count bytes of the virtual disk at offset: all of them or an
 * error, never zeros in place of data.  offset + count must not exceed
 * the size.  0, or -1 with *err (EIO for a corrupt table or compressed
 * cluster, logged with its offset; the remote's errors as they are). */
int format_pread (struct format *f, void *buf, size_t count, uint64_t offset,
                  uint64_t deadline_ns, int *err);

/* Ranges within [offset, offset + count) that read as zeros, sorted and
 * merged: for raw the remote's answer (remote_zero_extents), for qcow2
 * the zero clusters and subclusters, and the unallocated ones (the image
 * has no backing file), from the tables alone: no data is fetched.
 * *extents is malloc'd (the caller frees it).  0, or -1 with *err. */
int format_zero_extents (struct format *f, uint64_t offset, uint64_t count,
                         uint64_t deadline_ns, struct remote_extent **extents,
                         size_t *nr_extents, int *err);

/* Where the virtual range's bytes live in the image file, for reading
 * in host order (streaming): data at host_offset (length bytes), zeros,
 * or a compressed cluster (host_length bytes at host_offset, decoding to
 * the whole cluster, of which [offset, offset + length) is asked).
 * Adjacent data ranges contiguous in the file are merged. */
enum format_map_kind { FORMAT_MAP_DATA, FORMAT_MAP_ZERO, FORMAT_MAP_COMPRESSED,
                       FORMAT_MAP_BACKING /* from the backing file, at the same offset */ };
struct format_map {
  uint64_t offset, length;            /* virtual */
  enum format_map_kind kind;
  uint64_t host_offset, host_length;  /* in the image file (data, compressed) */
};

/* The map of [offset, offset + count), sorted by virtual offset;
 * *map is malloc'd (the caller frees it).  For raw, one data range at
 * the same offsets.  0, or -1 with *err. */
int format_map (struct format *f, uint64_t offset, uint64_t count, uint64_t deadline_ns,
                struct format_map **map, size_t *nr_map, int *err);

/* The pinned identities of the backing files (remote_identity of each,
 * outermost first, joined by " | "; a hash of them, "chain:HEX", if
 * that would not fit in len), "" for an image without one or not open
 * yet.  What the index records so that a later mount finds a changed
 * backing file; each remote fails closed on a change while mounted. */
void format_chain_identity (struct format *f, char *buf, size_t len);

/* remote_cancel and remote_release for the remotes of the backing
 * files (the caller does it for its own remote).  Any thread. */
void format_cancel (struct format *f);
void format_release (struct format *f);

/* The last fault found in the image ("" if none), for status. */
void format_last_error (struct format *f, char *buf, size_t len);

#endif
