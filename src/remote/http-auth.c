/* corfs: the HTTP backend's credentials and request headers: the
 * credentials file (basic user:password, S3 KEY:SECRET[:TOKEN] or an AWS
 * credentials file), the environment's S3 credentials, the bearer token
 * file (re-read when it changes), S3 addressing, and the header lines
 * each request sends.  Every value bound for a header line is refused if
 * it holds a control character: a CR or LF would add a header of the
 * file's (or the environment's) choosing.
 *
 * Notes on the thread model: rhttp_setup_auth runs at open, before any
 * other thread sees h.  rhttp_build_headers is called by any request
 * thread; it takes h->lock (see http.c for its place in the order) to
 * re-read and copy the token.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/log.h"
#include "common/util.h"
#include "remote/http-internal.h"
#include "remote/http-reply.h"

#define EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

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

/* See http-internal.h.  An empty list is NULL too, so the result tells
 * the two apart; EINVAL comes most likely from the token file's token. */
int
rhttp_build_headers (struct remote *r, struct rhttp *h, uint64_t offset, size_t range_count,
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

/* The URL of s3://BUCKET/KEY: on the s3-endpoint (path style, or
 * virtual-host style with s3_virtual_host), else on AWS.  0, or -1 with
 * *err. */
static int
setup_s3_url (struct rhttp *h, const struct remote_config *cfg, const char *region, int *err)
{
  const char *bucket = cfg->url + 5, *slash = strchr (bucket, '/');
  int bl, r;

  if (!slash || slash == bucket || !slash[1]) {
    log_error ("rhttp: disk %s: S3 URL must be s3://BUCKET/KEY", cfg->disk);
    *err = EINVAL;
    return -1;
  }
  bl = slash - bucket;
  if (cfg->s3_endpoint && *cfg->s3_endpoint) {
    const char *ep = cfg->s3_endpoint, *hostpart = strstr (ep, "://");
    size_t epl = strlen (ep);
    while (epl && ep[epl - 1] == '/')
      epl--;
    if (!hostpart) {
      log_error ("rhttp: disk %s: s3-endpoint %s must start with http:// or https://",
                 cfg->disk, ep);
      *err = EINVAL;
      return -1;
    }
    if (cfg->s3_virtual_host) {
      int sl = hostpart + 3 - ep;
      r = asprintf (&h->url, "%.*s%.*s.%.*s%s", sl, ep, bl, bucket,
                    (int) (epl - sl), ep + sl, slash);
    }
    else
      r = asprintf (&h->url, "%.*s/%.*s%s", (int) epl, ep, bl, bucket, slash);
  }
  else
    r = asprintf (&h->url, "https://%.*s.s3.%s.amazonaws.com%s", bl, bucket, region, slash);
  if (r < 0) {
    h->url = NULL;
    *err = ENOMEM;
    return -1;
  }
  return 0;
}

/* S3: the URL, SigV4 and the credentials (the credentials file, else
 * AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN).  0, or -1
 * with *err. */
static int
setup_s3 (struct rhttp *h, const struct remote_config *cfg, int *err)
{
  const char *region = cfg->s3_region && *cfg->s3_region ? cfg->s3_region : "us-east-1";

  h->s3 = true;
  if (setup_s3_url (h, cfg, region, err) == -1)
    return -1;
  if (asprintf (&h->sigv4, "aws:amz:%s:s3", region) < 0) {
    h->sigv4 = NULL;
    *err = ENOMEM;
    return -1;
  }
  if (cfg->credentials_file) {
    if (load_credentials (h, cfg->credentials_file, cfg->disk) == -1) {
      *err = EINVAL;
      return -1;
    }
  }
  else if (getenv ("AWS_ACCESS_KEY_ID") && getenv ("AWS_SECRET_ACCESS_KEY")) {
    if (asprintf (&h->userpwd, "%s:%s", getenv ("AWS_ACCESS_KEY_ID"),
                  getenv ("AWS_SECRET_ACCESS_KEY")) < 0) {
      h->userpwd = NULL;
      *err = ENOMEM;
      return -1;
    }
    if (getenv ("AWS_SESSION_TOKEN"))
      h->session_token = strdup (getenv ("AWS_SESSION_TOKEN"));
  }
  else {
    log_error ("rhttp: disk %s: no S3 credentials: give credentials-file or set "
               "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY", cfg->disk);
    *err = EINVAL;
    return -1;
  }
  return 0;
}

int
rhttp_setup_auth (struct rhttp *h, const struct remote_config *cfg, int *err)
{
  if (!strncmp (cfg->url, "s3://", 5)) {
    if (setup_s3 (h, cfg, err) == -1)
      return -1;
  }
  else {
    if (!(h->url = strdup (cfg->url))) {
      *err = ENOMEM;
      return -1;
    }
    if (cfg->credentials_file && load_credentials (h, cfg->credentials_file, cfg->disk) == -1) {
      *err = EINVAL;
      return -1;
    }
  }
  if (check_header_inputs (h, cfg) == -1) {
    *err = EINVAL;
    return -1;
  }
  return 0;
}
