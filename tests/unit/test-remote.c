/* Unit tests: the remote wrappers' block-status cache and extent lists,
 * on a file:// parent (a sparse file in a temporary directory); sizes a
 * parent reports, through the HTTP backend's real header parsing against
 * a minimal server on loopback. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/util.h"
#include "remote/remote-internal.h"

#define KiB 1024ULL
#define MiB (1024 * KiB)

static char dir[] = "/tmp/corfs-unit-remote.XXXXXX";
static char path[128], url[160];

/* 4 MiB: data at [0, 64K) and [1M, 1M+64K), holes elsewhere. */
static void
make_parent (void)
{
  char buf[64 * KiB];
  int fd;

  cr_assert_not_null (mkdtemp (dir));
  snprintf (path, sizeof path, "%s/parent.img", dir);
  snprintf (url, sizeof url, "file://%s", path);
  fd = open (path, O_RDWR | O_CREAT | O_TRUNC, 0600);
  cr_assert_geq (fd, 0);
  memset (buf, 0xab, sizeof buf);
  cr_assert_eq (pwrite (fd, buf, sizeof buf, 0), (ssize_t) sizeof buf);
  cr_assert_eq (pwrite (fd, buf, sizeof buf, MiB), (ssize_t) sizeof buf);
  cr_assert_eq (ftruncate (fd, 4 * MiB), 0);
  close (fd);
}

static void
remove_parent (void)
{
  unlink (path);
  rmdir (dir);
}

static struct remote *
open_parent (bool writable)
{
  struct remote_config cfg = { .url = url, .disk = "unit", .writable = writable,
                               .connect_timeout_ns = NS_PER_SEC,
                               .request_timeout_ns = NS_PER_SEC };
  struct remote *r;
  int err;

  cr_assert_eq (remote_open (&cfg, &r), 0);
  cr_assert_eq (remote_get_size (r, now_ns () + NS_PER_SEC, &err), (int64_t) (4 * MiB));
  return r;
}

static size_t
zeros (struct remote *r, uint64_t offset, uint64_t count, struct remote_extent **v)
{
  size_t n;
  int err;

  cr_assert_eq (remote_zero_extents (r, offset, count, now_ns () + NS_PER_SEC, v, &n, &err), 0);
  return n;
}

TestSuite (remote, .init = make_parent, .fini = remove_parent);

/* Answers for sub-ranges are clipped to the range asked, whether they
 * come from the parent or from the window kept after the first. */
Test (remote, zero_extents_clipped)
{
  struct remote *r = open_parent (false);
  struct remote_extent *v;
  size_t n;

  n = zeros (r, 0, 128 * KiB, &v);
  cr_assert_eq (n, 1);
  cr_assert_eq (v[0].offset, 64 * KiB);
  cr_assert_eq (v[0].length, 64 * KiB);
  free (v);

  n = zeros (r, 512 * KiB, 2 * MiB, &v);  /* spans the second data run */
  cr_assert_eq (n, 2);
  cr_assert_eq (v[0].offset, 512 * KiB);
  cr_assert_eq (v[0].length, 512 * KiB);
  cr_assert_eq (v[1].offset, MiB + 64 * KiB);
  cr_assert_eq (v[1].length, 2 * MiB + 512 * KiB - (MiB + 64 * KiB));
  free (v);

  n = zeros (r, MiB, 64 * KiB, &v);       /* all data */
  cr_assert_eq (n, 0);
  free (v);
  remote_close (r);
}

/* Our own write to the parent turns a hole into data: a block-status
 * answer kept from before it must not be used afterwards. */
Test (remote, zero_extents_see_our_writes)
{
  struct remote *r = open_parent (true);
  struct remote_extent *v;
  char buf[4 * KiB];
  size_t n;
  int err;

  n = zeros (r, 2 * MiB, MiB, &v);
  cr_assert_eq (n, 1);
  cr_assert_eq (v[0].length, MiB);
  free (v);

  memset (buf, 0x5a, sizeof buf);
  cr_assert_eq (remote_pwrite (r, buf, sizeof buf, 2 * MiB + 256 * KiB,
                               now_ns () + NS_PER_SEC, &err), 0);
  n = zeros (r, 2 * MiB, MiB, &v);
  cr_assert_eq (n, 2, "the write at 2.25 MiB is still reported as zeros");
  cr_assert_eq (v[0].offset, 2 * MiB);
  cr_assert_eq (v[0].length, 256 * KiB);
  cr_assert_eq (v[1].offset, 2 * MiB + 260 * KiB);
  free (v);
  remote_close (r);
}

