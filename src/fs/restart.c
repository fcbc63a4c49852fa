/* corfs: a FUSE connection that outlives the worker serving it
 * (`corfs mount --supervise`; docs/design.md, "Worker restarts").
 *
 * libfuse 3.14 has no API for taking over a connection; what this file
 * does with its public calls, and what it relies on:
 *
 *   - The supervisor opens /dev/fuse and mounts (fs_premount: a libfuse
 *     session that is never served, only mounted and unmounted); every
 *     worker uses a dup of that same open file, given to libfuse with
 *     fuse_session_custom_io (whose read prefaults the receive buffers:
 *     io_read).  No clone_fd (requests read on a cloned fd die with
 *     ECONNABORTED with the worker) and no auto_unmount.
 *   - The kernel sends FUSE_INIT once, and a fresh libfuse session answers
 *     EIO to everything until it has processed one.  The first worker
 *     saves the raw INIT request in the supervisor's memory before
 *     answering it; a later worker feeds that copy to
 *     fuse_session_process_buf with a unique number the kernel never
 *     issues (REPLAY_UNIQUE; not 0, which means a notification): the
 *     session is initialised with the same parameters (same options,
 *     same buffer size, same wants in fs_init), and its reply fails with
 *     ENOENT, which libfuse ignores.
 *   - Then FUSE_NOTIFY_RESEND (Linux 6.9+: a bare fuse_out_header with
 *     unique 0 and error 7) puts every request the dead worker had read
 *     but not answered back in the queue, with bit 63 set in its unique
 *     number; only then does the worker read requests.  Older kernels
 *     reject the notification with EINVAL: the first worker probes it
 *     (nothing is pending then, so it resends nothing) and records the
 *     mode.  Without it, the unique numbers of requests read and not yet
 *     answered are kept in the supervisor's memory (io_read adds,
 *     io_writev removes), and the next worker answers them EIO before it
 *     reads (answer_unanswered), rather than let their callers hang.
 *
 * Notes on the thread model: fs_restart_takeover runs on the main thread
 * before the FUSE loop starts its workers; fs_premount and
 * fs_premount_end run in the supervisor, which has one thread.
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "common/log.h"
#include "common/survive.h"
#include "fs/fs-internal.h"

/* Not in libfuse 3.14's fuse_kernel.h. */
#define NOTIFY_RESEND 7
#define OPCODE_INIT 26
#define REPLAY_UNIQUE (1ULL << 62)

/* The fields of struct fuse_in_header that are read or patched here
 * (the kernel's ABI: len, opcode, unique). */
#define IN_LEN_OFF 0
#define IN_OPCODE_OFF 4
#define IN_UNIQUE_OFF 8
#define IN_HEADER_BYTES 40

/* A worker killed while the kernel copies a request into its buffer
 * fails that copy if it has to fault a page in (faults give up once a
 * fatal signal is pending), and the kernel then answers the request EIO
 * instead of keeping it for FUSE_NOTIFY_RESEND: seen here as an EIO to
 * an O_DIRECT writer at one kill in a few.  So every receive buffer is
 * touched once, before its first read, and the kernel never faults while
 * copying.  libfuse keeps one buffer per loop thread (the thread-local
 * remembers the one this thread last prepared). */
static __thread void *faulted_buf;
static __thread size_t faulted_len;

/* Without FUSE_NOTIFY_RESEND, requests read and not answered are listed
 * in the supervisor's memory (survive_fs.unanswered) for the next worker
 * to answer EIO: read adds, a reply removes.  Requests that get no reply
 * are not listed. */
#define OPCODE_FORGET 2
#define OPCODE_INTERRUPT 36
#define OPCODE_BATCH_FORGET 42

static bool
tracking (struct fs *fs)
{
  return fs->survive && fs->survive->resend != FS_RESEND_KERNEL &&
    fs->survive->resend != FS_RESEND_UNKNOWN;
}

