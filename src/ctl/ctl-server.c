/* corfs: the control socket server: the socket, its thread, accepting
 * clients (peer credentials), reading their request lines and sending
 * the replies.  What a request does is ctl-dispatch.c's.
 *
 * Notes on the thread model: one thread (from ctl_start) runs a poll(2)
 * loop over the listening socket, every client and a wake-up pipe.
 * Requests are answered in order on that thread; the commands it runs
 * itself (status, metrics, stream, merge steering, dirty) take only
 * short engine locks.  Long commands run on job threads (ctl-job.c):
 * the wake-up pipe says when one has ended, or when an event is queued
 * (ctl-events.c), or that ctl_stop wants the thread to end.  A client
 * that sends a line over JSONL_MAX_LINE, or malformed JSON, gets an
 * error reply.  Client sockets are non-blocking: one that does not read
 * its replies is dropped as soon as its socket buffer is full, so no
 * client can stall the daemon.
 *
 * ctl_answer_line (ctl-internal.h, for the fuzzer and unit tests) takes
 * one line through the same answer/dispatch path on its caller's thread,
 * with a struct ctl and client of its own (no socket, no ctl thread); a
 * long command still runs on a job thread, which it joins before it
 * returns the reply.
 *
 * Access: the socket is created 0600 whatever the umask (a request can
 * activate, hand off or write a file as the daemon's user), and every
 * client's SO_PEERCRED uid must be the daemon's effective uid or root;
 * others get one error line and are closed at once, before they take a
 * client slot (allowed_peer).
 *
 * Locks: qlock (a leaf) protects the event queue, stopping, and each
 * job's done and reply; everything else here is the ctl thread's (and
 * ctl_stop's once that thread has ended).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "cor/cor.h"
#include "ctl/ctl.h"
#include "ctl/ctl-internal.h"

/* Waiting at most 2 s in all: a large status --maps reply may not fit the
 * socket buffer at once. */
int
ctl_send_reply (int fd, const json_t *v)
{
  char *s = json_dumps (v, JSON_COMPACT);
  size_t len, off = 0;
  uint64_t deadline = now_ns () + 2 * NS_PER_SEC;

  if (!s)
    return -1;
  len = strlen (s);
  s[len++] = '\n';
  while (off < len) {
    ssize_t r = send (fd, s + off, len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r > 0) {
      off += r;
      continue;
    }
    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1 && errno == EAGAIN && now_ns () < deadline) {
      struct pollfd p = { .fd = fd, .events = POLLOUT };
      poll (&p, 1, (int) ((deadline - now_ns ()) / 1000000 + 1));
      continue;
    }
    free (s);
    return -1;
  }
  free (s);
  return 0;
}

void
ctl_drop_client (struct ctl *c, int i)
{
  if (c->clients[i]->pending)
    c->clients[i]->pending->cl = NULL;  /* the job runs on; its reply is dropped */
  close (c->clients[i]->fd);
  free (c->clients[i]);
  c->clients[i] = NULL;
}

/* A full buffer without a newline: answer once, then discard up to the
 * next newline.  0, or -1 (drop the client). */
static int
overlong_line (struct client *cl)
{
  if (!cl->overlong) {
    json_t *reply = ctl_error_reply (NULL, "request longer than %d bytes", JSONL_MAX_LINE);
    int s = ctl_send_reply (cl->fd, reply);
    json_decref (reply);
    if (s == -1)
      return -1;
  }
  cl->overlong = true;
  cl->len = 0;
  return 0;
}

int
ctl_serve_lines (struct ctl *c, int i)
{
  struct client *cl = c->clients[i];

  while (!cl->pending) {
    char *nl = memchr (cl->buf, '\n', cl->len);
    if (!nl)
      return cl->len == sizeof cl->buf ? overlong_line (cl) : 0;
    size_t linelen = nl - cl->buf;
    if (cl->overlong)
      cl->overlong = false;     /* the tail of the long line: drop it */
    else if (linelen > 0) {
      json_t *reply = ctl_answer (c, cl->buf, linelen, cl);
      int s = reply ? ctl_send_reply (cl->fd, reply) : 0;
      json_decref (reply);
      if (s == -1)
        return -1;
    }
    memmove (cl->buf, nl + 1, cl->len - linelen - 1);
    cl->len -= linelen + 1;
  }
  return 0;
}