/* Long lists (a fragmented parent) keep every extent, in order. */
Test (remote, extent_append_long)
{
  struct remote_extent *v = NULL;
  size_t n = 0;

  for (uint64_t i = 0; i < 100000; i++)
    cr_assert_eq (remote_extent_append (&v, &n, i * 8192, 4096), 0);
  cr_assert_eq (remote_extent_append (&v, &n, 100000 * 8192ULL - 4096, 4096), 0);  /* adjacent: merged */
  cr_assert_eq (n, 100000);
  for (size_t i = 0; i < n; i++) {
    cr_assert_eq (v[i].offset, i * 8192);
    cr_assert_eq (v[i].length, i + 1 < n ? 4096 : 8192);
  }
  free (v);
}

/* ---- sizes reported by a parent (issue 15 item 12) ---- */

/* A minimal HTTP/1.1 server on 127.0.0.1: HEAD answers head_reply
 * (a status line and headers), a GET answers 206 with one byte and
 * "Content-Range: bytes 0-0/TOTAL".  Both are read at every request, so
 * a test can change them between calls.  One connection at a time,
 * closed after each answer. */
static char head_reply[256], total[64];
static pthread_mutex_t srv_lock = PTHREAD_MUTEX_INITIALIZER;
static int srv_fd = -1;

static void
answer (int fd)
{
  char req[4096], out[512];
  size_t len = 0;
  ssize_t n;

  while (len < sizeof req - 1 && (n = read (fd, req + len, sizeof req - 1 - len)) > 0) {
    len += n;
    req[len] = '\0';
    if (strstr (req, "\r\n\r\n"))
      break;
  }
  req[len] = '\0';
  pthread_mutex_lock (&srv_lock);
  if (!strncmp (req, "HEAD ", 5))
    snprintf (out, sizeof out, "%s\r\nConnection: close\r\n\r\n", head_reply);
  else
    snprintf (out, sizeof out, "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-0/%s\r\n"
              "Content-Length: 1\r\nConnection: close\r\n\r\nX", total);
  pthread_mutex_unlock (&srv_lock);
  if (write (fd, out, strlen (out)) < 0)
    return;
}

static void *
serve (void *arg)
{
  (void) arg;
  for (;;) {
    int c = accept (srv_fd, NULL, NULL);
    if (c == -1)
      continue;
    answer (c);
    close (c);
  }
  return NULL;
}

/* Start the server, set its replies; the URL of its one file in url. */
static void
start_server (const char *head, const char *tot)
{
  struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl (INADDR_LOOPBACK) };
  socklen_t alen = sizeof a;
  pthread_t t;

  snprintf (head_reply, sizeof head_reply, "%s", head);
  snprintf (total, sizeof total, "%s", tot);
  srv_fd = socket (AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  cr_assert_geq (srv_fd, 0);
  cr_assert_eq (bind (srv_fd, (struct sockaddr *) &a, sizeof a), 0);
  cr_assert_eq (listen (srv_fd, 8), 0);
  cr_assert_eq (getsockname (srv_fd, (struct sockaddr *) &a, &alen), 0);
  snprintf (url, sizeof url, "http://127.0.0.1:%d/disk.img", ntohs (a.sin_port));
  cr_assert_eq (pthread_create (&t, NULL, serve, NULL), 0);
  pthread_detach (t);
}

static void
set_total (const char *tot)
{
  pthread_mutex_lock (&srv_lock);
  snprintf (total, sizeof total, "%s", tot);
  pthread_mutex_unlock (&srv_lock);
}

static struct remote *
open_http (void)
{
  struct remote_config cfg = { .url = url, .disk = "unit",
                               .connect_timeout_ns = 2 * NS_PER_SEC,
                               .request_timeout_ns = 2 * NS_PER_SEC };
  struct remote *r;

  cr_assert_eq (remote_open (&cfg, &r), 0);
  return r;
}

#define HEAD_405 "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0"

/* The size, or -1 with *err and the parent's last error in msg. */
static int64_t
http_size (const char *tot, int *err, char *msg, size_t len)
{
  struct remote *r;
  int64_t size;

  set_total (tot);
  r = open_http ();
  size = remote_get_size (r, now_ns () + 5 * NS_PER_SEC, err);
  remote_status (r, msg, len);
  remote_close (r);
  return size;
}

