/* corfs: mount.corfs, the helper mount(8) runs for an fstab line of type
 * corfs:
 *
 *   /var/lib/corfs/a  /mnt/corfs  corfs  stream=on,allow_other  0 0
 *
 * mount(8) calls it as `mount.corfs SPEC DIR [-sfnv] [-N NS] [-o OPTS]
 * [-t TYPE]`; SPEC is a state directory, DIR the mount point, and the
 * helper runs `corfs mount --state SPEC ... DIR` (the binary fixed at
 * build time).  Each option of OPTS (comma-separated) is one of:
 *   - a `corfs mount` long option: KEY=VALUE gives --KEY VALUE, and a
 *     flag KEY gives --KEY;
 *   - a FUSE or kernel mount option (allow_other, ro, nosuid, ...): -o KEY;
 *   - one that mount(8) or systemd keep for themselves (defaults, rw,
 *     auto, noauto, nofail, _netdev, user, users, owner, group, x-*,
 *     comment=*): ignored;
 * anything else is refused, or warned about and ignored with -s. */
#ifndef CORFS_MOUNT_HELPER_H
#define CORFS_MOUNT_HELPER_H

#include <stdbool.h>
#include <stddef.h>

/* mount(8)'s helper exit codes (see mount(8), RETURN CODES). */
enum { MH_EXIT_USAGE = 1, MH_EXIT_SYSTEM = 2, MH_EXIT_MOUNT_FAILED = 32 };

/* What an option of -o is to the helper. */
enum mh_kind {
  MH_CORFS_VALUE,               /* KEY=VALUE: --KEY VALUE */
  MH_CORFS_FLAG,                /* KEY: --KEY */
  MH_FUSE,                      /* -o KEY[=VALUE] */
  MH_IGNORED,                   /* mount(8)'s or systemd's own */
};

/* The i-th option name the helper knows (x-* aside), and its kind; NULL
 * past the last.  For the unit test that runs each corfs one through
 * mount_parse. */
const char *mh_known_option (size_t i, enum mh_kind *kind);

struct mh_cmd {
  char **argv;                  /* corfs_bin "mount" ...; NULL-terminated */
  size_t argc;
  bool fake;                    /* -f: show the command, mount nothing */
  bool verbose;                 /* -v: show the command */
};

/* Turn the helper's arguments (argv[0] is the helper's name) into the
 * `corfs mount` command to run.  0, or -1 with a one-line reason in err;
 * cmd is to be freed either way (mh_cmd_free).  Warnings (an option
 * ignored under -s) go to stderr. */
int mh_parse (int argc, char **argv, const char *corfs_bin, struct mh_cmd *cmd,
              char *err, size_t len);

void mh_cmd_free (struct mh_cmd *cmd);

#endif
