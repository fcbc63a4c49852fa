/* corfs: the control commands that act on one disk: stream (the
 * streamer), merge and flatten (merge jobs), checkpoint and dirty (change
 * generations), activate, handoff and reclaim (owner states), pivot and
 * abort (the end of a mirror).
 *
 * Notes on the thread model: the command table (ctl-dispatch.c) says
 * where each runs.  stream, dirty and merge's pause, resume, cancel and
 * rate run on the ctl thread and take only short engine and merge
 * locks.  The others (and merge start) are long commands: they run on a
 * job thread (ctl-job.c), one at a time per disk, and may wait for the
 * disk to drain, for the parent, or for a file (abort: for its merge
 * job to end); they touch only their request, the engine and the merge
 * jobs.  No lock of this module is taken here.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "cor/cor.h"
#include "ctl/ctl-internal.h"
#include "merge/merge.h"

/* One stream action on d (the rate, if any, is already set).  0, or -1
 * with *err set. */
static int
stream_action (struct cor_disk *d, const char *action, int *err)
{
  if (!action || !strcmp (action, "start"))
    return cor_stream_start (d, err);
  if (!strcmp (action, "pause"))
    return cor_stream_pause (d, err);
  if (!strcmp (action, "resume"))
    return cor_stream_resume (d, err);
  if (!strcmp (action, "cancel"))
    return cor_stream_cancel (d, err);
  return 0;                     /* "rate": nothing more to do */
}

json_t *
ctl_stream_cmd (struct ctl *c, const char *cmd, json_t *req, json_t *id)
{
  const char *name = json_string_value (json_object_get (req, "disk"));
  const char *action = json_string_value (json_object_get (req, "action"));
  json_t *rate = json_object_get (req, "rate");
  struct cor_disk *d;
  struct cor_status st;
  int err = 0;

  if (!name)
    return ctl_error_reply (id, "stream needs \"disk\"");
  if (!(d = cor_disk_find (c->e, name)))
    return ctl_error_reply (id, "no disk named %s", name);
  if (rate) {
    if (!json_is_integer (rate) || json_integer_value (rate) < 0)
      return ctl_error_reply (id, "rate must be a number of bytes per second (0: unlimited)");
    cor_stream_set_rate (d, json_integer_value (rate));
  }
  if (action && strcmp (action, "start") && strcmp (action, "pause") &&
      strcmp (action, "resume") && strcmp (action, "cancel") && strcmp (action, "rate"))
    return ctl_error_reply (id, "unknown stream action %s (start, pause, resume, cancel, rate)",
                            action);
  if (action && !strcmp (action, "rate") && !rate)
    return ctl_error_reply (id, "action rate needs \"rate\"");
  if (stream_action (d, action, &err) == 0)
    return ctl_ok_reply (id);
  if (err == EBUSY)
    return ctl_error_reply (id, "disk %s is incoming: it streams once activated", name);
  cor_disk_status (d, &st);
  return ctl_error_reply (id, "disk %s: cannot %s the stream: it is %s", name, action,
                          st.stream_state);
}

/* merge, any action: start (a long command, see ctl-dispatch.c), pause,
 * resume, cancel, rate. */
json_t *
ctl_merge_cmd (struct ctl *c, const char *cmd, json_t *req, json_t *id)
{
  json_t *err = NULL, *rate = json_object_get (req, "rate");
  struct cor_disk *d = ctl_req_disk (c, req, id, &err);
  const char *action = json_string_value (json_object_get (req, "action"));
  char msg[512];

  if (!d)
    return err;
  if (rate && (!json_is_integer (rate) || json_integer_value (rate) < 0))
    return ctl_error_reply (id, "rate must be a number of bytes per second (0: unlimited)");
  /* A grown disk has blocks past its parent's end, which a merge cannot
   * write (it never grows the parent). */
  if ((!action || !strcmp (action, "start")) && cor_disk_size (d) > cor_disk_parent_size (d))
    return ctl_error_reply (id, "disk %s: merge refused: the disk was grown to %" PRIu64
                            " bytes, past its parent's %" PRIu64 "; flatten it (--to a new "
                            "image) instead", cor_disk_name (d), cor_disk_size (d),
                            cor_disk_parent_size (d));
  if (merge_control (c->mg, d, action ? action : "start",
                     json_is_true (json_object_get (req, "parent_owned")),
                     rate ? (uint64_t) json_integer_value (rate) : UINT64_MAX,
                     msg, sizeof msg) == -1)
    return ctl_error_reply (id, "%s", msg);
  return ctl_ok_reply (id);
}

/* A long command: the target of a copy is resolved and opened here, and
 * a hung filesystem there must not stop the ctl thread. */
