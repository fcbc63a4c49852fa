/* corfs: HTTP(S) and S3 parents through libcurl.
 *
 * Notes on the thread model: REMOTE_PARALLEL.  A pool of easy handles
 * (one request each at a time, keep-alive connections reused across
 * requests, HTTP/2 where TLS offers it) guarded by h->lock, like nbdkit's
 * curl plugin pool.  Requests run without the lock.
 *
 * Identity (DESIGN.md rule 9): size plus the strong ETag, else
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
 * Redirects are followed by perform, hop by hop, not by libcurl, which
 * would send the extra headers (the user's, x-amz-security-token) to any
 * host a redirect names: https never goes to http, and a request carrying
 * credentials never leaves its origin (scheme, host, port).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include <curl/curl.h>

#include "common/log.h"
#include "common/util.h"
#include "remote/http-reply.h"
#include "remote/remote-internal.h"

/* One request per handle (HTTP/1.1, no pipelining): enough for the
 * readahead workers (COR_RA_WORKERS), a guest fault and the streamer's
 * workers to be in flight at once without a guest fault queueing for a
 * handle. */
#define NR_HANDLES 8
/* Redirects followed per request (perform), as libcurl's MAXREDIRS was. */
#define MAX_REDIRECTS 5
#define EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

struct rhttp {
  char *url;                    /* what we request (may hold credentials) */
  bool s3;
  char *userpwd;                /* basic user:password, or S3 key:secret */
  char *sigv4;                  /* "aws:amz:REGION:s3" */
  char *session_token;
  char *token_file;
  struct curl_slist *headers;   /* the user's extra headers */
  char *ca_file, *client_cert, *client_key;
  bool insecure;
  uint64_t connect_timeout_ns, request_timeout_ns;
  pthread_mutex_t lock;         /* protects the pool, the token and the identity */
  pthread_cond_t cond;
  CURL *handles[NR_HANDLES];
  bool busy[NR_HANDLES];
  bool fresh[NR_HANDLES];       /* open a new connection for the next request */
  char *token;                  /* bearer token, re-read when the file changes */
  struct timespec token_mtime;
  bool token_bad;               /* the file's token holds a control character */
  bool connected;
  int64_t size;
  char etag[256];               /* pinned strong ETag, or "" */
  char last_modified[128];      /* pinned Last-Modified, when no strong ETag */
};

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

/* Can s go into a request header line (rhttp_value_ok)?  NULL is. */
static bool
header_safe (const char *s)
{
  return !s || rhttp_value_ok (s, strlen (s));
}

/* Read the credentials file: "user:password" for HTTP; for S3 either an
 * AWS credentials file (aws_access_key_id = ..., aws_secret_access_key =
 * ..., aws_session_token = ...) or "KEY:SECRET[:TOKEN]". */
static int
load_credentials (struct rhttp *h, const char *path, const char *disk)
{
  size_t len;
  char *s = read_small_file_len (path, &len), *key = NULL, *secret = NULL, *token = NULL;

  if (!s) {
    log_error ("rhttp: disk %s: credentials file %s: %m", disk, path);
    return -1;
  }
  if (strlen (s) != len) {
    log_error ("rhttp: disk %s: credentials file %s holds a NUL byte: refused", disk, path);
    free (s);
    return -1;
  }
  if (strstr (s, "aws_access_key_id")) {
    char *save = NULL;
    for (char *l = strtok_r (s, "\n", &save); l; l = strtok_r (NULL, "\n", &save)) {
      char *eq = strchr (l, '=');
      if (!eq)
        continue;
      char *v = eq + 1;
      while (*v == ' ') v++;
      v[strcspn (v, " \r")] = '\0';
      if (strstr (l, "aws_access_key_id")) key = v;
      else if (strstr (l, "aws_secret_access_key")) secret = v;
      else if (strstr (l, "aws_session_token")) token = v;
    }
    if (!key || !secret) {
      log_error ("rhttp: disk %s: credentials file %s lacks aws_access_key_id or "
                 "aws_secret_access_key", disk, path);
      free (s);
      return -1;
    }
    if (asprintf (&h->userpwd, "%s:%s", key, secret) < 0)
      h->userpwd = NULL;
    if (token)
      h->session_token = strdup (token);
  }
  else if (h->s3) {
    char *c1 = strchr (s, ':'), *c2 = c1 ? strchr (c1 + 1, ':') : NULL;
    if (!c1) {
      log_error ("rhttp: disk %s: credentials file %s: expected KEY:SECRET[:TOKEN]", disk, path);
      free (s);
      return -1;
    }
    if (c2) {
      *c2 = '\0';
      h->session_token = strdup (c2 + 1);
    }
    h->userpwd = strdup (s);
  }
  else {
    if (!strchr (s, ':')) {
      log_error ("rhttp: disk %s: credentials file %s: expected user:password", disk, path);
      free (s);
      return -1;
    }
    h->userpwd = strdup (s);
  }
  free (s);
  if (!h->userpwd)
    return -1;
  /* The key and the session token go into the signed headers (S3); a
   * CR or LF there would add a header of the file's choosing. */
  if (!header_safe (h->userpwd) || !header_safe (h->session_token)) {
    log_error ("rhttp: disk %s: credentials file %s holds a control character "
               "(CR, LF, NUL, ...) inside a credential: refused", disk, path);
    return -1;
  }
  return 0;
}

