/* corfs: the build's version and git commit (see version.h). */
#include "common/version.h"

#include "corfs-version.h"

const char *
corfs_version (void)
{
  return CORFS_VERSION;
}

const char *
corfs_commit (void)
{
  return CORFS_COMMIT;
}
