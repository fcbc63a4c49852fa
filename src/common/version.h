/* corfs: the build's version and git commit, for `corfs --version`, the
 * control socket's ping reply and the corfs_build_info metric.
 *
 * Both are fixed at build time: SConstruct writes them into the
 * generated header corfs-version.h (VARIANT/gen), which only version.c
 * includes, so that a new commit rebuilds one object. */
#ifndef CORFS_VERSION_H
#define CORFS_VERSION_H

/* The release number, from the VERSION file at the top of the tree
 * ("unknown" without one). */
const char *corfs_version (void);

/* `git describe --always --dirty` of the tree built ("unknown" when it
 * was built outside git). */
const char *corfs_commit (void);

#endif