/* Refuse what would go into a header line with a control character (an
 * injected header): the configured headers, the token file's token, the
 * environment's S3 credentials.  Checked again when the token file
 * changes (refresh_token_unlocked) and for every line (add_header). */
static int
check_header_inputs (struct rhttp *h, const struct remote_config *cfg)
{
  for (size_t i = 0; cfg->headers && cfg->headers[i]; i++)
    if (!header_safe (cfg->headers[i])) {
      log_error ("rhttp: disk %s: configured header %.*s holds a control character "
                 "(CR, LF, NUL, ...): refused", cfg->disk,
                 (int) strcspn (cfg->headers[i], ":\r\n"), cfg->headers[i]);
      return -1;
    }
  if (h->token_file) {
    size_t len = 0;
    char *t = read_small_file_len (h->token_file, &len);
    bool ok = !t || (strlen (t) == len && header_safe (t));
    free (t);                   /* only checked: refresh_token_unlocked reads it for use */
    if (!ok) {
      log_error ("rhttp: disk %s: token file %s holds a control character "
                 "(CR, LF, NUL, ...) inside the token: refused", cfg->disk, h->token_file);
      return -1;
    }
  }
  if (!header_safe (h->userpwd) || !header_safe (h->session_token)) {
    log_error ("rhttp: disk %s: the S3 credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
               "AWS_SESSION_TOKEN) hold a control character (CR, LF, ...): refused", cfg->disk);
    return -1;
  }
  return 0;
}