TestSuite (remote_size);

/* Content-Range totals that are no size: a clear error, never an abort
 * (63d3432 asserted on -1 and took 2^63-1 for a size). */
Test (remote_size, http_content_range_total)
{
  static const char *bad[] = { "-1", "99999999999999999999", "9223372036854775807",
                               "1152921504606846977", "12abc", "+5", " 7", "" };
  char msg[1280];
  int err;

  start_server (HEAD_405, "1048576");
  cr_assert_eq (http_size ("1048576", &err, msg, sizeof msg), 1048576,
                "a sane total is not taken: %s", msg);
  cr_assert_eq (http_size ("1152921504606846976", &err, msg, sizeof msg),
                (int64_t) REMOTE_MAX_SIZE, "1 EiB is refused: %s", msg);
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    err = 0;
    cr_assert_eq (http_size (bad[i], &err, msg, sizeof msg), -1,
                  "Content-Range total '%s' was taken for a size", bad[i]);
    cr_assert_eq (err, ERANGE, "total '%s': err %d (%s), expected ERANGE", bad[i], err,
                  strerror (err));
    cr_assert_not_null (strstr (msg, "Content-Range"),
                        "total '%s': the error does not name Content-Range: %s", bad[i], msg);
  }
}

/* A HEAD whose Content-Length is no size is not used: the ranged GET
 * tells the size. */
Test (remote_size, http_head_content_length)
{
  char msg[1280];
  int err;

  start_server ("HTTP/1.1 200 OK\r\nAccept-Ranges: bytes\r\n"
                "Content-Length: 9223372036854775807", "65536");
  cr_assert_eq (http_size ("65536", &err, msg, sizeof msg), 65536, "%s", msg);
}

/* A re-pin under a running disk (activation, merge, abort) that meets an
 * absurd size fails with an error, never an abort, and keeps the pin. */
Test (remote_size, repin_absurd_size)
{
  struct remote *r;
  char id[512], before[512], msg[1280];
  int err;

  start_server (HEAD_405, "1048576");
  r = open_http ();
  cr_assert_eq (remote_get_size (r, now_ns () + 5 * NS_PER_SEC, &err), 1048576);
  remote_identity (r, before, sizeof before);
  cr_assert_str_neq (before, "");
  set_total ("-1");
  err = 0;
  cr_assert_eq (remote_repin (r, true, 1048576, id, sizeof id, now_ns () + 5 * NS_PER_SEC,
                              &err), -1);
  cr_assert_eq (err, ERANGE, "err %d (%s)", err, strerror (err));
  remote_status (r, msg, sizeof msg);
  cr_assert_not_null (strstr (msg, "Content-Range"), "%s", msg);
  remote_identity (r, id, sizeof id);
  cr_assert_str_eq (id, before, "a failed re-pin changed the pin");
  set_total ("1048576");
  cr_assert_eq (remote_repin (r, true, 1048576, id, sizeof id, now_ns () + 5 * NS_PER_SEC,
                              &err), 0, "re-pin: %s", strerror (err));
  cr_assert_str_eq (id, before);
  /* The earlier failure no longer describes the parent. */
  cr_assert_neq (remote_status (r, msg, sizeof msg), REMOTE_RETRYING);
  cr_assert_neq (remote_status (r, msg, sizeof msg), REMOTE_DOWN);
  cr_assert_str_eq (msg, "", "the last error stayed after a successful re-pin: %s", msg);
  remote_close (r);
}

/* A re-pin tells the identity of the parent as it is now, from a new
 * open: a file replaced by another of the same size is told apart. */
Test (remote, repin_fresh_open)
{
  struct remote *r = open_parent (false);
  char before[512], after[512], tmp[160];
  int err, fd;

  remote_identity (r, before, sizeof before);
  cr_assert_str_neq (before, "");
  snprintf (tmp, sizeof tmp, "%s/other.img", dir);
  fd = open (tmp, O_RDWR | O_CREAT | O_TRUNC, 0600);
  cr_assert_geq (fd, 0);
  cr_assert_eq (ftruncate (fd, 4 * MiB), 0);
  close (fd);
  cr_assert_eq (rename (tmp, path), 0);
  cr_assert_eq (remote_repin (r, true, 4 * MiB, after, sizeof after, now_ns () + NS_PER_SEC,
                              &err), 0);
  cr_assert_str_neq (after, "", "empty identity recorded");
  cr_assert_str_neq (after, before, "the re-pin did not see the replaced file");
  remote_identity (r, before, sizeof before);
  cr_assert_str_eq (before, after);
  remote_close (r);
}

