/* corfs: what the daemon module's own files share (see daemon.h for the
 * public side).
 *
 *   mount-opts.c  `corfs mount` arguments, --help, argv redaction
 *   config.c      the INI config file: a table of keys and their handlers
 *   hold.c        the hold against the kernel's FUSE request timeout
 *   state-dir.c   the state directory: checks, path resolution, the lock
 *   attach.c      attaching disks: options reconciled with their records,
 *                 the parent's checks, the engine's disk
 *   identity.c    the parent's identity at mount (meta_identity_binding
 *                 applied; an active mirror's sealed identity)
 *   hints.c       what the streamer fetches first: ranges files, traces
 *   daemon.c      start-up order, the fork and readiness pipe, systemd's
 *                 readiness (sd_notify), serving, the stop sequence
 *
 * Every function here runs on the daemon's main thread (or in
 * `corfs mount` before it forks), before the other threads start or after
 * they stopped: none takes a lock. */
#ifndef CORFS_DAEMON_INTERNAL_H
#define CORFS_DAEMON_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon/daemon.h"
#include "meta/meta.h"
#include "remote/remote.h"

struct cor_engine;
struct cor_range;
struct meta;
struct meta_disk;
struct meta_record;
struct remote;

#define DEFAULT_BLOCK_SIZE (64 * 1024)
#define DEFAULT_READAHEAD (4 << 20)
#define DEFAULT_HOLD_S 20
#define DEFAULT_CONNECT_TIMEOUT_S 10
#define REQUEST_TIMEOUT_S 30

/* state-dir.c */

/* Resolve state and mountpoint to absolute paths (creating the state
 * directory, and checking it: check_state_dir).  0 or -1 (printed). */
int mount_resolve (struct mount_opts *o);

/* Take the state directory's lock (STATE/corfs.pid, with our pid in it).
 * Returns the fd (kept open for the daemon's life) or -1 (logged). */
int lock_state (const char *state);

/* hold.c */

/* The hold to use: o->hold_s, lowered below the kernel's FUSE request
 * timeout if one is set now (logged). */
uint64_t effective_hold_s (const struct mount_opts *o);

/* attach.c */

/* Step 5 of start-up: attach every disk recorded in the index (with its
 * options if it is given again) and every new disk given, check the
 * --repin names, and refuse a mount with no disk.  0 or -1 (logged). */
int attach_disks (struct mount_opts *o, struct meta *m, struct cor_engine *e,
                  uint64_t hold_s);

/* identity.c */

/* Whether the record's identity is an active mirror's seal (verified
 * once at mount, then spent) rather than a pin: the one predicate for
 * that, beside meta_identity_binding. */
bool identity_is_sealed (const struct meta_record *rec);

/* Refuse a record in a binding state with blocks present but no
 * identity (written by an older corfs), unless repin (--repin NAME);
 * refuse --repin over a record that has one.  0 or -1 (logged). */
int check_unpinned (const char *name, const struct meta_record *rec, struct meta_disk *md,
                    bool repin);

/* An active mirror's parent must still be the image its last clean stop
 * sealed (checked on a connection of its own, bounded by hold_s); not
 * checkable after an unclean stop (widened) or without a seal: logged.
 * 0 or -1 (logged). */
int verify_mirror_parent (const char *name, const struct meta_record *rec, struct remote *r,
                          bool widened, uint64_t hold_s);

/* Clear an active mirror's verified seal in its record (rec is
 * refreshed), once the mount's checks passed.  0 or -1 (logged). */
int forget_mirror_identity (const char *name, struct meta_disk *md, struct meta_record *rec);

/* disk-sources.c */

/* A disk's sources: configs for remote_open (cfg[0] is the disk's own),
 * and the list after the first as the record keeps it. */
struct disk_sources {
  struct remote_config cfg[MAX_SOURCES];
  size_t n;                     /* 0: one parent, no source set */
  char *owned[MAX_SOURCES];     /* URLs copied from the record */
  char list[META_SOURCES_MAX];
  char ids[MAX_SOURCES][META_ID_MAX];  /* each source's recorded pin */
};

/* Fill ds from the options (dopt, NULL if not given) or the record (rec,
 * NULL for a new disk), over base (the disk's own parent config); when
 * the disk needs a source set, point base at it (base->sources).  A set
 * is refused for a record that owns or writes its parent, or is
 * incoming.  0 or -1 (logged). */
int disk_sources_build (const char *name, const struct disk_opts *dopt,
                        const struct meta_record *rec, struct remote_config *base,
                        uint64_t source_timeout_ms, struct disk_sources *ds);
/* The identity the disk is held to: a single parent's pins the first
 * source. */
void disk_sources_pin (struct disk_sources *ds, const char *pinned);
void disk_sources_free (struct disk_sources *ds);
/* A set's sources' own pins, tab-separated, as the record keeps them
 * (source_ids).  0, or -1 if they do not fit in len. */
int disk_sources_ids (struct remote *r, char *buf, size_t len);

/* supervise.c and daemon.c: a supervised worker's descriptors, at these
 * numbers after its exec (the ready pipe only for the first worker). */
enum { WORKER_FD_SETTINGS = 3, WORKER_FD_CWD, WORKER_FD_FUSE, WORKER_FD_LOCK,
       WORKER_FD_SURVIVE, WORKER_FD_READY };

struct survive_fs;
struct worker_fds {
  int fuse_fd, lock_fd, survive_fd, ready_fd;
  struct survive_fs *survive;   /* in survive_fd's mapping */
  bool simulate_no_resend;
};

/* The supervisor (in the process `corfs mount` forked, or in `corfs
 * mount` itself in the foreground): lock, mount, start workers until
 * the mount ends.  cwd_fd: the directory `corfs mount` ran in (the
 * workers parse the settings there).  The exit code. */
int supervise_main (struct mount_opts *o, int ready_fd, int cwd_fd);

/* daemon.c: a supervised worker's daemon (steps 3-8 on the supervisor's
 * lock and connection).  The exit code. */
int worker_run (struct mount_opts *o, const struct worker_fds *w);

/* hints.c */

/* The ranges disk name streams first, and where the engine writes its
 * fault trace: trace gets STATE/traces/HASH.trace (HASH of the parent's
 * identity; STATE/traces is created).  The ranges are hint_file's if one
 * is given (an unreadable or malformed one is an error); else, when the
 * overlay holds nothing yet (fresh), those of a trace left by an earlier
 * cold start of the same image, if there is one.  *hints is the caller's
 * to free.  0 or -1 (logged). */
int disk_hints (const char *state, const char *name, const char *hint_file,
                const char *identity, bool fresh, char *trace, size_t len,
                struct cor_range **hints, size_t *nr);

#endif
