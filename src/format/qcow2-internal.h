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

/* The reader's state (qcow2.c), immutable after open but for the L2
 * cache and the last decoded cluster, which have locks of their own. */
struct qcow2 {
  struct qcow2_header h;
  uint64_t cluster;             /* bytes */
  unsigned l2_bits;             /* log2 of the entries per L2 table */
  unsigned entry_words;         /* 1, or 2 with extended L2 entries */
  uint64_t sc_size;             /* subcluster size: cluster / 32 with extended L2 */
  unsigned csize_shift;         /* compressed descriptor: offset bits below */
  uint64_t csize_mask;
  uint64_t *l1;                 /* L2 table offsets (0: none), checked */
  struct qcow2_l2cache *cache;
  struct format *backing;       /* unallocated clusters read from it; NULL: zeros */
  uint64_t backing_size;        /* past it, unallocated clusters read as zeros */
  struct {
    pthread_mutex_t lock;
    bool valid;
    uint64_t host;              /* of the compressed cluster in buf */
    uint8_t *buf;               /* one cluster */
  } last;
};

/* A run of the virtual disk. */
struct seg {
  uint64_t offset, length;      /* virtual */
  enum qcow2_kind kind;
  uint64_t host;                /* data: of offset; compressed: of the stream */
  uint64_t host_len;            /* compressed: the stream's length in the file */
  uint64_t cluster_off;         /* compressed: virtual offset of the cluster */
};

struct walk;

typedef int (*emit_fn) (struct walk *w, const struct seg *s, int *err);

struct walk {
  struct format *f;
  struct qcow2 *q;
  uint64_t start, end;          /* the virtual range asked */
  uint64_t deadline_ns;
  struct seg pend;              /* the run being grown */
  bool have;
  emit_fn emit;
  void *opaque;
};

/* The walk over [w->start, w->end) (within the virtual size): runs of
 * one kind, in virtual order, to w->emit.  0 or -1 with *err. */
int qcow2_walk (struct walk *w, int *err);

/* fmt_fault, and *err = EIO: a corrupt table or cluster.  -1. */
int qcow2_fault (struct format *f, int *err, const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));

/* Is [offset, offset + count) inside the virtual size?  0, or -1 (EINVAL). */
int qcow2_range_ok (struct format *f, uint64_t offset, uint64_t count, int *err);

/* (qcow2-read.c) the format's pread. */
int qcow2_pread (struct format *f, void *buf, size_t count, uint64_t offset,
                 uint64_t deadline_ns, int *err);

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
