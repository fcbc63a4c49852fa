/* corfs: what the FUSE frontend's own files share (fs.h is the public
 * side): fs.c serves requests, restart.c takes a FUSE connection over
 * from a dead worker (`corfs mount --supervise`). */
#ifndef CORFS_FS_INTERNAL_H
#define CORFS_FS_INTERNAL_H

#include <stdbool.h>
#include <time.h>

#include "fs/fs-fuse.h"
#include "fs/fs.h"

struct survive_fs;

struct fs {
  struct cor_engine *e;
  struct fuse_session *se;
  struct timespec mount_time;
  bool mounted;                 /* by us: fs_free unmounts */
  char bdi[32];                 /* the mount's "MAJOR:MINOR" in /sys/class/bdi */
  unsigned readahead_kb;
  int readahead_set;            /* 0, then 1 once tried (atomic) */
  int fuse_fd;                  /* supervised: the supervisor's connection; -1 */
  struct survive_fs *survive;   /* supervised: its saved INIT; NULL */
  bool simulate_no_resend;
  unsigned max_read;            /* -o max_read=N, 0 if not given (fs_init) */
};

/* The libfuse arguments of a corfs session (fsname, subtype, the -o
 * options, -d).  0 or -1 (args are the caller's to free either way). */
int fs_session_args (const struct fs_config *cfg, struct fuse_args *args);

/* restart.c: before the FUSE loop of a supervised worker.  The first
 * worker reads the kernel's FUSE_INIT, saves it in the supervisor's
 * memory and answers it, then probes FUSE_NOTIFY_RESEND; a later one
 * replays the saved INIT into its fresh session and asks the kernel to
 * resend what the dead worker had read.  0, or -1 (logged). */
int fs_restart_takeover (struct fs *fs);

/* restart.c: serve the supervisor's connection fd (custom I/O whose
 * reads never fault in the kernel).  0, or -1 (logged). */
int fs_restart_attach (struct fs *fs, int fd);

#endif
