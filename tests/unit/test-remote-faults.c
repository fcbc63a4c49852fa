/* Unit tests: the remote wrappers over a file:// parent whose system
 * calls fail on demand.  This program defines fdatasync and fallocate
 * itself, so the real backend (src/remote/file.c, linked in statically)
 * calls these, which fail once when asked and otherwise do the real call.
 *  - a failed fdatasync reaches every flush that must cover the writes
 *    issued before it, not just the first (the kernel reports it once);
 *  - a loss noted at exactly since_ns fails the flush;
 *  - a parent that cannot punch (EOPNOTSUPP) is asked once, and asking
 *    counts no error and no retry. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common/util.h"
#include "remote/remote-internal.h"

#define MiB (1024 * 1024ULL)

static int fail_fdatasync;      /* atomic: the next fdatasync fails (EIO) */
static int no_punch;            /* atomic: fallocate fails (EOPNOTSUPP) */
static int fallocate_calls;     /* atomic */

int
fdatasync (int fd)
{
  if (__atomic_exchange_n (&fail_fdatasync, 0, __ATOMIC_SEQ_CST)) {
    errno = EIO;
    return -1;
  }
  return syscall (SYS_fdatasync, fd);
}

int
fallocate (int fd, int mode, off_t offset, off_t len)
{
  __atomic_fetch_add (&fallocate_calls, 1, __ATOMIC_SEQ_CST);
  if (__atomic_load_n (&no_punch, __ATOMIC_SEQ_CST)) {
    errno = EOPNOTSUPP;
    return -1;
  }
  return syscall (SYS_fallocate, fd, mode, offset, len);
}

static char dir[] = "/tmp/corfs-unit-rfaults.XXXXXX";
static char path[128], url[160];

static void
setup (void)
{
  int fd;

  cr_assert_not_null (mkdtemp (dir));
  snprintf (path, sizeof path, "%s/parent.img", dir);
  snprintf (url, sizeof url, "file://%s", path);
  fd = open (path, O_RDWR | O_CREAT | O_TRUNC, 0600);
  cr_assert_geq (fd, 0);
  cr_assert_eq (ftruncate (fd, 4 * MiB), 0);
  close (fd);
}

static void
teardown (void)
{
  unlink (path);
  rmdir (dir);
}

static struct remote *
open_parent (void)
{
  struct remote_config cfg = { .url = url, .disk = "unit", .writable = true,
                               .connect_timeout_ns = NS_PER_SEC,
                               .request_timeout_ns = NS_PER_SEC };
  struct remote *r;
  int err;

  cr_assert_eq (remote_open (&cfg, &r), 0);
  cr_assert_eq (remote_get_size (r, now_ns () + 5 * NS_PER_SEC, &err), (int64_t) (4 * MiB));
  cr_assert_eq (remote_make_writable (r, now_ns () + 5 * NS_PER_SEC, &err), 0);
  return r;
}

TestSuite (remote_faults, .init = setup, .fini = teardown);

Test (remote_faults, failed_fdatasync_fails_every_flush_of_earlier_writes)
{
  struct remote *r = open_parent ();
  char buf[65536];
  int err = 0;

  memset (buf, 0x5a, sizeof buf);
  uint64_t since = now_ns ();
  cr_assert_eq (remote_pwrite (r, buf, sizeof buf, MiB, now_ns () + 5 * NS_PER_SEC, &err), 0);
  __atomic_store_n (&fail_fdatasync, 1, __ATOMIC_SEQ_CST);
  /* The flusher that meets the error, and one that flushes the same
   * writes after it (a merge chunk and a guest fsync): both fail. */
  cr_expect_eq (remote_flush_since (r, false, since, now_ns () + 5 * NS_PER_SEC, &err), -1,
                "the flush whose fdatasync failed succeeded");
  cr_expect_eq (remote_flush_since (r, false, since, now_ns () + 5 * NS_PER_SEC, &err), -1,
                "a second flush of writes issued before the failure succeeded");
  /* Writes issued after the failure are not affected. */
  uint64_t later = now_ns () + 1;
  while (now_ns () <= later)
    ;
  later = now_ns ();
  cr_assert_eq (remote_pwrite (r, buf, sizeof buf, 2 * MiB, now_ns () + 5 * NS_PER_SEC, &err), 0);
  cr_expect_eq (remote_flush_since (r, false, later, now_ns () + 5 * NS_PER_SEC, &err), 0,
                "a flush of writes issued after the failure failed");
  remote_close (r);
}

Test (remote_faults, loss_at_since_fails_the_flush)
{
  struct remote *r = open_parent ();
  uint64_t t = now_ns ();
  int err = 0;

  remote_note_lost_writes (r, t);
  cr_expect_eq (remote_flush_since (r, false, t, now_ns () + 5 * NS_PER_SEC, &err), -1,
                "a loss at since_ns itself was not reported");
  remote_close (r);
}

Test (remote_faults, zeroing_unsupported_is_asked_once_and_not_an_error)
{
  struct remote *r = open_parent ();
  struct remote_stats st;
  int err = 0;

  __atomic_store_n (&no_punch, 1, __ATOMIC_SEQ_CST);
  __atomic_store_n (&fallocate_calls, 0, __ATOMIC_SEQ_CST);
  for (int i = 0; i < 3; i++)
    cr_assert_eq (remote_pwrite_zeros (r, i * MiB, 65536, now_ns () + 5 * NS_PER_SEC, &err), 0);
  remote_get_stats (r, &st);
  cr_expect_eq (st.errors, 0, "asking to zero counted %" PRIu64 " errors", st.errors);
  cr_expect_eq (st.retries, 0, "asking to zero counted %" PRIu64 " retries", st.retries);
  cr_expect_eq (__atomic_load_n (&fallocate_calls, __ATOMIC_SEQ_CST), 1,
                "the parent was asked to zero %d times", fallocate_calls);
  remote_close (r);
}