/* Replace the parent file with another of size bytes (a swap). */
static void
swap_parent (uint64_t size)
{
  char tmp[160];
  int fd;

  snprintf (tmp, sizeof tmp, "%s/other.img", dir);
  fd = open (tmp, O_RDWR | O_CREAT | O_TRUNC, 0600);
  cr_assert_geq (fd, 0);
  cr_assert_eq (ftruncate (fd, size), 0);
  close (fd);
  cr_assert_eq (rename (tmp, path), 0);
}

/* remote_verify asks on an open of its own: a swapped file is found
 * although the pooled fd still reads the old one, and the parent is
 * "changed" from then on; a merge's re-pin (accept_changed false) then
 * refuses it, an activation's (true) takes it. */
Test (remote, verify_finds_swap_repin_keeps_changed)
{
  struct remote *r = open_parent (false);
  char before[512], after[512], msg[1280];
  int err = 0;

  remote_identity (r, before, sizeof before);
  cr_assert_eq (remote_verify (r, NULL, now_ns () + NS_PER_SEC, &err), 0, "%s", strerror (err));
  swap_parent (4 * MiB);
  cr_assert_eq (remote_verify (r, NULL, now_ns () + NS_PER_SEC, &err), -1);
  cr_assert_eq (err, ESTALE);
  cr_assert_eq (remote_status (r, msg, sizeof msg), REMOTE_CHANGED);
  cr_assert_not_null (strstr (msg, "changed"), "%s", msg);
  err = 0;
  cr_assert_eq (remote_repin (r, false, 4 * MiB, after, sizeof after, now_ns () + NS_PER_SEC,
                              &err), -1, "a merge's re-pin took a changed parent");
  cr_assert_eq (err, ESTALE);
  remote_identity (r, after, sizeof after);
  cr_assert_str_eq (after, before, "the refused re-pin moved the pin");
  cr_assert_eq (remote_status (r, msg, sizeof msg), REMOTE_CHANGED);
  cr_assert_eq (remote_repin (r, true, 4 * MiB, after, sizeof after, now_ns () + NS_PER_SEC,
                              &err), 0, "%s", strerror (err));
  cr_assert_str_neq (after, before);
  cr_assert_neq (remote_status (r, msg, sizeof msg), REMOTE_CHANGED);
  remote_close (r);
}

/* A re-pin checks the size: a parent of another size is refused, the
 * sizes are in the last error, and the pin stays. */
Test (remote, repin_size_mismatch)
{
  struct remote *r = open_parent (false);
  char before[512], after[512], msg[1280];
  int err = 0;

  remote_identity (r, before, sizeof before);
  swap_parent (8 * MiB);
  cr_assert_eq (remote_repin (r, true, 4 * MiB, after, sizeof after, now_ns () + NS_PER_SEC,
                              &err), -1, "a parent of another size was pinned");
  cr_assert_eq (err, EMEDIUMTYPE, "err %d (%s)", err, strerror (err));
  remote_status (r, msg, sizeof msg);
  cr_assert_not_null (strstr (msg, "8388608"), "%s", msg);
  cr_assert_not_null (strstr (msg, "4194304"), "%s", msg);
  remote_identity (r, after, sizeof after);
  cr_assert_str_eq (after, before);
  remote_close (r);
}

/* A parent found changed is not written (as it is not read). */
Test (remote, changed_parent_not_written)
{
  struct remote *r = open_parent (true);
  char buf[4096] = "corfs";
  int err = 0;

  swap_parent (4 * MiB);
  cr_assert_eq (remote_verify (r, NULL, now_ns () + NS_PER_SEC, &err), -1);
  err = 0;
  cr_assert_eq (remote_pwrite (r, buf, sizeof buf, 0, now_ns () + NS_PER_SEC, &err), -1,
                "a changed parent was written");
  cr_assert_eq (err, ESTALE, "err %d (%s)", err, strerror (err));
  remote_close (r);
}
