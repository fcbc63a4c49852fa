/* corfs: the metrics over HTTP (`--metrics-listen`, config key
 * `metrics-listen`): GET or HEAD /metrics answers the Prometheus text the
 * control socket's `metrics` command gives (ctl_metrics_text); any other
 * path is 404, any other method 405.  Served by libmicrohttpd, the only
 * file that includes it.
 *
 * Notes on the thread model: libmicrohttpd runs one thread of its own
 * (MHD_USE_EPOLL_INTERNAL_THREAD), started with every signal blocked so
 * that SIGTERM/SIGINT/SIGHUP still reach the FUSE loop.  That one thread
 * polls every connection, non-blocking: a client that is slow to send
 * its request or to read the reply holds a connection slot, never the
 * thread, and an idle one is closed after CONN_TIMEOUT_S.  At most
 * MAX_CONNS connections are open (MAX_CONNS_PER_IP from one remote
 * address); beyond that new ones wait in the listen queue: a client
 * holding every slot makes the metrics unavailable until its
 * connections time out, but nothing else in the daemon notices.  Each
 * request builds the text on that thread (bounded work: a status
 * snapshot per disk under the engine's short locks); nothing here
 * blocks the ctl thread or a guest request, and this file takes no
 * lock.  metrics_http_stop joins the thread (on the main thread, before
 * the engine goes).
 *
 * Bound to loopback by default; an explicit other address is allowed
 * (operators scrape from another host) and logged as such.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "common/log.h"
#include "ctl/ctl.h"

/* Open connections at most (each holds a memory pool of 32 KiB at
 * most, libmicrohttpd's default: 4 MiB in all). */
#define MAX_CONNS 128

/* Connections from one address at most, on a non-loopback address: one
 * remote client cannot take every slot.  (On loopback every client has
 * the same address: only MAX_CONNS applies.) */
#define MAX_CONNS_PER_IP 32

/* An idle connection is closed after this long. */
#define CONN_TIMEOUT_S 10

#define CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

struct metrics_http {
  struct cor_engine *e;
  struct MHD_Daemon *d;
};

/* A parsed --metrics-listen value. */
struct listen_addr {
  struct sockaddr_storage ss;
  socklen_t len;
  bool loopback;
  char text[INET6_ADDRSTRLEN + 8];   /* ADDR:PORT or [ADDR6]:PORT, for the log */
};

/* 1 to 65535, digits only. */
static int
parse_port (const char *s, unsigned *port)
{
  unsigned v = 0;

  if (!*s || strlen (s) > 5)
    return -1;
  for (; *s; s++) {
    if (*s < '0' || *s > '9')
      return -1;
    v = v * 10 + (*s - '0');
  }
  if (v < 1 || v > 65535)
    return -1;
  *port = v;
  return 0;
}

/* host (numeric, or "localhost") and port into a. */
static int
fill_addr (const char *host, bool v6, unsigned port, struct listen_addr *a)
{
  if (v6) {
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *) &a->ss;
    if (inet_pton (AF_INET6, host, &s6->sin6_addr) != 1)
      return -1;
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons (port);
    a->len = sizeof *s6;
    a->loopback = IN6_IS_ADDR_LOOPBACK (&s6->sin6_addr);
    snprintf (a->text, sizeof a->text, "[%s]:%u", host, port);
  }
  else {
    struct sockaddr_in *s4 = (struct sockaddr_in *) &a->ss;
    if (!strcmp (host, "localhost"))
      host = "127.0.0.1";
    if (inet_pton (AF_INET, host, &s4->sin_addr) != 1)
      return -1;
    s4->sin_family = AF_INET;
    s4->sin_port = htons (port);
    a->len = sizeof *s4;
    a->loopback = (ntohl (s4->sin_addr.s_addr) >> 24) == 127;
    snprintf (a->text, sizeof a->text, "%s:%u", host, port);
  }
  return 0;
}

/* PORT, ADDR:PORT or [ADDR6]:PORT.  0, or -1 with the reason in err. */
static int
parse_listen (const char *spec, struct listen_addr *a, char *err, size_t len)
{
  char host[INET6_ADDRSTRLEN] = "127.0.0.1";
  const char *port_s = spec, *hstart = NULL, *colon;
  size_t hlen = 0;
  bool v6 = false;
  unsigned port;

  memset (a, 0, sizeof *a);
  if (spec[0] == '[') {         /* [ADDR6]:PORT */
    const char *end = strchr (spec, ']');
    if (!end || end[1] != ':')
      goto bad;
    v6 = true;
    hstart = spec + 1;
    hlen = end - hstart;
    port_s = end + 2;
  }
  else if ((colon = strrchr (spec, ':'))) {   /* ADDR:PORT */
    hstart = spec;
    hlen = colon - spec;
    port_s = colon + 1;
  }
  if (hstart) {
    if (hlen == 0 || hlen >= sizeof host)
      goto bad;
    memcpy (host, hstart, hlen);
    host[hlen] = '\0';
  }
  if (parse_port (port_s, &port) == -1 || fill_addr (host, v6, port, a) == -1)
    goto bad;
  return 0;

 bad:
  snprintf (err, len, "%s: expected PORT (on 127.0.0.1), ADDR:PORT or [ADDR6]:PORT, "
            "with a numeric address (or localhost) and a port from 1 to 65535", spec);
  return -1;
}

int
metrics_listen_check (const char *spec, char *err, size_t len)
{
  struct listen_addr a;

  return parse_listen (spec, &a, err, len);
}

/* A response of len bytes of text (freed by libmicrohttpd when owned)
 * with status, queued on conn. */
