/* corfs: the format module's own declarations (see format.h). */
#ifndef CORFS_FORMAT_INTERNAL_H
#define CORFS_FORMAT_INTERNAL_H

#include <pthread.h>

#include "format/format.h"

/* One format's reader.  Every function is called from any thread,
 * concurrently, after open. */
struct format_ops {
  const char *name;
  /* Read the image's metadata and set f->size and f->priv.  -1 with
   * *err, the reason logged through fmt_fault. */
  int (*open) (struct format *f, const struct format_config *cfg, uint64_t deadline_ns,
               int *err);
  void (*close) (struct format *f);     /* must cope with a failed open */
  int (*pread) (struct format *f, void *buf, size_t count, uint64_t offset,
                uint64_t deadline_ns, int *err);
  int (*zero_extents) (struct format *f, uint64_t offset, uint64_t count,
                       uint64_t deadline_ns, struct remote_extent **v, size_t *n, int *err);
  int (*map) (struct format *f, uint64_t offset, uint64_t count, uint64_t deadline_ns,
              struct format_map **v, size_t *n, int *err);
  /* Optional: the backing file's reader, once open (NULL: none). */
  struct format *(*backing) (struct format *f);
};

extern const struct format_ops format_raw_ops, format_qcow2_ops;

struct format {
  const struct format_ops *ops;
  enum format_kind kind;
  struct remote *r;             /* NULL for an image in memory */
  const uint8_t *mem;           /* the image in memory, mem_size bytes */
  uint64_t mem_size;
  char *name;                   /* the URL without credentials, for messages */
  uint64_t file_size;           /* of the image file (qcow2) */
  uint64_t size;                /* virtual (qcow2; raw asks the remote) */
  void *priv;                   /* the reader's state */
  bool opened;                  /* format_open has returned (faults are then rate-limited) */
  struct format_config cfg;     /* cfg.remote and cfg.backing_url point into rc */
  struct fmt_remote_copy *rc;   /* the copied settings for backing files, or NULL */
  unsigned depth;               /* 0: the disk's parent; 1: its backing file... */
  struct format *up;            /* the image whose backing file this is, or NULL */
  bool owns_remote;             /* a backing file's: closed with the format */
  pthread_mutex_t open_lock;    /* taken alone, across the metadata's reads: a lazy open */
  bool ready;                   /* ops->open succeeded (atomic; set under open_lock) */
  pthread_mutex_t err_lock;     /* a leaf: protects last_error */
  char last_error[512];
};

/* Read count bytes of the image file at offset (through the remote, or
 * from memory).  The range must lie in the file; the caller checks it. */
int fmt_read (struct format *f, void *buf, size_t count, uint64_t offset,
              uint64_t deadline_ns, int *err);

/* Log "FORMAT image NAME: MESSAGE" (rate-limited), keep it for status. */
void fmt_fault (struct format *f, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

/* Open the backing file of image up over remote r (which the new format
 * owns from then on, closed even on failure), as format_open does,
 * one level deeper.  0 or -1 with *err. */
int fmt_open_backing (struct format *up, struct remote *r, const struct format_config *cfg,
                      uint64_t deadline_ns, struct format **fp, int *err);

/* Keep msg, which names its image, as f's fault (logged too if log): a
 * backing file's own fault, passed up its chain as it is, was logged
 * once by the file at fault. */
void fmt_fault_verbatim (struct format *f, const char *msg, bool log);

/* Append one element to a malloc'd vector (*v, *n), doubling its
 * capacity at powers of two.  0, or -1 (ENOMEM). */
int fmt_push (void **v, size_t *n, size_t elem, const void *x);

#endif