json_t *
ctl_flatten_cmd (struct ctl *c, const char *cmd, json_t *req, json_t *id)
{
  json_t *err = NULL;
  struct cor_disk *d = ctl_req_disk (c, req, id, &err);
  const char *to = json_string_value (json_object_get (req, "to"));
  char msg[512];

  if (!d)
    return err;
  if (to && to[0] != '/')
    return ctl_error_reply (id, "\"to\" must be an absolute path");
  if (merge_flatten (c->mg, d, to, msg, sizeof msg) == -1)
    return ctl_error_reply (id, "%s", msg);
  return ctl_ok_reply (id);
}

json_t *
ctl_checkpoint_cmd (struct ctl *c, const char *cmd, json_t *req, json_t *id)
{
  json_t *err = NULL;
  struct cor_disk *d = ctl_req_disk (c, req, id, &err);
  uint32_t gen;
  char msg[1024];

  if (!d)
    return err;
  if ((gen = cor_checkpoint (d, msg, sizeof msg)) == 0)
    return ctl_error_reply (id, "%s", msg);
  return ctl_with_id (json_pack ("{s:b, s:I}", "ok", 1, "generation", (json_int_t) gen), id);
}

struct dirty_ctx {
  json_t *extents;
  unsigned shift;
  uint64_t size;
};

static int
add_dirty_extent (void *opaque, uint64_t first, uint64_t nr)
{
  struct dirty_ctx *x = opaque;
  uint64_t off = first << x->shift, len = nr << x->shift;
  if (off + len > x->size)
    len = x->size - off;
  json_array_append_new (x->extents, json_pack ("{s:I, s:I}", "offset", (json_int_t) off,
                                                "length", (json_int_t) len));
  return 0;
}

json_t *
ctl_dirty_cmd (struct ctl *c, const char *cmd, json_t *req, json_t *id)
{
  json_t *err = NULL, *since = json_object_get (req, "since");
  struct cor_disk *d = ctl_req_disk (c, req, id, &err);
  struct dirty_ctx x;
  struct cor_status st;
  bool widened = false;

  if (!d)
    return err;
  if (!json_is_integer (since) || json_integer_value (since) < 1)
    return ctl_error_reply (id, "dirty needs \"since\": a generation number (from 1)");
  cor_disk_status (d, &st);
  x.extents = json_array ();
  x.shift = cor_disk_block_shift (d);
  x.size = cor_disk_size (d);
  if (cor_changed_extents (d, json_integer_value (since), &widened,
                            add_dirty_extent, &x) == -1) {
    json_decref (x.extents);
    if (errno == EINVAL)
      return ctl_error_reply (id, "disk %s: no generation %" JSON_INTEGER_FORMAT
                              " (the current one is %" PRIu32 ")", cor_disk_name (d),
                              json_integer_value (since), st.generation);
    return ctl_error_reply (id, "disk %s: reading the changed maps: %s", cor_disk_name (d),
                            strerror (errno));
  }
  return ctl_with_id (json_pack ("{s:b, s:I, s:I, s:b, s:o}", "ok", 1,
                                 "since", (json_int_t) json_integer_value (since),
                                 "generation", (json_int_t) st.generation, "widened", widened,
                                 "extents", x.extents), id);
}

/* activate / handoff / reclaim: {"disk": NAME, "epoch": N[, "force": true]} */
json_t *
ctl_owner_cmd (struct ctl *c, const char *cmd, json_t *req, json_t *id)
{
  json_t *err = NULL, *epoch = json_object_get (req, "epoch");
  struct cor_disk *d = ctl_req_disk (c, req, id, &err);
  char msg[1024];
  uint64_t e;
  int r;

  if (!d)
    return err;
  if (!json_is_integer (epoch) || json_integer_value (epoch) < 1)
    return ctl_error_reply (id, "%s needs \"epoch\": a positive integer chosen by the "
                            "management tool, strictly increasing per disk", cmd);
  e = json_integer_value (epoch);
  if (!strcmp (cmd, "activate"))
    r = cor_activate (d, e, json_is_true (json_object_get (req, "force")), msg, sizeof msg);
  else if (!strcmp (cmd, "handoff"))
    r = cor_handoff (d, e, msg, sizeof msg);
  else
    r = cor_reclaim (d, e, msg, sizeof msg);
  if (r == -1)
    return ctl_error_reply (id, "%s", msg);
  return ctl_ok_reply (id);
}

/* pivot / abort: {"disk": NAME}.  abort's copy is a merge job
 * (merge_abort): this job thread waits for its outcome, which is the
 * reply; status shows its progress meanwhile. */
json_t *
ctl_mirror_cmd (struct ctl *c, const char *cmd, json_t *req, json_t *id)
{
  json_t *err = NULL;
  struct cor_disk *d = ctl_req_disk (c, req, id, &err);
  char msg[1024];

  if (!d)
    return err;
  if ((!strcmp (cmd, "pivot") ? cor_pivot (d, msg, sizeof msg)
       : merge_abort (c->mg, d, msg, sizeof msg)) == -1)
    return ctl_error_reply (id, "%s", msg);
  return ctl_ok_reply (id);
}
