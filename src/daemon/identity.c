/* corfs: the parent's identity at mount, as the daemon applies the one
 * policy meta_identity_binding states (src/meta): when a record's
 * identity binds, and the one case the daemon treats apart, an active
 * mirror's identity sealed at its last clean stop.  attach.c calls these
 * in the order its steps give.  Main thread only, before the engine's
 * threads start. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"
#include "daemon/daemon-internal.h"
#include "meta/meta.h"
#include "remote/remote.h"

/* Whether the record's identity is an active mirror's seal rather than
 * a pin.  meta_identity_binding leaves such a parent's identity free
 * (the mirror's own writes move it); what the record holds instead is
 * the identity at the last clean stop (cor_engine_quiesce seals it),
 * verified once at mount (verify_mirror_parent), then spent
 * (forget_mirror_identity), and never re-recorded by the mount
 * (record_parent).  A merge's record is pinned afresh instead. */
bool
identity_is_sealed (const struct meta_record *rec)
{
  return rec->mirror && rec->state == META_ACTIVE && !rec->merging;
}

/* A record in a pinned state (active writeback, handed off) with blocks
 * present must carry the parent's identity: records written before
 * identities were always computed may say identity= (empty), and would
 * accept any image of the same size.  Refused unless --repin NAME says
 * to pin the parent as it is now; --repin over a record that has an
 * identity is refused too (that would be accept-changed-parent).  0 or
 * -1 (logged). */
int
check_unpinned (const char *name, const struct meta_record *rec, struct meta_disk *md,
                bool repin)
{
  bool pinned_state = meta_identity_binding (rec) && rec->state != META_STANDALONE;
  uint64_t present = meta_count (md, META_PRESENT);

  if (repin && *rec->identity) {
    log_error ("daemon: disk %s: --repin refused: its record pins parent %s as %s "
               "(--repin is only for a record without an identity)", name, rec->url,
               rec->identity);
    return -1;
  }
  if (repin || *rec->identity || !pinned_state || present == 0)
    return 0;
  log_error ("daemon: disk %s: its record has no parent identity (written by an older "
             "corfs) and %" PRIu64 " blocks are present: a different image at %s would "
             "not be noticed; if the parent is the image this disk came from, mount "
             "with --repin %s to pin it", name, present, rec->url, name);
  return -1;
}

/* An active mirror writes its parent, so its identity is not pinned at
 * mount (the mirror's own writes move it) and a reconnect re-pins it.
 * What the record holds is the parent's identity at the last clean stop
 * (cor_engine_quiesce seals it): verify it on a connection of its own
 * before any write, so that an image swapped while the disk was not
 * mounted is refused.  Not after an unclean stop (widened: writes after
 * the last seal), nor without a recorded identity (the seal could not
 * ask the parent): logged.  0 or -1 (logged). */
int
verify_mirror_parent (const char *name, const struct meta_record *rec, struct remote *r,
                      bool widened, uint64_t hold_s)
{
  char why[1280];
  int err = 0;

  if (!identity_is_sealed (rec))
    return 0;
  if (widened || !*rec->identity) {
    log_info ("daemon: disk %s: mirror: parent %s cannot be verified at this mount (%s)",
              name, remote_url (r), widened ? "the last stop was unclean"
              : "no identity was recorded at the last stop");
    return 0;
  }
  if (remote_verify (r, rec->identity, now_ns () + hold_s * NS_PER_SEC, &err) == 0)
    return 0;
  remote_status (r, why, sizeof why);
  log_error ("daemon: disk %s: mirror: parent %s %s: %s", name, remote_url (r),
             err == ESTALE ? "is not the image the mirror last wrote" : "cannot be verified",
             *why ? why : strerror (err));
  return -1;
}

/* An active mirror writes its parent from now on, which moves the
 * parent's identity: the one recorded at the last stop is spent once
 * verified.  It is cleared, so that a stop that cannot record a new one
 * (seal_mirror in src/cor) leaves "cannot verify" for the next mount,
 * never a stale identity that a healthy parent would fail.  0 or -1. */
int
forget_mirror_identity (const char *name, struct meta_disk *md, struct meta_record *rec)
{
  if (!identity_is_sealed (rec) || !*rec->identity)
    return 0;
  meta_disk_record (md, rec);
  rec->identity[0] = '\0';
  if (meta_disk_update (md, rec) == -1) {
    log_error ("daemon: disk %s: recording the mirror's identity as spent: %m", name);
    return -1;
  }
  return 0;
}
