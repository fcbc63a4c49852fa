/* corfs: the one place that pins the FUSE API version. */
#ifndef CORFS_FS_FUSE_H
#define CORFS_FS_FUSE_H
/* 3.12: the loop configuration API (fuse_loop_cfg_*), the only way to
 * raise the worker thread limit above libfuse's default of 10. */
#define FUSE_USE_VERSION FUSE_MAKE_VERSION (3, 12)
#include <fuse_lowlevel.h>
#endif
