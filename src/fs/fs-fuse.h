/* corfs: the one place that pins the FUSE API version. */
#ifndef CORFS_FS_FUSE_H
#define CORFS_FS_FUSE_H
#define FUSE_USE_VERSION 35
#include <fuse_lowlevel.h>
#endif
