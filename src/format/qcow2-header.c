/* corfs: the qcow2 header: parse and check it, refusing what corfs does
 * not read.  A pure function of the bytes (no I/O, no state), which the
 * fuzz harness drives directly.
 */
#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "format/qcow2-internal.h"

#define V2_HEADER_LENGTH 72
#define V3_HEADER_LENGTH 104
#define EXT_BACKING_FORMAT 0xe2792acaU

static int
refuse (int e, char *why, size_t why_len, const char *fmt, ...)
  __attribute__ ((format (printf, 4, 5)));

static int
refuse (int e, char *why, size_t why_len, const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (why, why_len, fmt, ap);
  va_end (ap);
  errno = e;
  return -1;
}

/* The fields of versions 2 and 3 up to header_length. */
static int
parse_fixed (const uint8_t *buf, size_t len, struct qcow2_header *h, uint32_t *crypt,
             uint32_t *refcount_order, char *why, size_t why_len)
{
  uint32_t magic = qcow2_be32 (buf);

  if (magic != QCOW2_MAGIC)
    return refuse (EINVAL, why, why_len,
                   "no qcow2 magic at offset 0 (found 0x%08" PRIx32 "): not a qcow2 image",
                   magic);
  h->version = qcow2_be32 (buf + 4);
  if (h->version != 2 && h->version != 3)
    return refuse (ENOTSUP, why, why_len, "qcow2 version %" PRIu32 " (at offset 4): corfs "
                   "reads versions 2 and 3", h->version);
  h->backing_offset = qcow2_be64 (buf + 8);
  h->backing_size = qcow2_be32 (buf + 16);
  h->cluster_bits = qcow2_be32 (buf + 20);
  h->size = qcow2_be64 (buf + 24);
  *crypt = qcow2_be32 (buf + 32);
  h->l1_size = qcow2_be32 (buf + 36);
  h->l1_offset = qcow2_be64 (buf + 40);
  h->incompat = 0;
  h->header_length = V2_HEADER_LENGTH;
  h->compression = QCOW2_ZLIB;
  *refcount_order = 4;
  if (h->version == 2)
    return 0;
  if (len < V3_HEADER_LENGTH)
    return refuse (EINVAL, why, why_len, "file too small for a version 3 header "
                   "(%zu bytes)", len);
  h->incompat = qcow2_be64 (buf + 72);
  *refcount_order = qcow2_be32 (buf + 96);
  h->header_length = qcow2_be32 (buf + 100);
  if (h->header_length < V3_HEADER_LENGTH)
    return refuse (EINVAL, why, why_len, "header_length %" PRIu32 " (at offset 100) is "
                   "below 104", h->header_length);
  if (h->header_length > V3_HEADER_LENGTH) {
    if (len <= V3_HEADER_LENGTH)
      return refuse (EINVAL, why, why_len, "file too small for its header_length %" PRIu32,
                     h->header_length);
    h->compression = buf[104];
  }
  return 0;
}

/* Features: refuse encryption, the corrupt bit, external data files and
 * unknown incompatible features; the compression type; subclusters. */
static int
check_features (struct qcow2_header *h, uint32_t crypt, char *why, size_t why_len)
{
  uint64_t unknown = h->incompat & ~QCOW2_INCOMPAT_KNOWN;

  if (crypt != 0)
    return refuse (ENOTSUP, why, why_len, "encrypted (crypt_method %" PRIu32 " at offset 32):"
                   " corfs reads unencrypted images only", crypt);
  if (h->incompat & QCOW2_INCOMPAT_CORRUPT)
    return refuse (EINVAL, why, why_len, "the corrupt bit is set (incompatible feature bit 1"
                   " at offset 72): QEMU found it inconsistent (qemu-img check -r all "
                   "repairs it)");
  if (h->incompat & QCOW2_INCOMPAT_DATA_FILE)
    return refuse (ENOTSUP, why, why_len, "the data is in an external data file "
                   "(incompatible feature bit 2 at offset 72): corfs reads "
                   "self-contained images only");
  if (unknown != 0)
    return refuse (ENOTSUP, why, why_len, "unknown incompatible feature bits 0x%" PRIx64
                   " (at offset 72)", unknown);
  if (h->compression != QCOW2_ZLIB && h->compression != QCOW2_ZSTD)
    return refuse (ENOTSUP, why, why_len, "unknown compression type %u (at offset 104)",
                   (unsigned) h->compression);
  if (h->compression != QCOW2_ZLIB && !(h->incompat & QCOW2_INCOMPAT_COMPRESSION))
    return refuse (EINVAL, why, why_len, "compression type %u (at offset 104) without the "
                   "compression-type incompatible feature bit", (unsigned) h->compression);
  h->extended_l2 = (h->incompat & QCOW2_INCOMPAT_EXTL2) != 0;
  if (h->extended_l2 && h->cluster_bits < 14)
    return refuse (EINVAL, why, why_len, "extended L2 entries with %u-byte clusters (below "
                   "16 KiB, at offset 20)", 1U << h->cluster_bits);
  return 0;
}