/* Read what client i sent and handle it.  -1: drop the client. */
static int
serve_client (struct ctl *c, int i)
{
  struct client *cl = c->clients[i];
  ssize_t r;

  r = read (cl->fd, cl->buf + cl->len, sizeof cl->buf - cl->len);
  if (r <= 0)
    return r == -1 && (errno == EINTR || errno == EAGAIN) ? 0 : -1;
  cl->len += r;
  return ctl_serve_lines (c, i);
}

/* May the peer on fd send commands?  Only the daemon's own user and
 * root: the socket's 0600 mode already keeps others out, unless someone
 * loosened it; this holds even then.  Refusals are logged, at most
 * the first few and then one in a thousand (a local user could loop). */
static bool
allowed_peer (int fd)
{
  static unsigned refused;      /* the ctl thread's only */
  struct ucred cred;
  socklen_t len = sizeof cred;

  if (getsockopt (fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == -1) {
    log_warn ("ctl: control client refused: SO_PEERCRED: %m");
    return false;
  }
  if (cred.uid == 0 || cred.uid == geteuid ())
    return true;
  if (refused++ < 10 || refused % 1000 == 0)
    log_warn ("ctl: control client refused: pid %d runs as uid %u, the daemon as "
              "uid %u (only it and root may use the control socket)", (int) cred.pid,
              (unsigned) cred.uid, (unsigned) geteuid ());
  return false;
}

/* Tell a refused client why (the reply is queued on its socket before
 * the close, so it can still read it, even after its own send met
 * EPIPE: the CLI reads it then), and close it. */
static void
refuse_client (int fd, const char *why)
{
  json_t *r = ctl_error_reply (NULL, "%s", why);

  jsonl_send (fd, r);
  json_decref (r);
  close (fd);
}

/* Accept one client into a free slot.  Non-blocking: a read never waits,
 * and a client whose replies fill the socket buffer (it does not read
 * them) is dropped. */
static void
accept_client (struct ctl *c)
{
  int fd = accept4 (c->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
  int slot = -1;

  if (fd == -1)
    return;
  /* Closed at once: a refused client must not hold a slot (64 idle ones
   * would lock root out). */
  if (!allowed_peer (fd)) {
    refuse_client (fd, "permission denied: the control socket "
                   "serves only its daemon's user and root");
    return;
  }
  for (int i = 0; i < MAX_CLIENTS; i++)
    if (!c->clients[i]) { slot = i; break; }
  if (slot == -1 || !(c->clients[slot] = calloc (1, sizeof (struct client)))) {
    refuse_client (fd, "too many control clients");
    return;
  }
  c->clients[slot]->fd = fd;
}

/* The wake-up pipe is readable: drain it, then report the ended jobs and
 * send the queued events.  true when the thread must end. */
static bool
woken (struct ctl *c)
{
  char junk[256];
  bool stopping;

  if (read (c->wake[0], junk, sizeof junk) == -1) { /* EAGAIN: fine */ }
  pthread_mutex_lock (&c->qlock);
  stopping = c->stopping;
  pthread_mutex_unlock (&c->qlock);
  if (stopping)
    return true;
  ctl_finish_jobs (c);
  ctl_flush_events (c);
  return false;
}

/* The poll set: the wake-up pipe (idx -2), the listener (-1), then every
 * client not waiting for a long command's reply (its slot). */
static int
poll_set (struct ctl *c, struct pollfd *pfd, int *idx)
{
  int n = 0;

  pfd[n] = (struct pollfd) { .fd = c->wake[0], .events = POLLIN };
  idx[n++] = -2;
  pfd[n] = (struct pollfd) { .fd = c->listen_fd, .events = POLLIN };
  idx[n++] = -1;
  for (int i = 0; i < MAX_CLIENTS; i++)
    if (c->clients[i] && !c->clients[i]->pending) {
      pfd[n] = (struct pollfd) { .fd = c->clients[i]->fd, .events = POLLIN };
      idx[n++] = i;
    }
  return n;
}

static void *
ctl_thread (void *arg)
{
  struct ctl *c = arg;

  for (;;) {
    struct pollfd pfd[MAX_CLIENTS + 2];
    int idx[MAX_CLIENTS + 2], n = poll_set (c, pfd, idx);

    if (poll (pfd, n, -1) == -1) {
      if (errno == EINTR)
        continue;
      log_error ("ctl: poll: %m");
      return NULL;
    }
    if (pfd[0].revents && woken (c))
      return NULL;
    /* Clients first, the listener last: woken above may have dropped a
     * client, and a new client must not take its slot (and its stale
     * revents) in this same iteration. */
    for (int k = 2; k < n; k++) {
      struct client *cl = c->clients[idx[k]];
      if (!pfd[k].revents || !cl || cl->fd != pfd[k].fd)
        continue;
      if (serve_client (c, idx[k]) == -1)
        ctl_drop_client (c, idx[k]);
    }
    if (pfd[1].revents)
      accept_client (c);
  }
}

/* Bind path (replacing a stale socket) 0600 and listen.  0, or -1 with
 * the reason logged. */
static int
listen_socket (struct ctl *c, const char *path)
{
  struct sockaddr_un sun = { .sun_family = AF_UNIX };

  if ((size_t) snprintf (sun.sun_path, sizeof sun.sun_path, "%s", path) >= sizeof sun.sun_path) {
    log_error ("ctl: socket path %s is longer than %zu bytes", path, sizeof sun.sun_path - 1);
    return -1;
  }
  /* The state directory's lock is held, so a socket file here is stale. */
  unlink (path);
  c->listen_fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  /* Linux creates the socket file with the socket inode's mode minus the
   * umask: 0600 before bind means no moment with a looser mode (a
   * process-wide umask change would race the other threads).  The chmod
   * after bind makes it exactly 0600 whatever the umask; it does not
   * follow a symlink (the state directory is the daemon user's alone,
   * daemon.c checks, so nothing should have replaced the file). */
  if (c->listen_fd == -1 || fchmod (c->listen_fd, 0600) == -1 ||
      bind (c->listen_fd, (struct sockaddr *) &sun, sizeof sun) == -1 ||
      fchmodat (AT_FDCWD, path, 0600, AT_SYMLINK_NOFOLLOW) == -1 ||
      listen (c->listen_fd, 16) == -1) {
    log_error ("ctl: control socket %s: %m", path);
    return -1;
  }
  return 0;
}

int
ctl_start (struct cor_engine *e, struct merge *mg, const char *path, struct ctl **cp)
{
  struct ctl *c = calloc (1, sizeof *c);

  if (!c)
    return -1;
  c->e = e;
  c->mg = mg;
  c->listen_fd = -1;
  c->wake[0] = c->wake[1] = -1;
  if (listen_socket (c, path) == -1)
    goto err;
  c->path = strdup (path);
  pthread_mutex_init (&c->qlock, NULL);
  c->queue = json_array ();
  if (pipe2 (c->wake, O_CLOEXEC | O_NONBLOCK) == -1 ||
      thread_create_nosig (&c->thread, ctl_thread, c) == -1) {
    log_error ("ctl: starting the control thread: %m");
    json_decref (c->queue);
    pthread_mutex_destroy (&c->qlock);
    goto err;
  }
  cor_set_event_fn (e, ctl_on_event, c);
  *cp = c;
  return 0;

 err:
  if (c->listen_fd >= 0)
    close (c->listen_fd);
  if (c->wake[0] >= 0) {
    close (c->wake[0]);
    close (c->wake[1]);
  }
  free (c->path);
  free (c);
  return -1;
}

size_t
ctl_stop (struct ctl *c, uint64_t deadline_ns)
{
  size_t left;

  if (!c)
    return 0;
  pthread_mutex_lock (&c->qlock);
  c->stopping = true;
  pthread_mutex_unlock (&c->qlock);
  if (write (c->wake[1], "x", 1) != 1 && errno != EAGAIN)
    log_error ("ctl: waking the control thread: %m");
  pthread_join (c->thread, NULL);
  left = ctl_stop_jobs (c, deadline_ns);
  for (int i = 0; i < MAX_CLIENTS; i++)
    if (c->clients[i])
      ctl_drop_client (c, i);
  close (c->listen_fd);
  c->listen_fd = -1;
  unlink (c->path);
  return left;
}

void
ctl_free (struct ctl *c)
{
  if (!c)
    return;
  close (c->wake[0]);
  close (c->wake[1]);
  json_decref (c->queue);
  pthread_mutex_destroy (&c->qlock);
  free (c->path);
  free (c);
}
