/* corfs: the layout of the state that outlives a worker (`corfs mount
 * --supervise`): one memfd that the supervisor creates and holds for the
 * whole mount, and that every worker maps MAP_SHARED.  Memory only,
 * never a file: after a power loss nothing in it may claim data that
 * never reached the disk (DESIGN.md rule 1).
 *
 * The layout is the interface between a supervisor and the workers it
 * starts (possibly a newer binary later): SURVIVE_VERSION changes with
 * any change to it, and a worker refuses a region of another version.
 *
 *   [0, 4 KiB)          struct survive_header (daemon: supervise.c)
 *   [4 KiB, 64 KiB)     struct survive_fs (src/fs/restart.c)
 *   [64 KiB, 1 MiB)     SURVIVE_NR_SLOTS struct survive_slot (src/meta/shared.c)
 *   [1 MiB, ...)        the slots' bitmaps: SURVIVE_SLOT_BYTES each
 *
 * The file is sized once (sparse: shmem backs only the pages touched). */
#ifndef CORFS_SURVIVE_H
#define CORFS_SURVIVE_H

#include <stdint.h>

#define SURVIVE_MAGIC 0x636f7266735355ULL   /* "corfsSU" */
#define SURVIVE_VERSION 1

#define SURVIVE_FS_OFF ((uint64_t) 4096)
#define SURVIVE_SLOTS_OFF ((uint64_t) 64 << 10)
#define SURVIVE_DATA_OFF ((uint64_t) 1 << 20)
#define SURVIVE_NR_SLOTS 1024
/* One disk's four maps, each reserved for META_MAX_BLOCKS bits
 * (meta-internal.h checks this against its own numbers). */
#define SURVIVE_MAP_BYTES ((uint64_t) 128 << 20)
#define SURVIVE_SLOT_BYTES (4 * SURVIVE_MAP_BYTES)
#define SURVIVE_SIZE (SURVIVE_DATA_OFF + SURVIVE_NR_SLOTS * SURVIVE_SLOT_BYTES)

struct survive_header {
  uint64_t magic;
  uint32_t version;
  uint32_t restarts;            /* workers started after the first */
};

#define SURVIVE_FS_UNANSWERED 1024

/* What src/fs needs to take over the connection: the raw FUSE_INIT
 * request the kernel sent once, and the restart mode found. */
struct survive_fs {
  uint32_t init_len;            /* 0 until the first worker saved it */
  uint32_t resend;              /* enum fs_resend_mode, once probed */
  uint32_t serving;             /* workers that took the connection over (atomic) */
  uint8_t init[8192];
  /* Without FUSE_NOTIFY_RESEND: the unique numbers of the requests read
   * and not yet answered (0: a free entry; atomic), for a new worker to
   * answer EIO. */
  uint64_t unanswered[SURVIVE_FS_UNANSWERED];
};

/* A disk's maps: which disk (name and index id), its state. */
struct survive_slot {
  char name[65];
  uint8_t in_use;
  uint8_t failed;               /* rule 7: an overlay sync failed */
  uint8_t pad;
  uint32_t id;
};

#endif