/* Sizes and the L1 table's place. */
static int
check_geometry (const struct qcow2_header *h, uint32_t refcount_order, uint64_t file_size,
                char *why, size_t why_len)
{
  uint64_t cluster = 1ULL << h->cluster_bits;
  unsigned l2_bits = h->cluster_bits - (h->extended_l2 ? 4 : 3);
  unsigned shift = h->cluster_bits + l2_bits;
  uint64_t needed = (h->size >> shift) + ((h->size & ((1ULL << shift) - 1)) != 0);

  if (refcount_order > 6)
    return refuse (EINVAL, why, why_len, "refcount_order %" PRIu32 " (at offset 96) is above"
                   " 6", refcount_order);
  if (h->header_length > cluster)
    return refuse (EINVAL, why, why_len, "header_length %" PRIu32 " (at offset 100) is "
                   "larger than a cluster (%" PRIu64 " bytes)", h->header_length, cluster);
  if (h->size > QCOW2_MAX_SIZE)
    return refuse (EINVAL, why, why_len, "virtual size %" PRIu64 " (at offset 24) is above "
                   "1 EiB", h->size);
  if ((uint64_t) h->l1_size * 8 > QCOW2_MAX_L1_BYTES)
    return refuse (EINVAL, why, why_len, "l1_size %" PRIu32 " (at offset 36) is above "
                   "QEMU's limit of 32 MiB of L1 table", h->l1_size);
  if (h->l1_size < needed)
    return refuse (EINVAL, why, why_len, "l1_size %" PRIu32 " (at offset 36) is too small "
                   "for the virtual size %" PRIu64 " (%" PRIu64 " entries needed)",
                   h->l1_size, h->size, needed);
  if (h->l1_size == 0)
    return 0;
  if (h->l1_offset & (cluster - 1))
    return refuse (EINVAL, why, why_len, "L1 table offset 0x%" PRIx64 " (at offset 40) is "
                   "not cluster-aligned", h->l1_offset);
  if (h->l1_offset < cluster)
    return refuse (EINVAL, why, why_len, "L1 table offset 0x%" PRIx64 " (at offset 40) "
                   "overlaps the header", h->l1_offset);
  if (h->l1_offset > file_size || (uint64_t) h->l1_size * 8 > file_size - h->l1_offset)
    return refuse (EINVAL, why, why_len, "L1 table at 0x%" PRIx64 " (%" PRIu32 " entries) "
                   "lies past the end of the file (%" PRIu64 " bytes)", h->l1_offset,
                   h->l1_size, file_size);
  return 0;
}

/* Walk the header extensions up to end (checking only that each lies in
 * the header cluster: corfs needs none of them), then copy the backing
 * file's name. */
static int
parse_tail (const uint8_t *buf, size_t full, struct qcow2_header *h, char *why, size_t why_len)
{
  uint64_t off = h->header_length, end = full;

  h->backing_format[0] = '\0';

  if (h->backing_offset != 0 && h->backing_offset < end)
    end = h->backing_offset;
  while (off + 8 <= end) {
    uint32_t type = qcow2_be32 (buf + off), elen = qcow2_be32 (buf + off + 4);

    if (type == 0)
      break;
    if (elen > end - off - 8)
      return refuse (EINVAL, why, why_len, "header extension 0x%08" PRIx32 " at offset "
                     "%" PRIu64 " (%" PRIu32 " bytes) runs past the header", type, off, elen);
    if (type == EXT_BACKING_FORMAT && elen < sizeof h->backing_format) {
      memcpy (h->backing_format, buf + off + 8, elen);
      h->backing_format[elen] = '\0';
    }
    off += 8 + (((uint64_t) elen + 7) & ~7ULL);
  }
  h->backing_name[0] = '\0';
  if (h->backing_offset == 0)
    return 0;
  if (h->backing_size == 0 || h->backing_size > QCOW2_MAX_BACKING_NAME)
    return refuse (EINVAL, why, why_len, "backing file name size %" PRIu32 " (at offset 16) "
                   "is not 1 to %d", h->backing_size, QCOW2_MAX_BACKING_NAME);
  if (h->backing_offset > full || h->backing_size > full - h->backing_offset)
    return refuse (EINVAL, why, why_len, "backing file name at offset %" PRIu64 " (%" PRIu32
                   " bytes) lies outside the header cluster", h->backing_offset,
                   h->backing_size);
  memcpy (h->backing_name, buf + h->backing_offset, h->backing_size);
  h->backing_name[h->backing_size] = '\0';
  return 0;
}

int
qcow2_parse_header (const uint8_t *buf, size_t len, uint64_t file_size,
                    struct qcow2_header *h, size_t *need, char *why, size_t why_len)
{
  uint32_t crypt = 0, refcount_order = 4;
  uint64_t full;

  *need = 0;
  if (len < V2_HEADER_LENGTH || file_size < V2_HEADER_LENGTH)
    return refuse (EINVAL, why, why_len, "file too small for a qcow2 header (%" PRIu64
                   " bytes)", file_size < len ? file_size : (uint64_t) len);
  if (parse_fixed (buf, len, h, &crypt, &refcount_order, why, why_len) == -1)
    return -1;
  if (h->cluster_bits < 9 || h->cluster_bits > 21)
    return refuse (EINVAL, why, why_len, "cluster_bits %" PRIu32 " (at offset 20) is not 9 "
                   "to 21", h->cluster_bits);
  if (check_features (h, crypt, why, why_len) == -1 ||
      check_geometry (h, refcount_order, file_size, why, why_len) == -1)
    return -1;
  full = 1ULL << h->cluster_bits;
  if (full > file_size)
    full = file_size;
  if (len < full) {
    *need = full;
    return 0;
  }
  return parse_tail (buf, full, h, why, why_len);
}
