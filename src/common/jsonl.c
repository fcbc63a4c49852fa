/* corfs: JSON lines (see jsonl.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/jsonl.h"

int
jsonl_send (int fd, const json_t *v)
{
  char *s = json_dumps (v, JSON_COMPACT);
  size_t len, off = 0;

  if (!s) {
    errno = ENOMEM;
    return -1;
  }
  len = strlen (s);
  s[len++] = '\n';              /* json_dumps's NUL becomes the newline */
  while (off < len) {
    ssize_t r = send (fd, s + off, len - off, MSG_NOSIGNAL);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      free (s);
      return -1;
    }
    off += r;
  }
  free (s);
  return 0;
}

json_t *
jsonl_recv (int fd)
{
  size_t cap = 4096, n = 0;
  char *buf = malloc (cap);
  json_t *v;
  json_error_t jerr;

  if (!buf)
    return NULL;
  for (;;) {
    char c;
    ssize_t r = read (fd, &c, 1);
    if (r == -1 && errno == EINTR)
      continue;
    if (r <= 0) {
      free (buf);
      if (r == 0)
        errno = ECONNRESET;
      return NULL;
    }
    if (c == '\n')
      break;
    if (n + 1 >= JSONL_MAX_LINE * 16) {  /* replies can be larger than requests */
      free (buf);
      errno = EPROTO;
      return NULL;
    }
    if (n + 1 >= cap) {
      char *nb = realloc (buf, cap *= 2);
      if (!nb) {
        free (buf);
        return NULL;
      }
      buf = nb;
    }
    buf[n++] = c;
  }
  v = json_loadb (buf, n, 0, &jerr);
  free (buf);
  if (!v)
    errno = EPROTO;
  return v;
}

json_t *
jsonl_call (int fd, const json_t *req)
{
  json_t *reply;
  int err = 0;

  /* A daemon that refuses the client writes why and closes before it
   * reads anything: the send then fails (EPIPE), but the reason is
   * already queued, so read it all the same. */
  if (jsonl_send (fd, req) == -1) {
    err = errno;
    /* Anything else (ENOMEM, a send that never went out) leaves a daemon
     * still waiting for our request: reading would wait for ever. */
    if (err != EPIPE && err != ECONNRESET) {
      errno = err;
      return NULL;
    }
  }
  reply = jsonl_recv (fd);
  if (!reply && err)
    errno = err;
  return reply;
}

int
jsonl_connect (const char *state, char *errbuf, size_t len)
{
  struct sockaddr_un sun = { .sun_family = AF_UNIX };
  int fd;

  if ((size_t) snprintf (sun.sun_path, sizeof sun.sun_path, "%s/corfs.sock", state)
      >= sizeof sun.sun_path) {
    snprintf (errbuf, len, "state directory path %s is too long for a socket", state);
    return -1;
  }
  fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd == -1) {
    snprintf (errbuf, len, "socket: %s", strerror (errno));
    return -1;
  }
  if (connect (fd, (struct sockaddr *) &sun, sizeof sun) == -1) {
    if (errno == EACCES || errno == EPERM)
      snprintf (errbuf, len, "permission denied on the control socket %s: it serves "
                "only the daemon's user and root", sun.sun_path);
    else
      snprintf (errbuf, len, "cannot reach the corfs daemon of %s (%s): is it mounted?",
                state, strerror (errno));
    close (fd);
    return -1;
  }
  return fd;
}
