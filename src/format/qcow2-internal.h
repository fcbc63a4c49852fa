/* corfs: the qcow2 reader's own declarations (qcow2*.c).
 *
 * The on-disk format is QEMU's docs/interop/qcow2.txt: a big-endian
 * header in cluster 0, a one-level L1 table of L2 table offsets, L2
 * tables of cluster descriptors (64 bits, or 128 with extended L2
 * entries: the descriptor and a bitmap of 32 subclusters).  Refcounts
 * and snapshots are never read: a reader needs only the active tables.
 */
#ifndef CORFS_QCOW2_INTERNAL_H
#define CORFS_QCOW2_INTERNAL_H

#include "format/format-internal.h"

#define QCOW2_MAGIC 0x514649fbU                 /* "QFI\xfb" */
#define QCOW2_MAX_L1_BYTES (32ULL << 20)       /* QEMU's limit too */
#define QCOW2_MAX_SIZE (1ULL << 60)             /* 1 EiB, as the remotes */
#define QCOW2_MAX_BACKING_NAME 1023

/* Incompatible feature bits. */
#define QCOW2_INCOMPAT_DIRTY       (1ULL << 0)  /* refcounts stale: harmless to a reader */
#define QCOW2_INCOMPAT_CORRUPT     (1ULL << 1)
#define QCOW2_INCOMPAT_DATA_FILE   (1ULL << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1ULL << 3)
#define QCOW2_INCOMPAT_EXTL2       (1ULL << 4)
#define QCOW2_INCOMPAT_KNOWN       0x1fULL

enum qcow2_compression { QCOW2_ZLIB = 0, QCOW2_ZSTD = 1 };

struct qcow2_header {
  uint32_t version;             /* 2 or 3 */
  uint32_t cluster_bits;        /* 9 to 21 */
  uint64_t size;                /* virtual */
  uint64_t l1_offset;
  uint32_t l1_size;             /* entries */
  uint64_t incompat;
  uint32_t header_length;
  enum qcow2_compression compression;
  bool extended_l2;
  uint64_t backing_offset;      /* 0: none */
  uint32_t backing_size;
  char backing_name[QCOW2_MAX_BACKING_NAME + 1];
  char backing_format[16];      /* header extension 0xe2792aca; "" if none */
};

/* Parse and check the header in buf (the first len bytes of an image
 * file of file_size bytes; len at least the whole first cluster or the
 * whole file, whichever is smaller, or QCOW2_HEADER_PEEK when *need is
 * set: then the caller reads *need bytes and calls again).  0, or -1
 * with errno (ENOTSUP: a feature corfs does not read; EINVAL: malformed)
 * and the fault in why. */
#define QCOW2_HEADER_PEEK 4096
int qcow2_parse_header (const uint8_t *buf, size_t len, uint64_t file_size,
                        struct qcow2_header *h, size_t *need, char *why, size_t why_len);

/* The URL of backing file name next to the image at url (see
 * qcow2-backing.c for what is refused).  0, or -1 with the reason in
 * why. */
int qcow2_backing_url (const char *url, const char *name, char *out, size_t len, char *why,
                       size_t why_len);

/* Open the backing file that the header h of image f names: *bp, of
 * *bsize bytes.  0, or -1 with *err (ENOTSUP, EINVAL, the fault logged
 * through fmt_fault on f). */
int qcow2_open_backing (struct format *f, const struct qcow2_header *h, uint64_t deadline_ns,
                        struct format **bp, int64_t *bsize, int *err);

/* What a cluster or subcluster of the virtual disk is. */
enum qcow2_kind { QCOW2_DATA, QCOW2_ZERO, QCOW2_UNALLOCATED, QCOW2_COMPRESSED };

/* The L2 cache: tables keyed by their offset in the file, at most
 * max_tables of them, least recently used evicted.  Thread-safe (a lock
 * of its own, a leaf, never held across a read). */
struct qcow2_l2cache;
struct qcow2_l2cache *qcow2_l2cache_new (size_t table_bytes, uint64_t max_bytes);
void qcow2_l2cache_free (struct qcow2_l2cache *c);
/* Copy n entries (64-bit words, host order) of the table at offset from
 * word first into out, if the table is cached.  true if it was. */
bool qcow2_l2cache_get (struct qcow2_l2cache *c, uint64_t offset, size_t first, size_t n,
                        uint64_t *out);
/* Add the table (words in host order, table_bytes long; copied). */
void qcow2_l2cache_put (struct qcow2_l2cache *c, uint64_t offset, const uint64_t *table);

/* Decompress in_len bytes into exactly out_len: raw deflate (zlib) or
 * a zstd frame; trailing bytes after the stream are ignored (the
 * compressed length is rounded up to sectors).  0, or -1 with the fault
 * in why. */
int qcow2_decompress (enum qcow2_compression type, const void *in, size_t in_len, void *out,
                      size_t out_len, char *why, size_t why_len);

static inline uint64_t
qcow2_be64 (const uint8_t *p)
{
  uint64_t v = 0;
  for (int i = 0; i < 8; i++)
    v = (v << 8) | p[i];
  return v;
}

static inline uint32_t
qcow2_be32 (const uint8_t *p)
{
  return (uint32_t) p[0] << 24 | (uint32_t) p[1] << 16 | (uint32_t) p[2] << 8 | p[3];
}

#endif