static void
track (struct fs *fs, uint64_t unique, bool add)
{
  uint64_t *t = fs->survive->unanswered;

  for (size_t i = 0; i < SURVIVE_FS_UNANSWERED; i++) {
    uint64_t want = add ? 0 : unique;
    if (__atomic_load_n (&t[i], __ATOMIC_RELAXED) == want &&
        __atomic_compare_exchange_n (&t[i], &want, add ? unique : 0, false,
                                     __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
      return;
  }
  if (add)
    log_warn ("fs: more than %d requests in flight: one is not tracked for a restart",
              SURVIVE_FS_UNANSWERED);
}

static ssize_t
io_read (int fd, void *buf, size_t len, void *userdata)
{
  struct fs *fs = userdata;
  ssize_t n;

  if (buf != faulted_buf || len > faulted_len) {
    long page = sysconf (_SC_PAGESIZE);
    for (size_t i = 0; i < len; i += page)
      ((volatile char *) buf)[i] = 0;
    faulted_buf = buf;
    faulted_len = len;
  }
  n = read (fd, buf, len);
  if (n >= IN_HEADER_BYTES && tracking (fs)) {
    uint32_t opcode;
    uint64_t unique;
    memcpy (&opcode, (char *) buf + IN_OPCODE_OFF, sizeof opcode);
    memcpy (&unique, (char *) buf + IN_UNIQUE_OFF, sizeof unique);
    if (opcode != OPCODE_FORGET && opcode != OPCODE_BATCH_FORGET &&
        opcode != OPCODE_INTERRUPT && unique)
      track (fs, unique, true);
  }
  return n;
}

static ssize_t
io_writev (int fd, struct iovec *iov, int count, void *userdata)
{
  struct fs *fs = userdata;
  ssize_t n = writev (fd, iov, count);
  uint64_t unique;

  /* iov[0] starts with the fuse_out_header (len, error, unique). */
  if (tracking (fs) && count > 0 && iov[0].iov_len >= 16) {
    memcpy (&unique, (char *) iov[0].iov_base + 8, sizeof unique);
    if (unique)
      track (fs, unique, false);
  }
  return n;
}

/* A new worker without resend: answer EIO to what the dead one had read
 * and not answered (their callers would otherwise wait until the
 * unmount); then the list is empty. */
static void
answer_unanswered (struct fs *fs)
{
  uint64_t *t = fs->survive->unanswered;
  unsigned n = 0;

  for (size_t i = 0; i < SURVIVE_FS_UNANSWERED; i++) {
    uint64_t u = __atomic_exchange_n (&t[i], 0, __ATOMIC_SEQ_CST);
    struct { uint32_t len; int32_t error; uint64_t unique; } h = { sizeof h, -EIO, u };
    if (u && write (fs->fuse_fd, &h, sizeof h) == (ssize_t) sizeof h)
      n++;
  }
  if (n)
    log_warn ("fs: answered EIO to %u request(s) the previous worker had not answered "
              "(no FUSE_NOTIFY_RESEND)", n);
}

int
fs_restart_attach (struct fs *fs, int fd)
{
  static const struct fuse_custom_io io = { .read = io_read, .writev = io_writev };
  int r = fuse_session_custom_io (fs->se, &io, fd);

  if (r < 0) {
    log_error ("fs: taking the supervisor's FUSE connection: %s", strerror (-r));
    return -1;
  }
  return 0;
}

struct fs_premount {
  struct fuse_session *se;
};

const char *
fs_resend_mode_name (int mode)
{
  switch (mode) {
  case FS_RESEND_KERNEL: return "kernel-resend";
  case FS_RESEND_NONE: return "no-resend";
  case FS_RESEND_SIMULATED_NONE: return "no-resend (simulated)";
  default: return "unknown";
  }
}

int
fs_premount (const struct fs_config *cfg, struct fs_premount **pp, int *fd)
{
  static const struct fuse_lowlevel_ops none;
  struct fs_premount *p = calloc (1, sizeof *p);
  struct fuse_args args = FUSE_ARGS_INIT (0, NULL);

  if (!p)
    return -1;
  if (fs_session_args (cfg, &args) == -1 ||
      !(p->se = fuse_session_new (&args, &none, sizeof none, NULL))) {
    log_error ("supervise: cannot create the FUSE session (bad -o option?)");
    goto err;
  }
  if (fuse_session_mount (p->se, cfg->mountpoint) == -1) {
    log_error ("supervise: mount on %s failed", cfg->mountpoint);
    fuse_session_destroy (p->se);
    goto err;
  }
  fuse_opt_free_args (&args);
  *fd = fuse_session_fd (p->se);
  *pp = p;
  return 0;

 err:
  fuse_opt_free_args (&args);
  free (p);
  return -1;
}

void
fs_premount_end (struct fs_premount *p)
{
  if (!p)
    return;
  fuse_session_unmount (p->se);
  fuse_session_destroy (p->se);
  free (p);
}

/* Ask the kernel to resend every request read but not answered.  0, or
 * -1 with errno (EINVAL: the kernel has no FUSE_NOTIFY_RESEND). */
static int
notify_resend (int fd)
{
  struct { uint32_t len; int32_t error; uint64_t unique; } h = { sizeof h, NOTIFY_RESEND, 0 };

  return write (fd, &h, sizeof h) == (ssize_t) sizeof h ? 0 : -1;
}

/* The first worker: read the kernel's INIT, save it, answer it; then
 * probe the resend notification. */
static int
first_init (struct fs *fs)
{
  struct survive_fs *sv = fs->survive;
  struct fuse_buf buf = { 0 };
  uint32_t opcode;
  int r;

  do
    r = fuse_session_receive_buf (fs->se, &buf);
  while (r == -EINTR && !fuse_session_exited (fs->se));
  if (r <= 0) {
    free (buf.mem);
    if (fuse_session_exited (fs->se) || r == -ENODEV)
      return 0;                 /* signalled or unmounted first: the loop ends */
    log_error ("fs: reading FUSE_INIT: %s", strerror (-r));
    return -1;
  }
  memcpy (&opcode, (char *) buf.mem + IN_OPCODE_OFF, sizeof opcode);
  if (buf.size < IN_HEADER_BYTES || buf.size > sizeof sv->init || opcode != OPCODE_INIT) {
    log_error ("fs: the first FUSE request is not an INIT of a known size (opcode %u, "
               "%zu bytes)", opcode, buf.size);
    free (buf.mem);
    return -1;
  }
  memcpy (sv->init, buf.mem, buf.size);
  __atomic_store_n (&sv->init_len, (uint32_t) buf.size, __ATOMIC_SEQ_CST);
  fuse_session_process_buf (fs->se, &buf);
  free (buf.mem);

  if (fs->simulate_no_resend)
    sv->resend = FS_RESEND_SIMULATED_NONE;
  else if (notify_resend (fs->fuse_fd) == 0)
    sv->resend = FS_RESEND_KERNEL;
  else if (errno == EINVAL)
    sv->resend = FS_RESEND_NONE;
  else {
    log_error ("fs: probing FUSE_NOTIFY_RESEND: %m");
    return -1;
  }
  log_info ("fs: supervised; worker restart mode: %s%s", fs_resend_mode_name (sv->resend),
            sv->resend == FS_RESEND_KERNEL ? "" : " (requests in flight at a worker crash "
            "are answered EIO by the next worker)");
  return 0;
}

/* A later worker: replay the saved INIT, then have the kernel resend
 * what the dead worker had read. */
static int
replay_init (struct fs *fs)
{
  struct survive_fs *sv = fs->survive;
  uint32_t len = __atomic_load_n (&sv->init_len, __ATOMIC_SEQ_CST);
  uint64_t unique = REPLAY_UNIQUE;
  struct fuse_buf buf = { .size = len };

  if (len < IN_HEADER_BYTES || len > sizeof sv->init || !(buf.mem = malloc (len))) {
    log_error ("fs: the saved FUSE_INIT is unusable (%u bytes)", len);
    return -1;
  }
  memcpy (buf.mem, sv->init, len);
  memcpy ((char *) buf.mem + IN_UNIQUE_OFF, &unique, sizeof unique);
  fuse_session_process_buf (fs->se, &buf);
  free (buf.mem);
  if (sv->resend == FS_RESEND_KERNEL && notify_resend (fs->fuse_fd) == -1) {
    log_error ("fs: FUSE_NOTIFY_RESEND: %m");
    return -1;
  }
  if (sv->resend != FS_RESEND_KERNEL)
    answer_unanswered (fs);
  log_info ("fs: took over the FUSE connection from the previous worker (mode %s)",
            fs_resend_mode_name (sv->resend));
  return 0;
}

int
fs_restart_takeover (struct fs *fs)
{
  int r;

  if (__atomic_load_n (&fs->survive->init_len, __ATOMIC_SEQ_CST) == 0)
    r = first_init (fs);
  else
    r = replay_init (fs);
  if (r == 0)
    __atomic_fetch_add (&fs->survive->serving, 1, __ATOMIC_SEQ_CST);
  return r;
}

void
fs_restart_info (void *opaque, const char **mode, unsigned *restarts)
{
  struct fs *fs = opaque;
  uint32_t serving;

  if (!fs->survive)
    return;
  serving = __atomic_load_n (&fs->survive->serving, __ATOMIC_SEQ_CST);
  *mode = fs->survive->resend == FS_RESEND_UNKNOWN ? NULL
    : fs_resend_mode_name (fs->survive->resend);
  *restarts = serving > 1 ? serving - 1 : 0;
}
