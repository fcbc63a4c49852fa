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

struct fs_config {
  const char *mountpoint;       /* absolute */
  const char *fsname;           /* "corfs:STATE_DIR" */
  const char *const *options;   /* extra -o options, NULL-terminated; may be NULL */
  bool debug;                   /* FUSE protocol debugging to stderr */
  unsigned readahead_kb;        /* the mount's kernel readahead; 0: kernel default */
};

/* Create the session and mount.  0, or -1 with the reason logged. */
int fs_mount (struct cor_engine *e, const struct fs_config *cfg, struct fs **fsp);

/* Serve requests on the FUSE worker threads until unmounted or signalled.
 * 0 or -1. */
int fs_run (struct fs *fs);

/* Unmount (if still mounted) and free. */
void fs_free (struct fs *fs);

#endif
