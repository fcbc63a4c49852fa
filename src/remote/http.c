/* corfs: HTTP(S) and S3 parents through libcurl.
 *
 * Notes on the thread model: called from any thread concurrently.  The
 * remote's pool (pool.c) holds NR_HANDLES easy handles, one request each
 * at a time (keep-alive connections reused across requests, HTTP/2 where
 * TLS offers it), like nbdkit's curl plugin pool; a request holds its
 * slot (the handle and its fresh mark) for its whole duration and runs
 * without any lock.  h->lock protects the token and the identity kept for
 * range requests (see http-internal.h); it is never held across a
 * transfer nor with the pool lock, and only r->lock is taken under it (a
 * refused token file is noted with remote_note_error).  Retry-After (429, 503) is waited
 * out here, within the request's deadline, before the attempt returns
 * EAGAIN to the wrappers' retry loop.
 *
 * Identity (docs/design.md rule 9): size plus the strong ETag, else
 * Last-Modified, taken from a HEAD (or a one-byte ranged GET when HEAD is
 * refused) at every (re)connect and compared with the pin by the remote
 * wrapper.  Every range request carries If-Match with the pinned ETag, and
 * every reply is checked here as well (servers such as s3rver ignore
 * If-Match, and nginx's ETag is only mtime plus size): a 412, a 200 where
 * 206 was asked, another ETag or another Content-Range total marks the
 * parent changed and fails closed.
 *
 * S3: s3://BUCKET/KEY is read from the s3-endpoint (path style by
 * default) with libcurl's SigV4 signing.  Debian 12's libcurl does not add
 * x-amz-content-sha256, which S3 requires, so it is sent as a header (the
 * hash of an empty payload) and thereby signed; a session token travels
 * in x-amz-security-token, also signed.  Header lines are built at their
 * full length (STS tokens and JWTs run to several KiB).
 *
 * Redirects are followed by perform, hop by hop (see http-redirect.c).
 * Credentials and headers are in http-auth.c.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "common/log.h"
#include "common/util.h"
#include "remote/http-internal.h"
#include "remote/http-reply.h"

/* One request per handle (HTTP/1.1, no pipelining): enough for the
 * readahead workers (COR_RA_WORKERS), a guest fault and the streamer's
 * workers to be in flight at once without a guest fault queueing for a
 * handle. */
#define NR_HANDLES 8

static bool
rhttp_handles (const char *url)
{
  return !strncmp (url, "http://", 7) || !strncmp (url, "https://", 8) ||
    !strncmp (url, "s3://", 5);
}

static size_t
on_header (char *data, size_t size, size_t n, void *opaque)
{
  rhttp_reply_header (opaque, data, size * n);
  return size * n;
}

static size_t
on_body (char *data, size_t size, size_t n, void *opaque)
{
  struct xfer *x = opaque;
  size_t len = size * n;

  if (x->status >= 300 && x->status < 400)
    return 0;                   /* a redirect's body: not read (perform
                                 * follows the redirect, see there) */
  if (x->len + len > x->cap) {
    x->overflow = true;
    return 0;                   /* abort: never more than asked */
  }
  memcpy (x->buf + x->len, data, len);
  x->len += len;
  return len;
}

static void
rhttp_close (void *hv)
{
  struct rhttp *h = hv;

  /* (The pool cleans up the easy handles.) */
  curl_slist_free_all (h->headers);
  pthread_mutex_destroy (&h->lock);
  free (h->url);
  free (h->userpwd);
  free (h->sigv4);
  free (h->session_token);
  free (h->token_file);
  free (h->token);
  free (h->ca_file);
  free (h->client_cert);
  free (h->client_key);
  free (h);
}

static void
global_init (void)
{
  curl_global_init (CURL_GLOBAL_DEFAULT);
}

static int
rhttp_open (struct remote *r, const struct remote_config *cfg, void **hp, int *err)
{
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  struct rhttp *h = calloc (1, sizeof *h);

  pthread_once (&once, global_init);
  if (!h) {
    *err = ENOMEM;
    return -1;
  }
  pthread_mutex_init (&h->lock, NULL);
  h->pool = remote_pool_of (r);
  h->size = -1;
  h->connect_timeout_ns = cfg->connect_timeout_ns;
  h->request_timeout_ns = cfg->request_timeout_ns;
  h->insecure = cfg->insecure;
#define DUP(f) if (cfg->f && !(h->f = strdup (cfg->f))) goto nomem
  DUP (ca_file);
  DUP (client_cert);
  DUP (client_key);
  DUP (token_file);
#undef DUP
  for (size_t i = 0; cfg->headers && cfg->headers[i]; i++) {
    struct curl_slist *n = curl_slist_append (h->headers, cfg->headers[i]);
    if (!n)
      goto nomem;
    h->headers = n;
  }
  if (rhttp_setup_auth (h, cfg, err) == -1)
    goto err;
  if (h->insecure)
    log_warn ("rhttp: disk %s: TLS certificate verification is OFF (insecure = true): "
              "anyone on the path can serve this disk's data", cfg->disk);
  *hp = h;
  return 0;

 nomem:
  *err = ENOMEM;
 err:
  rhttp_close (h);
  return -1;
}

