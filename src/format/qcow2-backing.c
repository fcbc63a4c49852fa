/* corfs: a qcow2 image's backing file.
 *
 * The header names it; corfs resolves the name next to the image's own
 * URL, over the same protocol (file, HTTP(S), S3, NFS), and opens it as
 * a remote of its own with the image's settings, so that retries, the
 * hold, the pool and identity pinning apply to every file of the chain.
 * Refused: absolute names, json: and protocol-prefixed names (they would
 * reach outside the image's server, or into another protocol), names
 * that go up a directory or hold characters a URL would need escaped,
 * a name under an NBD image (an export has no path: the disk's
 * backing-url gives the URL instead), a backing file whose format the
 * header does not record (never probed), a chain deeper than
 * FORMAT_MAX_DEPTH files, and a loop.
 *
 * Threads: called from the image's open only (under its open_lock).
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "format/qcow2-internal.h"

static int
refuse (char *why, size_t len, const char *fmt, const char *arg)
{
  snprintf (why, len, fmt, arg);
  return -1;
}

static bool
name_ok (const char *name)
{
  for (const char *p = name; *p; p++)
    if (!isalnum ((unsigned char) *p) && !strchr ("._~/+-", *p))
      return false;
  return true;
}

static bool
goes_up (const char *name)
{
  for (const char *p = name; *p; p += strcspn (p, "/"), p += *p == '/') {
    size_t n = strcspn (p, "/");
    if (n == 2 && p[0] == '.' && p[1] == '.')
      return true;
    if (n == 0)
      break;
  }
  return false;
}

int
qcow2_backing_url (const char *url, const char *name, char *out, size_t len, char *why,
                   size_t why_len)
{
  const char *sep = strstr (url, "://"), *colon = strchr (name, ':'), *last = NULL;
  size_t qpos = strcspn (url, "?#");
  bool keep_query;
  int n;

  if (*name == '\0')
    return refuse (why, why_len, "an empty backing file name%s", "");
  if (name[0] == '/')
    return refuse (why, why_len, "absolute backing file name \"%s\": corfs resolves only "
                   "names relative to the image's URL", name);
  if (colon && (!strchr (name, '/') || colon < strchr (name, '/')))
    return refuse (why, why_len, "backing file name \"%s\" names a protocol (json:, nbd:, "
                   "http:...): corfs resolves only names relative to the image's URL", name);
  if (!name_ok (name))
    return refuse (why, why_len, "backing file name \"%s\" has characters corfs does not "
                   "put in a URL (letters, digits and ._~/+- only)", name);
  if (goes_up (name))
    return refuse (why, why_len, "backing file name \"%s\" goes up a directory (..)", name);
  if (sep == NULL || sep > url + qpos)
    return refuse (why, why_len, "the image's URL has no scheme to resolve \"%s\" with", name);
  if (!strncmp (url, "nbd", 3))
    return refuse (why, why_len, "backing file \"%s\" under an NBD image: an export has no "
                   "path to resolve it against (give the disk's backing-url)", name);
  for (const char *p = sep + 3; p < url + qpos; p++)
    if (*p == '/')
      last = p;
  if (last == NULL)
    return refuse (why, why_len, "the image's URL has no path to resolve \"%s\" against",
                   name);
  /* An NFS URL's query holds mount options; an HTTP or S3 one belongs
   * to the image's object (a signature) and is not the backing file's. */
  keep_query = !strncmp (url, "nfs://", 6);
  n = snprintf (out, len, "%.*s%s%s", (int) (last + 1 - url), url, name,
                keep_query ? url + qpos : "");
  if (n < 0 || (size_t) n >= len)
    return refuse (why, why_len, "the URL of backing file \"%s\" is too long", name);
  return 0;
}

/* Is url the URL of f or of an image above it (a loop)? */
static bool
in_chain (struct format *f, const char *url)
{
  for (; f; f = f->up)
    if (f->cfg.remote && !strcmp (f->cfg.remote->url, url))
      return true;
  return false;
}

/* The backing file's URL and format.  0 or -1 (the fault in why). */
static int
backing_target (struct format *f, const struct qcow2_header *h, char *url, size_t len,
                enum format_kind *kind, char *why, size_t why_len)
{
  if (f->cfg.remote == NULL)
    return refuse (why, why_len, "has a backing file \"%s\", which corfs reads only through "
                   "a remote", h->backing_name);
  if (f->depth + 1 >= FORMAT_MAX_DEPTH)
    return refuse (why, why_len, "backing chain too deep: \"%s\" would be file 9 of a chain "
                   "(at most 8)", h->backing_name);
  if (f->depth == 0 && f->cfg.backing_url)
    snprintf (url, len, "%s", f->cfg.backing_url);
  else if (qcow2_backing_url (f->cfg.remote->url, h->backing_name, url, len, why,
                              why_len) == -1)
    return -1;
  if (in_chain (f, url))
    return refuse (why, why_len, "backing file \"%s\" is an image of its own chain (a loop)",
                   h->backing_name);
  if (h->backing_format[0] == '\0')
    return refuse (why, why_len, "the header records no format for backing file \"%s\" "
                   "(corfs never probes: qemu-img rebase -u -F FMT -b NAME records it)",
                   h->backing_name);
  if (format_parse (h->backing_format, kind) == -1)
    return refuse (why, why_len, "backing file format \"%s\": corfs reads raw and qcow2",
                   h->backing_format);
  return 0;
}

int
qcow2_open_backing (struct format *f, const struct qcow2_header *h, uint64_t deadline_ns,
                    struct format **bp, int64_t *bsize, int *err)
{
  char url[4096], why[2048];
  struct format_config cfg = f->cfg;
  struct remote_config rc;
  struct remote *r;

  *bp = NULL;
  if (backing_target (f, h, url, sizeof url, &cfg.kind, why, sizeof why) == -1) {
    fmt_fault (f, "%s", why);
    return *err = ENOTSUP, -1;
  }
  rc = *f->cfg.remote;
  rc.url = url;
  cfg.remote = &rc;
  cfg.backing_url = NULL;
  cfg.lazy = true;              /* opened by format_size below: its fault is kept */
  if (remote_open (&rc, &r) == -1) {
    fmt_fault (f, "backing file \"%s\": %s", h->backing_name, log_last_error ());
    return *err = EINVAL, -1;
  }
  if (fmt_open_backing (f, r, &cfg, deadline_ns, bp, err) == -1) {
    fmt_fault (f, "backing file \"%s\": %s", h->backing_name, strerror (*err));
    return -1;
  }
  if ((*bsize = format_size (*bp, deadline_ns, err)) >= 0)
    return 0;
  /* Its own fault, which names it (the deepest file's, passed up the
   * chain as it is), else its remote's, as this image's backing file. */
  format_last_error (*bp, why, sizeof why);
  if (*why)
    fmt_fault_verbatim (f, why, false);
  else {
    remote_status (r, why, sizeof why);
    fmt_fault (f, "backing file \"%s\": %s", h->backing_name, *why ? why : strerror (*err));
  }
  format_close (*bp);
  *bp = NULL;
  if (*err != ENOTSUP)
    *err = EINVAL;
  return -1;
}
