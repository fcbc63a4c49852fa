/* corfs: which redirects the HTTP backend follows.  perform (http.c)
 * follows them hop by hop, not libcurl, which would send the extra
 * headers (the user's, x-amz-security-token) to any host a redirect
 * names: https never goes to http, and a request carrying credentials
 * never leaves its origin (scheme, host, port).
 *
 * Notes on the thread model: any request thread; reads only what
 * rhttp_open set, takes no lock.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/log.h"
#include "common/util.h"
#include "remote/http-internal.h"

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

bool
rhttp_is_redirect (long status)
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

/* See http-internal.h. */
char *
rhttp_next_hop (struct remote *r, struct rhttp *h, CURL *c, const char *url, int hop,
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