/* The pool's conn_open: a new easy handle.  Its connection is made by
 * the first request, and the identity checked pool-wide (connected), not
 * per handle: a re-pin asks on a handle told to connect afresh
 * (rhttp_identify), so id is never given. */
static int64_t
rhttp_conn_open (struct remote *r, void *hv, struct remote_conn *c, char *id, size_t len,
                 uint64_t deadline_ns, int *err)
{
  if (!(c->handle = curl_easy_init ())) {
    *err = ENOMEM;
    return -1;
  }
  return 0;
}

/* The pool's conn_close. */
static void
rhttp_conn_close (struct remote_conn *c)
{
  curl_easy_cleanup (c->handle);
  c->handle = NULL;
}

static unsigned
rhttp_pool_slots (const struct remote_config *cfg)
{
  return NR_HANDLES;
}

static struct remote_conn *
acquire (struct remote *r, struct rhttp *h, uint64_t deadline_ns, int *err)
{
  return remote_pool_take (h->pool, r, h, deadline_ns, err);
}

static void
release (struct rhttp *h, struct remote_conn *c)
{
  remote_pool_return (h->pool, c);
}

/* A transport failure as errno, noted on the parent. */
static int
transport_errno (struct remote *r, CURLcode rc, const char *errbuf, bool head, uint64_t offset)
{
  int err;

  switch (rc) {
  case CURLE_OPERATION_TIMEDOUT: err = ETIMEDOUT; break;
  case CURLE_COULDNT_CONNECT: err = ECONNREFUSED; break;
  case CURLE_COULDNT_RESOLVE_HOST: err = EHOSTUNREACH; break;
  case CURLE_PEER_FAILED_VERIFICATION: case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_CERTPROBLEM: err = EACCES; break;
  case CURLE_TOO_MANY_REDIRECTS: case CURLE_UNSUPPORTED_PROTOCOL:
  case CURLE_URL_MALFORMAT: err = EINVAL; break;   /* retrying cannot help */
  default: err = EIO; break;
  }
  remote_note_error (r, "%s at offset %" PRIu64 ": %s", head ? "HEAD" : "GET", offset,
                     *errbuf ? errbuf : curl_easy_strerror (rc));
  return err;
}

/* Set up the handle of conn (just reset) for one request: credentials,
 * TLS, timeouts, the callbacks into x.  errbuf receives libcurl's error
 * message. */