static enum MHD_Result
reply (struct MHD_Connection *conn, unsigned status, char *text, size_t len, bool owned)
{
  struct MHD_Response *r;
  enum MHD_Result ret;

  r = MHD_create_response_from_buffer (len, text, owned ? MHD_RESPMEM_MUST_FREE
                                       : MHD_RESPMEM_PERSISTENT);
  if (!r) {
    if (owned)
      free (text);
    return MHD_NO;              /* libmicrohttpd closes the connection */
  }
  MHD_add_response_header (r, MHD_HTTP_HEADER_CONTENT_TYPE, CONTENT_TYPE);
  if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
    MHD_add_response_header (r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
  ret = MHD_queue_response (conn, status, r);
  MHD_destroy_response (r);
  return ret;
}

/* libmicrohttpd's access handler: every request is answered on its first
 * call (a request body, if any, is not read: the connection is closed
 * after the reply).  HEAD gets GET's headers without the body
 * (libmicrohttpd drops it). */
static enum MHD_Result
answer (void *cls, struct MHD_Connection *conn, const char *url, const char *method,
        const char *version, const char *upload_data, size_t *upload_data_size, void **req_cls)
{
  static char not_allowed[] = "only GET and HEAD\n", not_found[] = "not found: try /metrics\n";
  static char no_memory[] = "out of memory\n";
  struct metrics_http *m = cls;
  char *text;
  size_t len;

  if (strcmp (method, MHD_HTTP_METHOD_GET) && strcmp (method, MHD_HTTP_METHOD_HEAD))
    return reply (conn, MHD_HTTP_METHOD_NOT_ALLOWED, not_allowed, strlen (not_allowed), false);
  if (strcmp (url, "/metrics"))
    return reply (conn, MHD_HTTP_NOT_FOUND, not_found, strlen (not_found), false);
  if (!(text = ctl_metrics_text (m->e, &len)))
    return reply (conn, MHD_HTTP_INTERNAL_SERVER_ERROR, no_memory, strlen (no_memory), false);
  return reply (conn, MHD_HTTP_OK, text, len, true);
}

/* libmicrohttpd's messages (bad requests, failed sends), rate-limited. */
static void
mhd_log (void *cls, const char *fmt, va_list ap)
{
  static struct log_ratelimit rl;
  char buf[512];
  size_t n;

  vsnprintf (buf, sizeof buf, fmt, ap);
  n = strlen (buf);
  while (n > 0 && buf[n - 1] == '\n')
    buf[--n] = '\0';
  if (log_ratelimit_ok (&rl))
    log_warn ("metrics: %s", buf);
}

/* A listening socket bound to a.  The fd, or -1 (logged). */
static int
listen_on (const struct listen_addr *a)
{
  int one = 1, fd = socket (a->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);

  if (fd == -1) {
    log_error ("metrics: cannot listen on %s: socket: %m", a->text);
    return -1;
  }
  /* A restarted daemon rebinds at once despite connections in TIME_WAIT. */
  setsockopt (fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (a->ss.ss_family == AF_INET6)
    setsockopt (fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  if (bind (fd, (const struct sockaddr *) &a->ss, a->len) == -1 || listen (fd, 64) == -1) {
    log_error ("metrics: cannot listen on %s: %m", a->text);
    close (fd);
    return -1;
  }
  return fd;
}

/* Start libmicrohttpd on fd (bound to a), its thread with every signal
 * blocked. */
static struct MHD_Daemon *
start_mhd (struct metrics_http *m, int fd, const struct listen_addr *a)
{
  unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_ERROR_LOG;
  sigset_t all, old;
  struct MHD_Daemon *d;

  if (a->ss.ss_family == AF_INET6)
    flags |= MHD_USE_IPv6;
  sigfillset (&all);
  pthread_sigmask (SIG_SETMASK, &all, &old);
  d = MHD_start_daemon (flags, 0, NULL, NULL, answer, m,
                        MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
                        MHD_OPTION_LISTEN_SOCKET, (MHD_socket) fd,
                        MHD_OPTION_CONNECTION_LIMIT, (unsigned) MAX_CONNS,
                        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned) CONN_TIMEOUT_S,
                        MHD_OPTION_PER_IP_CONNECTION_LIMIT,
                        (unsigned) (a->loopback ? 0 : MAX_CONNS_PER_IP),
                        MHD_OPTION_END);
  pthread_sigmask (SIG_SETMASK, &old, NULL);
  return d;
}

int
metrics_http_start (struct cor_engine *e, const char *spec, struct metrics_http **mp)
{
  struct metrics_http *m;
  struct listen_addr a;
  char why[256];
  int fd;

  if (parse_listen (spec, &a, why, sizeof why) == -1) {
    log_error ("metrics: --metrics-listen %s", why);
    return -1;
  }
  if (!(m = calloc (1, sizeof *m)))
    return -1;
  m->e = e;
  if ((fd = listen_on (&a)) == -1) {
    free (m);
    return -1;
  }
  if (!(m->d = start_mhd (m, fd, &a))) {
    /* Left open: whether libmicrohttpd closed it on failure is not
     * documented, and the daemon exits now. */
    log_error ("metrics: cannot start the HTTP server on %s", a.text);
    free (m);
    return -1;
  }
  if (a.loopback)
    log_info ("metrics: serving http://%s/metrics", a.text);
  else
    log_warn ("metrics: serving http://%s/metrics on a non-loopback address: anyone who can "
              "reach it reads the metrics (disk names, sizes, activity)", a.text);
  *mp = m;
  return 0;
}

void
metrics_http_stop (struct metrics_http *m)
{
  if (!m)
    return;
  MHD_stop_daemon (m->d);       /* joins its thread, closes every socket */
  free (m);
}
