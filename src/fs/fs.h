/* corfs: the FUSE low-level frontend (the only module that includes
 * <fuse_lowlevel.h>; the FUSE API version is pinned here).
 *
 * The mount's root directory lists one regular file per disk of the
 * engine.  fs_mount mounts and returns; fs_run serves until the mount is
 * unmounted or SIGTERM/SIGINT/SIGHUP arrives; fs_free unmounts.
 */
#ifndef CORFS_FS_H
#define CORFS_FS_H

#include <stdbool.h>

struct cor_engine;
struct fs;
struct survive_fs;

struct fs_config {
  const char *mountpoint;       /* absolute */
  const char *fsname;           /* "corfs:STATE_DIR" */
  const char *const *options;   /* extra -o options, NULL-terminated; may be NULL */
  bool debug;                   /* FUSE protocol debugging to stderr */
  unsigned readahead_kb;        /* the mount's kernel readahead; 0: kernel default */
  /* Supervised (`corfs mount --supervise`): the connection the supervisor
   * mounted (fs_premount), and its memory that outlives this worker
   * (common/survive.h); unused unless supervised. */
  bool supervised;
  int fuse_fd;
  struct survive_fs *survive;
  bool simulate_no_resend;      /* behave as on a kernel without FUSE_NOTIFY_RESEND */
};

/* Create the session and mount.  0, or -1 with the reason logged. */
int fs_mount (struct cor_engine *e, const struct fs_config *cfg, struct fs **fsp);

/* Serve requests on the FUSE worker threads until unmounted or signalled.
 * 0 or -1. */
int fs_run (struct fs *fs);

/* Unmount (if still mounted) and free. */
void fs_free (struct fs *fs);

/* The supervisor's side (restart.c): open /dev/fuse and mount it on
 * cfg->mountpoint with cfg's options (fuse_fd is ignored); *fd is the
 * connection, to be handed to each worker.  0 or -1 (logged). */
struct fs_premount;
int fs_premount (const struct fs_config *cfg, struct fs_premount **pp, int *fd);

/* Unmount (if still mounted) and close the connection. */
void fs_premount_end (struct fs_premount *p);

/* How a worker restart gets the requests the dead one had read: the
 * kernel resends them (Linux 6.9+), or it cannot. */
enum fs_resend_mode { FS_RESEND_UNKNOWN, FS_RESEND_KERNEL, FS_RESEND_NONE,
                      FS_RESEND_SIMULATED_NONE };
const char *fs_resend_mode_name (int mode);

/* Supervised: the restart mode in force (NULL until the first worker
 * probed it) and how many workers took the connection over after the
 * first.  Any thread. */
void fs_restart_info (void *fs, const char **mode, unsigned *restarts);

#endif