static void
set_options (const struct rhttp *h, struct remote_conn *conn, struct curl_slist *hdrs,
             char *errbuf, struct xfer *x, bool head)
{
  CURL *c = conn->handle;

  if (h->s3) {
    curl_easy_setopt (c, CURLOPT_AWS_SIGV4, h->sigv4);
    curl_easy_setopt (c, CURLOPT_USERPWD, h->userpwd);
  }
  else if (h->userpwd) {
    curl_easy_setopt (c, CURLOPT_HTTPAUTH, (long) CURLAUTH_BASIC);
    curl_easy_setopt (c, CURLOPT_USERPWD, h->userpwd);
  }
  if (conn->fresh) {
    curl_easy_setopt (c, CURLOPT_FRESH_CONNECT, 1L);
    conn->fresh = false;
  }
  curl_easy_setopt (c, CURLOPT_PROTOCOLS_STR,
                    strncasecmp (h->url, "https:", 6) == 0 ? "https" : "http,https");
  curl_easy_setopt (c, CURLOPT_HTTPHEADER, hdrs);
  curl_easy_setopt (c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt (c, CURLOPT_HTTP_VERSION, (long) CURL_HTTP_VERSION_2TLS);
  curl_easy_setopt (c, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt (c, CURLOPT_CONNECTTIMEOUT_MS, (long) (h->connect_timeout_ns / 1000000));
  /* A stalled transfer (no progress for 10 s) is aborted and retried. */
  curl_easy_setopt (c, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt (c, CURLOPT_LOW_SPEED_TIME, 10L);
  if (h->ca_file) curl_easy_setopt (c, CURLOPT_CAINFO, h->ca_file);
  if (h->client_cert) curl_easy_setopt (c, CURLOPT_SSLCERT, h->client_cert);
  if (h->client_key) curl_easy_setopt (c, CURLOPT_SSLKEY, h->client_key);
  if (h->insecure) {
    curl_easy_setopt (c, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt (c, CURLOPT_SSL_VERIFYHOST, 0L);
  }
  curl_easy_setopt (c, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt (c, CURLOPT_HEADERDATA, x);
  curl_easy_setopt (c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt (c, CURLOPT_WRITEDATA, x);
  if (head)
    curl_easy_setopt (c, CURLOPT_NOBODY, 1L);
}

/* One request on c.  range_count == 0: HEAD.  Fills x; returns the HTTP
 * status, or -1 with *err for a transport failure or a refused redirect.
 *
 * Redirects are followed here, not by libcurl: libcurl would send the
 * extra headers (the user's, x-amz-security-token) to whatever host a
 * redirect names.  Every hop is checked by redirect_allowed; libcurl's
 * own protocol list (https only when the parent is https) backs that up. */
static long
perform (struct remote *r, struct rhttp *h, struct remote_conn *conn, uint64_t offset,
         size_t range_count, bool head, const char *if_match, uint64_t deadline_ns,
         struct xfer *x, int *err)
{
  CURL *c = conn->handle;
  struct curl_slist *hdrs;
  char errbuf[CURL_ERROR_SIZE] = "", *url = NULL;
  uint64_t now, t;
  long status = 0;
  CURLcode rc;

  curl_easy_reset (c);          /* keeps the connection cache */
  if ((*err = rhttp_build_headers (r, h, offset, range_count, if_match, &hdrs))) {
    if (*err == ENOMEM)        /* (rhttp_build_headers noted the others) */
      remote_note_error (r, "%s at offset %" PRIu64 ": out of memory for the request headers",
                         head ? "HEAD" : "GET", offset);
    return -1;
  }
  set_options (h, conn, hdrs, errbuf, x, head);

  /* The request's own timeout bounds all its hops together. */
  now = now_ns ();
  if (deadline_ns > now + h->request_timeout_ns)
    deadline_ns = now + h->request_timeout_ns;
  for (int hop = 0;; hop++) {
    char *next;
    curl_easy_setopt (c, CURLOPT_URL, url ? url : h->url);
    now = now_ns ();
    t = deadline_ns > now ? deadline_ns - now : 1000000;
    curl_easy_setopt (c, CURLOPT_TIMEOUT_MS, (long) (t / 1000000 + 1));
    x->len = 0;
    x->overflow = false;
    rc = curl_easy_perform (c);
    status = 0;
    curl_easy_getinfo (c, CURLINFO_RESPONSE_CODE, &status);
    /* A write error is ours: the body was more than asked (overflow), or
     * a 3xx body, which on_body refuses at its first byte (a server could
     * send gigabytes there); the status is the answer then. */
    if (rc != CURLE_OK &&
        !(rc == CURLE_WRITE_ERROR && (x->overflow || (status >= 300 && status < 400)))) {
      *err = transport_errno (r, rc, errbuf, head, offset);
      status = -1;
      break;
    }
    if (!rhttp_is_redirect (status))
      break;
    next = rhttp_next_hop (r, h, c, url ? url : h->url, hop, head, offset, err);
    if (!next) {
      if (*err)
        status = -1;
      break;
    }
    free (url);
    url = next;
  }
  curl_slist_free_all (hdrs);
  free (url);
  return status;
}

/* Map an unexpected status to errno (and wait out Retry-After). */
static int
status_errno (struct remote *r, long status, const struct xfer *x, uint64_t deadline_ns,
              const char *what)
{
  remote_note_error (r, "%s: HTTP %ld", what, status);
  if (status == 429 || status == 503) {
    if (x->retry_after > 0) {
      /* Compared in seconds with what is left before the product is
       * formed: a huge Retry-After must neither wrap nor outlast the
       * deadline, whatever the parser lets through. */
      uint64_t now = now_ns (), left = deadline_ns > now ? deadline_ns - now : 0;
      uint64_t wait = (uint64_t) x->retry_after >= left / NS_PER_SEC
        ? left : (uint64_t) x->retry_after * NS_PER_SEC;
      sleep_ns (wait);
    }
    return EAGAIN;
  }
  if (status >= 500)
    return EIO;
  if (status == 401 || status == 403)
    return EACCES;              /* (rhttp_pread retries these with a token file) */
  if (status == 404)
    return ENOENT;
  if (status >= 400 && status != 408)
    return EINVAL;              /* a client error: retrying cannot help */
  return EIO;
}

/* HEAD (or a one-byte ranged GET when HEAD is refused): size, range
 * support, and the identity into id; x receives the headers of the reply
 * used.  Must not hold h->lock.  The size, or -1 with *err. */
static int64_t
probe (struct remote *r, struct rhttp *h, struct remote_conn *c, uint64_t deadline_ns, struct xfer *x,
       char *id, size_t idlen, int *err)
{
  char one[1];
  long status = perform (r, h, c, 0, 0, true, NULL, deadline_ns, x, err);
  int64_t size = -1;
  bool ranges = false;

  if (status == -1)
    return -1;
  if (status >= 200 && status < 300 && x->content_length >= 0) {
    size = x->content_length;
    ranges = x->accept_ranges;
  }
  else if (status != 403 && status != 405 && status != 501 && !(status >= 200 && status < 300)) {
    *err = status_errno (r, status, x, deadline_ns, "HEAD");
    return -1;
  }
  if (size < 0 || !ranges) {
    /* Probe: a ranged GET of one byte must answer 206 with the total. */
    struct xfer g = { .buf = one, .cap = sizeof one };
    status = perform (r, h, c, 0, 1, false, NULL, deadline_ns, &g, err);
    if (status == -1)
      return -1;
    if (status == 200) {
      *err = EINVAL;
      remote_note_error (r, "the server does not support Range requests (HTTP 200 to a "
                         "ranged GET): it cannot be a parent");
      log_error ("rhttp: disk %s: %s does not support Range requests", remote_disk (r),
                 remote_url (r));
      return -1;
    }
    if (status != 206) {
      *err = status_errno (r, status, &g, deadline_ns, "GET");
      return -1;
    }
    const char *slash = strrchr (g.content_range, '/');
    if (!slash || slash[1] == '*') {
      *err = EIO;
      remote_note_error (r, "no total size in Content-Range '%s'", g.content_range);
      return -1;
    }
    size = rhttp_range_total (g.content_range);
    if (size < 0) {
      /* Negative, not a number, or beyond any real image: a broken
       * server, which retrying will not mend. */
      *err = ERANGE;
      remote_note_error (r, "Content-Range '%s': the total is not a size in bytes "
                         "(0 to %llu)", g.content_range, REMOTE_MAX_SIZE);
      return -1;
    }
    *x = g;
    x->buf = NULL;
  }
  if (remote_check_size (r, "HTTP", size, err) == -1)
    return -1;
  if (x->etag[0] && strncmp (x->etag, "W/", 2) != 0)
    snprintf (id, idlen, "http:size=%" PRId64 ",etag=%s", size, x->etag);
  else if (x->last_modified[0])
    snprintf (id, idlen, "http:size=%" PRId64 ",last-modified=%s", size, x->last_modified);
  else
    snprintf (id, idlen, "http:size=%" PRId64, size);
  return size;
}

/* probe, then check the identity against the pin and keep what the
 * range requests compare.  Must not hold h->lock.  0 or -1 with *err. */
static int
connect_identity (struct remote *r, struct rhttp *h, struct remote_conn *c, uint64_t deadline_ns,
                  int *err)
{
  struct xfer x = { 0 };
  char id[512];
  int64_t size = probe (r, h, c, deadline_ns, &x, id, sizeof id, err);

  if (size < 0)
    return -1;
  if (remote_check_identity (r, id, err) == -1)
    return -1;
  pthread_mutex_lock (&h->lock);
  h->size = size;
  snprintf (h->etag, sizeof h->etag, "%s",
            x.etag[0] && strncmp (x.etag, "W/", 2) != 0 ? x.etag : "");
  snprintf (h->last_modified, sizeof h->last_modified, "%s", x.last_modified);
  h->connected = true;
  pthread_mutex_unlock (&h->lock);
  remote_note_connected (r, false);
  return 0;
}

static int64_t
rhttp_get_size (struct remote *r, void *hv, uint64_t deadline_ns, int *err)
{
  struct rhttp *h = hv;
  struct remote_conn *c = acquire (r, h, deadline_ns, err);
  int64_t size;
  int ret;

  if (!c)
    return -1;
  ret = connect_identity (r, h, c, deadline_ns, err);
  release (h, c);
  if (ret == -1)
    return -1;
  pthread_mutex_lock (&h->lock);
  size = h->size;
  pthread_mutex_unlock (&h->lock);
  return size;
}

/* On a new connection (a kept-alive one may reach a server process that
 * still has the old file open); the pin is remote_repin's to set, and
 * the next range request re-probes (release cleared connected). */
static int64_t
rhttp_identify (struct remote *r, void *hv, uint64_t deadline_ns, char *id, size_t len,
                int *err)
{
  struct rhttp *h = hv;
  struct xfer x = { 0 };
  struct remote_conn *c = acquire (r, h, deadline_ns, err);
  int64_t size;

  if (!c)
    return -1;
  c->fresh = true;
  size = probe (r, h, c, deadline_ns, &x, id, len, err);
  release (h, c);
  return size;
}

/* The reply shows another object: mark the parent changed, fail closed. */
static int
changed (struct remote *r, const char *why, int *err)
{
  char id[1200];
  snprintf (id, sizeof id, "http:changed (%s)", why);
  if (remote_check_identity (r, id, err) == 0)
    *err = ESTALE;
  return -1;
}

static int
rhttp_pread (struct remote *r, void *hv, void *buf, size_t count, uint64_t offset,
             uint64_t deadline_ns, int *err)
{
  struct rhttp *h = hv;
  struct xfer x = { .buf = buf, .cap = count };
  char etag[256], lm[128], why[1024];
  int64_t size;
  int ret = 0;
  struct remote_conn *c = acquire (r, h, deadline_ns, err);
  long status;

  if (!c)
    return -1;
  pthread_mutex_lock (&h->lock);
  bool connected = h->connected;
  pthread_mutex_unlock (&h->lock);
  if (!connected && connect_identity (r, h, c, deadline_ns, err) == -1) {
    release (h, c);
    return -1;
  }
  pthread_mutex_lock (&h->lock);
  snprintf (etag, sizeof etag, "%s", h->etag);
  snprintf (lm, sizeof lm, "%s", h->last_modified);
  size = h->size;
  pthread_mutex_unlock (&h->lock);

  status = perform (r, h, c, offset, count, false, etag, deadline_ns, &x, err);
  if (status == -1)
    ret = -1;
  else if (status == 412) {
    snprintf (why, sizeof why, "412 Precondition Failed for If-Match %s", etag);
    ret = changed (r, why, err);
  }
  else if (status == 200)
    ret = changed (r, "HTTP 200 to a ranged GET: the server no longer honours ranges", err);
  else if (status != 206) {
    *err = status_errno (r, status, &x, deadline_ns, "GET");
    if ((status == 401 || status == 403) && h->token_file) {
      /* The token may just have been replaced (and a kept-alive
       * connection may still reach a server process with the old
       * policy): retry on a fresh connection with the token re-read. */
      *err = EAGAIN;
      c->fresh = true;
    }
    ret = -1;
  }
  else if (etag[0] && strcmp (x.etag, etag) != 0) {
    snprintf (why, sizeof why, "ETag %s, pinned %s", x.etag, etag);
    ret = changed (r, why, err);
  }
  else if (!etag[0] && lm[0] && strcmp (x.last_modified, lm) != 0) {
    /* No strong ETag to send If-Match with: compare Last-Modified. */
    snprintf (why, sizeof why, "Last-Modified %s, pinned %s", x.last_modified, lm);
    ret = changed (r, why, err);
  }
  else {
    uint64_t first = 0, last = 0;
    if (rhttp_range_total (x.content_range) != size) {
      snprintf (why, sizeof why, "Content-Range %s, pinned size %" PRId64, x.content_range, size);
      ret = changed (r, why, err);
    }
    else if (sscanf (x.content_range, "bytes %" SCNu64 "-%" SCNu64, &first, &last) != 2 ||
             first != offset || last != offset + count - 1 || x.len != count || x.overflow) {
      *err = EIO;
      remote_note_error (r, "GET at offset %" PRIu64 ": got %zu bytes (%s) for %zu asked",
                         offset, x.len, x.content_range, count);
      ret = -1;
    }
  }
  release (h, c);
  return ret;
}

static void
rhttp_release (void *hv)
{
  struct rhttp *h = hv;

  remote_pool_close_idle (h->pool);
  pthread_mutex_lock (&h->lock);
  h->connected = false;
  pthread_mutex_unlock (&h->lock);
}

const struct remote_ops rhttp_ops = {
  .name = "http",
  .handles = rhttp_handles,
  .open = rhttp_open,
  .close = rhttp_close,
  .get_size = rhttp_get_size,
  .identify = rhttp_identify,
  .pread = rhttp_pread,
  .release = rhttp_release,
  .pool_slots = rhttp_pool_slots,
  .conn_open = rhttp_conn_open,
  .conn_close = rhttp_conn_close,
};