static void
rhttp_close (void *hv)
{
  struct rhttp *h = hv;

  for (int i = 0; i < NR_HANDLES; i++)
    if (h->handles[i])
      curl_easy_cleanup (h->handles[i]);
  curl_slist_free_all (h->headers);
  pthread_mutex_destroy (&h->lock);
  pthread_cond_destroy (&h->cond);
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
  cond_init_monotonic (&h->cond);
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

  if (!strncmp (cfg->url, "s3://", 5)) {
    const char *bucket = cfg->url + 5, *slash = strchr (bucket, '/');
    const char *region = cfg->s3_region && *cfg->s3_region ? cfg->s3_region : "us-east-1";
    h->s3 = true;
    if (!slash || slash == bucket || !slash[1]) {
      log_error ("rhttp: disk %s: S3 URL must be s3://BUCKET/KEY", cfg->disk);
      *err = EINVAL;
      goto err;
    }
    int bl = slash - bucket;
    if (cfg->s3_endpoint && *cfg->s3_endpoint) {
      const char *ep = cfg->s3_endpoint, *hostpart = strstr (ep, "://");
      size_t epl = strlen (ep);
      while (epl && ep[epl - 1] == '/')
        epl--;
      if (!hostpart) {
        log_error ("rhttp: disk %s: s3-endpoint %s must start with http:// or https://",
                   cfg->disk, ep);
        *err = EINVAL;
        goto err;
      }
      if (cfg->s3_virtual_host) {
        int sl = hostpart + 3 - ep;
        if (asprintf (&h->url, "%.*s%.*s.%.*s%s", sl, ep, bl, bucket,
                      (int) (epl - sl), ep + sl, slash) < 0)
          goto nomem;
      }
      else if (asprintf (&h->url, "%.*s/%.*s%s", (int) epl, ep, bl, bucket, slash) < 0)
        goto nomem;
    }
    else if (asprintf (&h->url, "https://%.*s.s3.%s.amazonaws.com%s", bl, bucket,
                       region, slash) < 0)
      goto nomem;
    if (asprintf (&h->sigv4, "aws:amz:%s:s3", region) < 0)
      goto nomem;
    if (cfg->credentials_file) {
      if (load_credentials (h, cfg->credentials_file, cfg->disk) == -1) {
        *err = EINVAL;
        goto err;
      }
    }
    else if (getenv ("AWS_ACCESS_KEY_ID") && getenv ("AWS_SECRET_ACCESS_KEY")) {
      if (asprintf (&h->userpwd, "%s:%s", getenv ("AWS_ACCESS_KEY_ID"),
                    getenv ("AWS_SECRET_ACCESS_KEY")) < 0)
        goto nomem;
      if (getenv ("AWS_SESSION_TOKEN"))
        h->session_token = strdup (getenv ("AWS_SESSION_TOKEN"));
    }
    else {
      log_error ("rhttp: disk %s: no S3 credentials: give credentials-file or set "
                 "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY", cfg->disk);
      *err = EINVAL;
      goto err;
    }
  }
  else {
    if (!(h->url = strdup (cfg->url)))
      goto nomem;
    if (cfg->credentials_file && load_credentials (h, cfg->credentials_file, cfg->disk) == -1) {
      *err = EINVAL;
      goto err;
    }
  }
  if (check_header_inputs (h, cfg) == -1) {
    *err = EINVAL;
    goto err;
  }
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

/* Must be called with h->lock held.  Re-read the bearer token if its
 * file changed (tokens expire during a long stream). */
static void
refresh_token_unlocked (struct remote *r, struct rhttp *h)
{
  struct stat st;

  if (!h->token_file || stat (h->token_file, &st) == -1)
    return;
  if (h->token && st.st_mtim.tv_sec == h->token_mtime.tv_sec &&
      st.st_mtim.tv_nsec == h->token_mtime.tv_nsec)
    return;
  size_t len;
  char *t = read_small_file_len (h->token_file, &len);
  if (!t) {
    remote_note_error (r, "token file %s: %s", h->token_file, strerror (errno));
    return;
  }
  free (h->token);
  h->token = t;
  h->token_mtime = st.st_mtim;
  h->token_bad = strlen (t) != len || !header_safe (t);
  if (h->token_bad)
    log_error ("rhttp: disk %s: token file %s holds a control character (CR, LF, NUL, "
               "...) inside the token: requests fail until it is replaced",
               remote_disk (r), h->token_file);
}

static CURL *
acquire (struct rhttp *h, uint64_t deadline_ns, int *slot, int *err)
{
  struct timespec ts = { deadline_ns / NS_PER_SEC, deadline_ns % NS_PER_SEC };

  pthread_mutex_lock (&h->lock);
  for (;;) {
    for (int i = 0; i < NR_HANDLES; i++)
      if (!h->busy[i]) {
        if (!h->handles[i] && !(h->handles[i] = curl_easy_init ()))
          continue;
        h->busy[i] = true;
        *slot = i;
        pthread_mutex_unlock (&h->lock);
        return h->handles[i];
      }
    if (pthread_cond_timedwait (&h->cond, &h->lock, &ts) == ETIMEDOUT) {
      pthread_mutex_unlock (&h->lock);
      *err = ETIMEDOUT;
      return NULL;
    }
  }
}

static void
release (struct rhttp *h, int slot)
{
  pthread_mutex_lock (&h->lock);
  h->busy[slot] = false;
  pthread_cond_signal (&h->cond);
  pthread_mutex_unlock (&h->lock);
}

/* Append one header line, formatted at its full length: session tokens
 * (STS, SSO) and bearer JWTs run to several KiB, so no fixed buffer.
 * curl_slist_append copies the line.  0, ENOMEM, or EINVAL for a line
 * holding a control character (a last check: the inputs were refused at
 * load already); *hdrs is unchanged on error. */
static int __attribute__ ((format (printf, 2, 3)))
add_header (struct curl_slist **hdrs, const char *fmt, ...)
{
  struct curl_slist *n = NULL;
  char *line;
  va_list ap;
  int r;

  va_start (ap, fmt);
  r = vasprintf (&line, fmt, ap);
  va_end (ap);
  if (r < 0)
    return ENOMEM;
  if (!rhttp_value_ok (line, r)) {
    free (line);
    return EINVAL;
  }
  n = curl_slist_append (*hdrs, line);
  free (line);
  if (!n)
    return ENOMEM;
  *hdrs = n;
  return 0;
}

/* The request headers into *hdrs: the user's, Range, If-Match, the bearer
 * token and S3's.  0, or ENOMEM, or EINVAL when a line would hold a
 * control character (the token file's token, most likely); *hdrs is NULL
 * then (an empty list is NULL too, so the result tells the two apart). */
static int
build_headers (struct remote *r, struct rhttp *h, uint64_t offset, size_t range_count,
               const char *if_match, struct curl_slist **hdrs)
{
  int e = 0;
  bool bad_token = false;

  *hdrs = NULL;
  for (struct curl_slist *l = h->headers; !e && l; l = l->next)
    e = add_header (hdrs, "%s", l->data);
  if (!e && range_count)
    e = add_header (hdrs, "Range: bytes=%" PRIu64 "-%" PRIu64, offset,
                    offset + range_count - 1);
  if (!e && if_match && *if_match)
    e = add_header (hdrs, "If-Match: %s", if_match);
  pthread_mutex_lock (&h->lock);
  refresh_token_unlocked (r, h);
  if (!e && h->token_bad) {
    bad_token = true;
    e = EINVAL;                 /* not retried: the file must be replaced */
    remote_note_error (r, "token file %s holds a control character (CR, LF, NUL, ...) "
                       "inside the token: not sent", h->token_file);
  }
  else if (!e && h->token)
    e = add_header (hdrs, "Authorization: Bearer %s", h->token);
  pthread_mutex_unlock (&h->lock);
  if (!e && h->s3)
    e = add_header (hdrs, "x-amz-content-sha256: %s", EMPTY_SHA256);
  if (!e && h->s3 && h->session_token)
    e = add_header (hdrs, "x-amz-security-token: %s", h->session_token);
  if (e == EINVAL && !bad_token)
    remote_note_error (r, "a request header would hold a control character (CR, LF, "
                       "NUL, ...): not sent");
  if (e) {
    curl_slist_free_all (*hdrs);
    *hdrs = NULL;
  }
  return e;
}

/* Does the request carry anything that must not reach another origin:
 * a password, a bearer token, S3 signing (and its session token), the
 * user's extra headers, a client certificate (it authenticates us to
 * whichever server asks for it)?  libcurl drops its own credentials on a redirect
 * to another host, but not the extra headers (x-amz-security-token, the
 * user's), so corfs follows redirects itself (see next_hop). */
static bool
has_credentials (const struct rhttp *h)
{
  CURLU *u;
  char *user = NULL;
  bool userinfo;

  if (h->s3 || h->userpwd || h->token_file || h->headers || h->client_cert || h->client_key)
    return true;
  /* user[:password]@ in the URL itself; if it cannot be parsed, assume so. */
  if (!(u = curl_url ()) || curl_url_set (u, CURLUPART_URL, h->url, 0) != CURLUE_OK)
    userinfo = true;
  else
    userinfo = curl_url_get (u, CURLUPART_USER, &user, 0) == CURLUE_OK;
  curl_free (user);
  curl_url_cleanup (u);
  return userinfo;
}

/* Split url into scheme, host and port (the scheme's default when none)
 * with libcurl's URL parser.  0, or -1 if it does not parse. */
static int
url_origin (const char *url, char **scheme, char **host, char **port)
{
  CURLU *u = curl_url ();
  int ret = -1;

  *scheme = *host = *port = NULL;
  if (u && curl_url_set (u, CURLUPART_URL, url, 0) == CURLUE_OK &&
      curl_url_get (u, CURLUPART_SCHEME, scheme, 0) == CURLUE_OK &&
      curl_url_get (u, CURLUPART_HOST, host, 0) == CURLUE_OK &&
      curl_url_get (u, CURLUPART_PORT, port, CURLU_DEFAULT_PORT) == CURLUE_OK)
    ret = 0;
  curl_url_cleanup (u);
  return ret;
}

/* May a request to from follow its redirect to to?  Never from https to
 * anything but https (the data and the credentials would travel in
 * clear), never to another scheme than http(s), and never to another
 * origin (scheme, host, port) when the request carries credentials.
 * true, or false with the reason in why. */
static bool
redirect_allowed (const struct rhttp *h, const char *from, const char *to,
                  char *why, size_t len)
{
  /* NULL: when from does not parse, to is never split, yet freed below. */
  char *fs, *fh, *fp, *ts = NULL, *th = NULL, *tp = NULL;
  bool ok = false;

  if (url_origin (from, &fs, &fh, &fp) == -1 || url_origin (to, &ts, &th, &tp) == -1)
    snprintf (why, len, "the redirect target does not parse as a URL");
  else if (strcasecmp (ts, "http") != 0 && strcasecmp (ts, "https") != 0)
    snprintf (why, len, "redirects go to http or https only, not %s", ts);
  else if (!strcasecmp (fs, "https") && strcasecmp (ts, "https") != 0)
    snprintf (why, len, "a redirect from https to %s is refused", ts);
  else if (has_credentials (h) &&
           (strcasecmp (fs, ts) || strcasecmp (fh, th) || strcmp (fp, tp)))
    snprintf (why, len, "a redirect to another host (%s:%s) is refused: the request "
              "carries credentials (a password, token, S3 signature, configured headers or a "
              "client certificate), which must not reach it", th, tp);
  else
    ok = true;
  curl_free (fs); curl_free (fh); curl_free (fp);
  curl_free (ts); curl_free (th); curl_free (tp);
  return ok;
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

static bool
is_redirect (long status)
{
  return status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
}

/* Where the redirect reply on c (a request to url) points, as an absolute
 * URL (caller frees), or NULL.  libcurl's CURLINFO_REDIRECT_URL is not
 * set when the transfer ended early (on_body refuses a redirect's body),
 * so the Location header is then resolved against url here. */
static char *
redirect_target (CURL *c, const char *url)
{
  char *loc = NULL, *abs = NULL, *ret;
  struct curl_header *hh;
  CURLU *u;

  if (curl_easy_getinfo (c, CURLINFO_REDIRECT_URL, &loc) == CURLE_OK && loc)
    return strdup (loc);
  if (curl_easy_header (c, "Location", 0, CURLH_HEADER, -1, &hh) != CURLHE_OK ||
      !(u = curl_url ()))
    return NULL;
  if (curl_url_set (u, CURLUPART_URL, url, 0) == CURLUE_OK &&
      curl_url_set (u, CURLUPART_URL, hh->value, 0) == CURLUE_OK)
    curl_url_get (u, CURLUPART_URL, &abs, 0);
  curl_url_cleanup (u);
  ret = abs ? strdup (abs) : NULL;
  curl_free (abs);
  return ret;
}

/* After a redirect reply on c (to url): the next URL to request (caller
 * frees), or NULL with *err when the redirect must not be followed.  A
 * 3xx without Location returns NULL with *err == 0: the caller treats the
 * status as the answer. */
static char *
next_hop (struct remote *r, struct rhttp *h, CURL *c, const char *url, int hop,
          bool head, uint64_t offset, int *err)
{
  char *loc, why[512], *shown;

  *err = 0;
  if (!(loc = redirect_target (c, url)))
    return NULL;
  shown = url_redact (loc);
  if (hop >= MAX_REDIRECTS)
    snprintf (why, sizeof why, "more than %d redirects", MAX_REDIRECTS);
  else if (redirect_allowed (h, url, loc, why, sizeof why)) {
    free (shown);
    return loc;
  }
  free (loc);
  *err = EACCES;                /* retrying cannot help */
  remote_note_error (r, "%s at offset %" PRIu64 ": redirected to %s: %s", head ? "HEAD" : "GET",
                     offset, shown ? shown : "(URL)", why);
  log_error ("rhttp: disk %s: parent %s redirects to %s: %s", remote_disk (r), remote_url (r),
             shown ? shown : "(URL)", why);
  free (shown);
  return NULL;
}

/* One request on c.  range_count == 0: HEAD.  Fills x; returns the HTTP
 * status, or -1 with *err for a transport failure or a refused redirect.
 *
 * Redirects are followed here, not by libcurl: libcurl would send the
 * extra headers (the user's, x-amz-security-token) to whatever host a
 * redirect names.  Every hop is checked by redirect_allowed; libcurl's
 * own protocol list (https only when the parent is https) backs that up. */
static long
perform (struct remote *r, struct rhttp *h, CURL *c, uint64_t offset, size_t range_count,
         bool head, const char *if_match, uint64_t deadline_ns, struct xfer *x, int *err)
{
  struct curl_slist *hdrs;
  char errbuf[CURL_ERROR_SIZE] = "", *url = NULL;
  uint64_t now, t;
  long status = 0;
  CURLcode rc;

  curl_easy_reset (c);          /* keeps the connection cache */
  if ((*err = build_headers (r, h, offset, range_count, if_match, &hdrs))) {
    if (*err == ENOMEM)        /* (build_headers noted the others) */
      remote_note_error (r, "%s at offset %" PRIu64 ": out of memory for the request headers",
                         head ? "HEAD" : "GET", offset);
    return -1;
  }
  if (h->s3) {
    curl_easy_setopt (c, CURLOPT_AWS_SIGV4, h->sigv4);
    curl_easy_setopt (c, CURLOPT_USERPWD, h->userpwd);
  }
  else if (h->userpwd) {
    curl_easy_setopt (c, CURLOPT_HTTPAUTH, (long) CURLAUTH_BASIC);
    curl_easy_setopt (c, CURLOPT_USERPWD, h->userpwd);
  }
  pthread_mutex_lock (&h->lock);
  for (int i = 0; i < NR_HANDLES; i++)
    if (h->handles[i] == c && h->fresh[i]) {
      curl_easy_setopt (c, CURLOPT_FRESH_CONNECT, 1L);
      h->fresh[i] = false;
    }
  pthread_mutex_unlock (&h->lock);
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
    if (!is_redirect (status))
      break;
    next = next_hop (r, h, c, url ? url : h->url, hop, head, offset, err);
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
probe (struct remote *r, struct rhttp *h, CURL *c, uint64_t deadline_ns, struct xfer *x,
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
connect_identity (struct remote *r, struct rhttp *h, CURL *c, uint64_t deadline_ns, int *err)
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
  int slot;
  CURL *c = acquire (h, deadline_ns, &slot, err);
  int ret;

  if (!c)
    return -1;
  ret = connect_identity (r, h, c, deadline_ns, err);
  release (h, slot);
  return ret == -1 ? -1 : h->size;
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
  int slot;
  CURL *c = acquire (h, deadline_ns, &slot, err);
  int64_t size;

  if (!c)
    return -1;
  pthread_mutex_lock (&h->lock);
  h->fresh[slot] = true;
  pthread_mutex_unlock (&h->lock);
  size = probe (r, h, c, deadline_ns, &x, id, len, err);
  release (h, slot);
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
  int slot, ret = 0;
  CURL *c = acquire (h, deadline_ns, &slot, err);
  long status;

  if (!c)
    return -1;
  pthread_mutex_lock (&h->lock);
  bool connected = h->connected;
  pthread_mutex_unlock (&h->lock);
  if (!connected && connect_identity (r, h, c, deadline_ns, err) == -1) {
    release (h, slot);
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
      pthread_mutex_lock (&h->lock);
      h->fresh[slot] = true;
      pthread_mutex_unlock (&h->lock);
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
  release (h, slot);
  return ret;
}

static void
rhttp_release (void *hv)
{
  struct rhttp *h = hv;

  pthread_mutex_lock (&h->lock);
  for (int i = 0; i < NR_HANDLES; i++)
    if (!h->busy[i] && h->handles[i]) {
      curl_easy_cleanup (h->handles[i]);
      h->handles[i] = NULL;
    }
  h->connected = false;
  pthread_mutex_unlock (&h->lock);
}

const struct remote_ops rhttp_ops = {
  .name = "http",
  .thread_model = REMOTE_PARALLEL,
  .handles = rhttp_handles,
  .open = rhttp_open,
  .close = rhttp_close,
  .get_size = rhttp_get_size,
  .identify = rhttp_identify,
  .pread = rhttp_pread,
  .release = rhttp_release,
};
