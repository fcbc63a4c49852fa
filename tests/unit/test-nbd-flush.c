/* Unit tests: NBD flush after a lost connection, with a real nbdkit on a
 * unix socket in a temporary directory (skipped without nbdkit).
 *
 * A connection that dies while holding unflushed writes must fail the
 * flush of every caller whose writes may have been on it, not only the
 * flush that happens to find it (rnbd_flush clears its mark). */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "remote/remote.h"

static char dir[] = "/tmp/corfs-unit-nbd.XXXXXX";
static char sock[128], url[200];
static pid_t server = -1;

/* nbdkit in the foreground (so that it is our child), a 4 MiB memory disk. */
static bool
start_server (void)
{
  unlink (sock);
  server = fork ();
  cr_assert_neq (server, -1);
  if (server == 0) {
    execlp ("nbdkit", "nbdkit", "-f", "-U", sock, "memory", "4M", (char *) NULL);
    _exit (127);
  }
  for (int i = 0; i < 100; i++) {
    if (access (sock, F_OK) == 0)
      return true;
    if (waitpid (server, NULL, WNOHANG) == server) {
      server = -1;
      return false;
    }
    usleep (50000);
  }
  return false;
}

static void
stop_server (void)
{
  if (server > 0) {
    kill (server, SIGKILL);
    waitpid (server, NULL, 0);
    server = -1;
  }
}

static void
setup (void)
{
  cr_assert_not_null (mkdtemp (dir));
  snprintf (sock, sizeof sock, "%s/nbd.sock", dir);
  snprintf (url, sizeof url, "nbd+unix:///?socket=%s", sock);
}

static void
teardown (void)
{
  stop_server ();
  unlink (sock);
  rmdir (dir);
}

TestSuite (nbd_flush, .init = setup, .fini = teardown);

struct flusher {
  struct remote *r;
  pthread_barrier_t *go;
  int ret, err;
};

static void *
flush_thread (void *arg)
{
  struct flusher *f = arg;

  pthread_barrier_wait (f->go);
  f->ret = remote_flush (f->r, now_ns () + 5 * NS_PER_SEC, &f->err);
  return NULL;
}

Test (nbd_flush, lost_connection_fails_every_concurrent_flush)
{
  struct remote_config cfg = { .url = url, .disk = "unit", .writable = true,
                               .connect_timeout_ns = 2 * NS_PER_SEC,
                               .request_timeout_ns = 2 * NS_PER_SEC };
  struct remote *r;
  char buf[65536];
  int err;

  if (!start_server ())
    cr_skip_test ("cannot start nbdkit");
  cr_assert_eq (remote_open (&cfg, &r), 0);
  cr_assert_eq (remote_get_size (r, now_ns () + 5 * NS_PER_SEC, &err), 4 << 20);
  memset (buf, 0x5a, sizeof buf);
  cr_assert_eq (remote_pwrite (r, buf, sizeof buf, 1 << 20, now_ns () + 5 * NS_PER_SEC, &err), 0);

  /* The server dies with the write unflushed, and comes back empty. */
  stop_server ();
  cr_assert (start_server ());

  /* Two flushers at once, as a guest fsync and a merge chunk's flush
   * may be: the write may belong to either, so both must fail. */
  pthread_barrier_t go;
  struct flusher f[2] = { { r, &go, 0, 0 }, { r, &go, 0, 0 } };
  pthread_t t[2];
  pthread_barrier_init (&go, NULL, 2);
  for (int i = 0; i < 2; i++)
    cr_assert_eq (pthread_create (&t[i], NULL, flush_thread, &f[i]), 0);
  for (int i = 0; i < 2; i++)
    pthread_join (t[i], NULL);
  pthread_barrier_destroy (&go);
  cr_expect_eq (f[0].ret, -1, "the first flusher was told nothing was lost");
  cr_expect_eq (f[1].ret, -1, "the second flusher was told nothing was lost");
  remote_close (r);
}

/* One flusher finds the loss; a caller that wrote before it and flushes
 * only later (a guest's next fsync, a merge chunk) is told too, while a
 * caller whose writes all came after the loss is not. */
Test (nbd_flush, lost_connection_fails_a_later_flush_of_earlier_writes)
{
  struct remote_config cfg = { .url = url, .disk = "unit", .writable = true,
                               .connect_timeout_ns = 2 * NS_PER_SEC,
                               .request_timeout_ns = 2 * NS_PER_SEC };
  struct remote *r;
  char buf[65536];
  int err;

  if (!start_server ())
    cr_skip_test ("cannot start nbdkit");
  cr_assert_eq (remote_open (&cfg, &r), 0);
  cr_assert_eq (remote_get_size (r, now_ns () + 5 * NS_PER_SEC, &err), 4 << 20);
  memset (buf, 0x5a, sizeof buf);
  uint64_t before = now_ns ();
  cr_assert_eq (remote_pwrite (r, buf, sizeof buf, 1 << 20, now_ns () + 5 * NS_PER_SEC, &err), 0);
  stop_server ();
  cr_assert (start_server ());
  cr_expect_eq (remote_flush (r, now_ns () + 5 * NS_PER_SEC, &err), -1,
                "the flush that finds the lost connection succeeded");
  cr_expect_eq (remote_flush_since (r, false, before, now_ns () + 5 * NS_PER_SEC, &err), -1,
                "a later flush for writes issued before the loss succeeded");
  uint64_t after = now_ns ();
  cr_assert_eq (remote_pwrite (r, buf, sizeof buf, 2 << 20, now_ns () + 5 * NS_PER_SEC, &err), 0);
  cr_expect_eq (remote_flush_since (r, false, after, now_ns () + 5 * NS_PER_SEC, &err), 0,
                "a flush for writes issued after the loss failed");
  remote_close (r);
}
