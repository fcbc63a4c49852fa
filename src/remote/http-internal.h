/* corfs: the HTTP(S)/S3 backend's own state, shared by its files:
 * http.c (the requests, identity and the ops table), http-auth.c
 * (credentials, the bearer token, S3 addressing and the request
 * headers), http-redirect.c (which redirects may be followed).
 *
 * Notes on the thread model: see http.c.  h->lock protects the token,
 * the identity kept for range requests (connected, size, etag,
 * last_modified); everything else in struct rhttp is set at open and
 * read-only after.
 */
#ifndef CORFS_HTTP_INTERNAL_H
#define CORFS_HTTP_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include <curl/curl.h>

#include "remote/remote-internal.h"

/* Redirects followed per request (perform), as libcurl's MAXREDIRS was. */
#define MAX_REDIRECTS 5

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
  struct remote_pool *pool;     /* easy handles (remote_pool_of) */
  pthread_mutex_t lock;         /* protects the fields below */
  char *token;                  /* bearer token, re-read when the file changes */
  struct timespec token_mtime;
  bool token_bad;               /* the file's token holds a control character */
  bool connected;
  int64_t size;
  char etag[256];               /* pinned strong ETag, or "" */
  char last_modified[128];      /* pinned Last-Modified, when no strong ETag */
};

/* http-auth.c */

/* The URL to request (S3 addressing: path or virtual-host style on the
 * endpoint, else AWS), the credentials (credentials file, or for S3 the
 * environment) and a check that nothing bound for a header line holds a
 * control character.  0, or -1 with *err (EINVAL, reason logged;
 * ENOMEM). */
int rhttp_setup_auth (struct rhttp *h, const struct remote_config *cfg, int *err);

/* The request headers into *hdrs: the user's, Range, If-Match, the bearer
 * token (re-read if its file changed; takes h->lock) and S3's.  0, or
 * ENOMEM, or EINVAL when a line would hold a control character (noted on
 * r); *hdrs is NULL then. */
int rhttp_build_headers (struct remote *r, struct rhttp *h, uint64_t offset,
                         size_t range_count, const char *if_match, struct curl_slist **hdrs);

/* http-redirect.c */

bool rhttp_is_redirect (long status);

/* After a redirect reply on c (to url): the next URL to request (caller
 * frees), or NULL with *err when the redirect must not be followed.  A
 * 3xx without Location returns NULL with *err == 0: the caller treats the
 * status as the answer. */
char *rhttp_next_hop (struct remote *r, struct rhttp *h, CURL *c, const char *url, int hop,
                      bool head, uint64_t offset, int *err);

#endif
