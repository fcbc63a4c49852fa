/* corfs: `corfs mount`: options, config file, and the daemon that runs
 * fs + ctl + cor with the committer. */
#ifndef CORFS_DAEMON_H
#define CORFS_DAEMON_H

#include <stdbool.h>
#include <stdint.h>

/* One disk as given on the command line or in the config file.  Strings
 * are owned by the options. */
struct disk_opts {
  char *name;
  char *url;                    /* may hold credentials */
  uint64_t block_size;          /* 0: default (or as recorded) */
  bool parent_owned;
  int stream;                   /* -1: the mount's setting; else enum cor_stream_mode */
  uint64_t rate;                /* streamer bytes/s; 0 unlimited */
  bool have_rate;
  int release_parent;           /* -1: default (yes) */
  char *hint_file;              /* ranges to stream first */
  /* HTTP(S)/S3 settings (config file only; see conf/corfs.conf) */
  char *credentials_file, *token_file, *ca_file, *client_cert, *client_key;
  char *s3_endpoint, *s3_region;
  char **headers;               /* NULL-terminated */
  size_t nr_headers;
  bool insecure, s3_virtual_host, accept_changed_parent;
  bool incoming;
  int write_mode;               /* -1: the mount's; 0 writeback; 1 mirror */
  /* More sources of the same image, after this one in order of
   * preference (--disk NAME=URL given again, [source NAME ID]): each
   * with name (the ID, or "" from the command line), url and its own
   * HTTP(S)/S3 settings; the other fields unused. */
  struct disk_opts *sources;
  size_t nr_sources;
  bool spread;                  /* policy = spread (else failover) */
  int format;                   /* -1: the mount's --format; else enum format_kind */
  char *backing_url;            /* a qcow2 parent's backing file (config file only) */
};

/* The most sources a disk can have, and the default and longest
 * source-timeout (a source's most time without progress). */
#define MAX_SOURCES 8
#define DEFAULT_SOURCE_TIMEOUT_MS 1500
#define SOURCE_TIMEOUT_MAX_MS 60000

/* The longest hold and connect timeout accepted (seconds): a guest
 * request waiting longer than an hour is a hung VM, not patience. */
#define HOLD_MAX_S 3600
#define CONNECT_TIMEOUT_MAX_S 3600

struct mount_opts {
  char *state;                  /* absolute after mount_resolve */
  char *mountpoint;             /* absolute after mount_resolve */
  struct disk_opts *disks;
  size_t nr_disks;
  uint64_t block_size;          /* default for new disks */
  uint64_t hold_s;
  bool hold_given;              /* by the command line or the config file */
  uint64_t connect_timeout_s;
  int stream;                   /* enum cor_stream_mode, default on */
  uint64_t rate;                /* default streamer rate, 0 unlimited */
  uint64_t readahead;           /* the mount's kernel readahead, bytes; 0: kernel's */
  char *metrics_listen;         /* serve GET /metrics there (metrics_listen_check); NULL */
  unsigned cli_set;             /* CLI_* bits: given on the command line */
  bool foreground;
  bool supervise;               /* --supervise: a supervisor keeps the FUSE connection */
  bool parent_owned;
  bool incoming;
  bool mirror, have_write_mode;
  bool verbose;
  bool fuse_debug;
  char **fuse_options;          /* NULL-terminated */
  size_t nr_fuse_options;
  char **repin;                 /* --repin NAME: disks whose record has no identity */
  size_t nr_repin;
  uint64_t source_timeout_ms;   /* source-timeout (0: the default) */
  int format;                   /* --format: -1 not given; else enum format_kind */
  uint64_t qcow2_l2_cache;      /* bytes of L2 tables kept per qcow2 disk; 0: default */
  /* `corfs mount`'s own arguments, each NUL-terminated, as given (before
   * redaction): a supervised worker's settings (supervise.c).  Set by
   * main after mount_parse; freed by mount_opts_free. */
  char *raw_args;
  size_t raw_len;
};

/* Daemon-wide settings given on the command line win over the config
 * file's. */
enum { CLI_BLOCK_SIZE = 1, CLI_HOLD = 2, CLI_STREAM = 4, CLI_CONNECT_TIMEOUT = 8,
       CLI_READAHEAD = 16, CLI_METRICS_LISTEN = 32, CLI_SUPERVISE = 64 };

/* Parse `corfs mount` arguments (argv[0] is "mount").  Returns 0, 1 when
 * --help was printed, or -1 after printing a one-line error. */
int mount_parse (int argc, char **argv, struct mount_opts *o);

/* One more source for disk d (mount-opts.c): a zeroed entry of
 * d->sources named id, or NULL (out of memory). */
struct disk_opts *disk_add_source (struct disk_opts *d, const char *id);

/* What may be shown of a --disk URL in argv and in errors about the
 * argument: scheme://host[:port]/path only (userinfo up to the
 * authority's last '@', query, fragment and ';' parameters dropped,
 * whatever their names).  Written to out (len bytes, NUL-terminated;
 * never longer than s); returns the length it needed. */
size_t argv_redact (const char *s, char *out, size_t len);

/* Overwrite in place the secret parts of one --disk NAME=URL argument
 * (argv[i] after it was copied): the URL becomes what argv_redact keeps,
 * zero-padded to its old length.  NAME=@FILE is left as it is. */
void scrub_disk_arg (char *arg);

/* Read an INI config file into o (daemon-wide settings whose bit is in
 * o->cli_set keep their command-line value; disks are added).  0 or -1
 * (printed). */
int config_load (const char *path, struct mount_opts *o);

/* Parse a duration setting, key "hold" or "connect-timeout" (the same
 * limits on the command line and in the config file): whole seconds from
 * 1 to HOLD_MAX_S / CONNECT_TIMEOUT_MAX_S.  0, or -1 with a one-line
 * reason in err. */
int mount_parse_duration (const char *key, const char *value, uint64_t *out,
                          char *err, size_t len);

/* Where fuse_kernel_timeout_s reads the kernel's settings:
 * "/proc/sys/fs/fuse" (unit tests point it at a directory of their own,
 * so that they do not depend on the host's). */
extern const char *fuse_sysctl_dir;

/* The kernel's FUSE request timeout for a new mount, in seconds (0:
 * none), from fuse_sysctl_dir's {default,max}_request_timeout: the
 * smaller one that is set; *which names its sysctl (fs.fuse.NAME). */
uint64_t fuse_kernel_timeout_s (const char **which);

/* The largest hold for a kernel FUSE request timeout kernel_s (> 0):
 * half of it, at least 1 s.  Its expiry aborts the whole mount, and a
 * request can wait in the kernel's queue before a worker sees it, so
 * the hold keeps a wide margin rather than a fixed 2 s. */
uint64_t hold_max_for_kernel (uint64_t kernel_s);

/* Fit the hold below the kernel's FUSE request timeout kernel_s (0: none)
 * (hold_max_for_kernel).  A hold the user gave (given) that does not fit
 * is an error: 0 or -1 with the reason in err; the default is lowered to
 * fit.  *effective is the hold to use. */
int hold_fit (uint64_t hold_s, bool given, uint64_t kernel_s, const char *which,
              uint64_t *effective, char *err, size_t len);

/* "on", "off", "paused" → enum cor_stream_mode, or -1. */
int parse_stream_mode (const char *s);

/* Run `corfs mount`: returns the process exit code. */
int mount_main (struct mount_opts *o);

void mount_opts_free (struct mount_opts *o);

/* `corfs __worker`: a supervised worker, started by the supervisor with
 * its descriptors at fixed numbers (supervise.c).  The exit code. */
int worker_main (void);

#endif
