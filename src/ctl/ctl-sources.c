/* corfs: the sources command (docs/control.md): a disk's sources listed,
 * added (with the new source's own settings) or removed at run time.
 *
 * Notes on the thread model: list runs on the ctl thread (status only);
 * add and remove are long commands (the command table says so): they
 * run on a job thread, since adding contacts the new source (bounded by
 * the hold).  No lock of this module is taken here.
 */
#include <string.h>

#include "cor/cor.h"
#include "ctl/ctl-internal.h"
#include "remote/remote.h"

/* The sources of d, as status gives them. */
static json_t *
sources_reply (struct cor_disk *d, json_t *id)
{
  struct cor_status st;
  json_t *a;

  cor_disk_status (d, &st);
  a = ctl_sources_json (&st);
  if (a && st.nr_sources == 0)    /* one parent: shown as the one source */
    json_array_append_new (a, json_pack ("{s:s, s:s, s:s}", "url", st.parent_url,
                                         "backend", st.parent_backend,
                                         "state", st.parent_state));
  return ctl_with_id (json_pack ("{s:b, s:s, s:o}", "ok", 1, "disk", cor_disk_name (d),
                                 "sources", a ? a : json_array ()), id);
}

static const char *
str (json_t *o, const char *key)
{
  return json_string_value (json_object_get (o, key));
}

/* The new source's settings from the request ("settings": the names of
 * the config file's keys, headers a list).  headers is the caller's,
 * NULL-terminated, at most 32. */
static void
settings_of (json_t *req, struct remote_config *c, const char **headers)
{
  json_t *s = json_object_get (req, "settings"), *h = json_object_get (s, "headers");
  size_t n = 0;

  c->url = str (req, "url");
  c->credentials_file = str (s, "credentials-file");
  c->token_file = str (s, "token-file");
  c->ca_file = str (s, "ca-file");
  c->client_cert = str (s, "client-cert");
  c->client_key = str (s, "client-key");
  c->s3_endpoint = str (s, "s3-endpoint");
  c->s3_region = str (s, "s3-region");
  c->insecure = json_is_true (json_object_get (s, "insecure"));
  c->s3_virtual_host = json_is_false (json_object_get (s, "s3-path-style"));
  for (size_t i = 0; i < json_array_size (h) && n < 32; i++)
    if (json_is_string (json_array_get (h, i)))
      headers[n++] = json_string_value (json_array_get (h, i));
  headers[n] = NULL;
  c->headers = n ? headers : NULL;
}

json_t *
ctl_sources_cmd (struct ctl *c, const char *cmd, json_t *req, json_t *id)
{
  const char *action = str (req, "action"), *url = str (req, "url");
  json_t *err = NULL;
  struct cor_disk *d = ctl_req_disk (c, req, id, &err);
  struct remote_config rc = { 0 };
  const char *headers[33];
  char why[512] = "";
  int r;

  if (!d)
    return err;
  if (!action || !strcmp (action, "list"))
    return sources_reply (d, id);
  if (strcmp (action, "add") != 0 && strcmp (action, "remove") != 0)
    return ctl_error_reply (id, "unknown sources action %s (list, add, remove)", action);
  if (!url || !*url)
    return ctl_error_reply (id, "sources %s needs \"url\"", action);
  if (!strcmp (action, "add")) {
    settings_of (req, &rc, headers);
    r = cor_disk_sources_add (d, &rc, why, sizeof why);
  }
  else
    r = cor_disk_sources_remove (d, url, why, sizeof why);
  if (r == -1)
    return ctl_error_reply (id, "disk %s: sources %s: %s", cor_disk_name (d), action, why);
  return sources_reply (d, id);
}
