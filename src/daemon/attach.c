/* corfs: attaching disks (start-up step 5): each disk's options are
 * reconciled with its record in the index, its parent is opened and
 * checked, and the disk is added to the engine.
 *
 * One disk (attach_disk), in this order; the first check that fails
 * refuses the whole mount, with one logged reason:
 *   1. the options against the record: --incoming, --write-mode, a
 *      mirror's --parent-owned (reconcile_modes); the URL, accepted in
 *      the redaction of an older corfs, and the block size
 *      (reconcile_given); the image format, and what a qcow2 parent
 *      cannot do (reconcile_format);
 *   2. the parent's settings (remote_config_for) and the identity it is
 *      held to (choose_pinned_identity): the record's where
 *      meta_identity_binding says it binds; none for
 *      accept-changed-parent, allowed only while nothing is present;
 *   3. the parent is opened (open_parent; no I/O yet), and its image
 *      format's reader (open_format: a qcow2 header and L1 table are
 *      read where the parent is needed, else at the first use);
 *   4. a recorded disk (attach_recorded): its index, an active mirror's
 *      sealed identity verified, --parent-owned recorded, an unpinned
 *      record refused, then (unless every block is present) the parent's
 *      size checked and its identity and URL recorded, and last a
 *      mirror's spent identity forgotten; a new disk (create_record): the
 *      parent's size, then its record;
 *   5. an active mirror's parent must be writable and able to flush
 *      (check_mirror_parent);
 *   6. streaming hints and trace, and the engine's disk (add_to_engine).
 * The identity checks of step 4 are identity.c's, and whether a record's
 * identity binds is meta_identity_binding's alone.
 *
 * Main thread only, before the engine's threads start. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cleanup.h"
#include "common/log.h"
#include "common/util.h"
#include "cor/cor.h"
#include "daemon/daemon-internal.h"
#include "format/format.h"
#include "meta/meta.h"
#include "remote/remote.h"

/* One disk being attached: what its steps read and what they open. */
struct attach {
  struct mount_opts *o;
  struct meta *m;
  const char *name;
  const struct disk_opts *dopt;   /* NULL: recorded, not given this time */
  uint64_t hold_s;
  bool recorded;                  /* rec is the disk's record */
  struct meta_record rec;
  bool want_mirror;               /* the write mode the options ask for */
  char *redacted;                 /* dopt's URL as the index keeps it */
  bool rewrite_url;               /* recorded in an older redaction: rewrite */
  struct remote_config rcfg;
  struct disk_sources ds;         /* several sources (disk-sources.c) */
  struct remote *r;               /* the parent, once opened */
  enum format_kind kind;          /* its image format */
  struct format *fmt;             /* its reader (qcow2; NULL: raw), once opened */
  struct meta_disk *md;           /* the disk's index, once opened */
};

static uint64_t
deadline_ns (const struct attach *a)
{
  return now_ns () + a->hold_s * NS_PER_SEC;
}

/* Is disk name given on the command line / config?  Index or -1. */
static ssize_t
find_opt_disk (const struct mount_opts *o, const char *name)
{
  for (size_t i = 0; i < o->nr_disks; i++)
    if (!strcmp (o->disks[i].name, name))
      return i;
  return -1;
}

static bool
wants_repin (const struct mount_opts *o, const char *name)
{
  for (size_t i = 0; i < o->nr_repin; i++)
    if (!strcmp (o->repin[i], name))
      return true;
  return false;
}

/* Too many blocks for the index's bitmaps (META_MAX_BLOCKS): refused
 * before anything is allocated.  0 or -1 (logged). */
static int
check_nr_blocks (const char *name, const struct remote *r, int64_t size, uint64_t bs)
{
  uint64_t nr = ((uint64_t) size + bs - 1) / bs;

  if (nr <= META_MAX_BLOCKS)
    return 0;
  log_error ("daemon: disk %s: parent %s has %" PRId64 " bytes: %" PRIu64 " blocks of %"
             PRIu64 " bytes, more than the %llu blocks a disk can have (a larger "
             "--block-size, up to 4M, allows up to %llu bytes)", name, remote_url (r),
             size, nr, bs, META_MAX_BLOCKS, META_MAX_BLOCKS << 22);
  return -1;
}

/* An interrupted activation (record activating) whose parent fails the
 * mount's checks is not finished by a later mount either: the record goes
 * back to incoming (its epoch kept: `activate` with the same epoch
 * finishes it), as after a failed `activate`. */
static void
unfinish_activation (const char *name, struct meta_disk *md)
{
  struct meta_record rec;

  meta_disk_record (md, &rec);
  if (rec.state != META_ACTIVATING)
    return;
  rec.state = META_INCOMING;
  if (meta_disk_update (md, &rec) == -1)
    log_error ("daemon: disk %s: putting an interrupted activation back to incoming: %m",
               name);
  else
    log_warn ("daemon: disk %s: the interrupted activation (epoch %" PRIu64 ") is undone: "
              "the disk is incoming again until `activate --epoch %" PRIu64 "` is repeated",
              name, rec.epoch, rec.epoch);
}

/* Step 1: the modes the options ask for against the record's.  A disk
 * is incoming only until it is activated, and keeps its write mode
 * (until it is standalone); a new mirror writes its parent, which needs
 * --parent-owned.  0 or -1 (logged). */
static int
reconcile_modes (struct attach *a)
{
  const struct mount_opts *o = a->o;
  const struct disk_opts *dopt = a->dopt;
  const struct meta_record *rec = &a->rec;
  bool said_mode = (dopt && dopt->write_mode >= 0) || o->have_write_mode;

  if (a->recorded && (o->incoming || (dopt && dopt->incoming)) &&
      rec->state != META_INCOMING && rec->state != META_ACTIVATING) {
    log_error ("daemon: disk %s is recorded %s; --incoming conflicts (a disk is "
               "incoming only until it is activated)", a->name,
               meta_state_name (rec->state));
    return -1;
  }
  a->want_mirror = dopt && dopt->write_mode >= 0 ? dopt->write_mode == 1 : o->mirror;
  if (a->recorded && said_mode && a->want_mirror != rec->mirror &&
      rec->state != META_STANDALONE) {
    log_error ("daemon: disk %s is recorded with write mode %s; a conflicting "
               "--write-mode was given", a->name, rec->mirror ? "mirror" : "writeback");
    return -1;
  }
  if (!a->recorded && a->want_mirror && !(o->parent_owned || (dopt && dopt->parent_owned))) {
    log_error ("daemon: disk %s: --write-mode=mirror writes the parent: it needs "
               "--parent-owned", a->name);
    return -1;
  }
  return 0;
}

/* Step 1, for a disk given again: its parent and block size cannot
 * change.  Sets a->redacted (the URL as recorded) and a->rewrite_url.
 * 0 or -1 (logged). */
static int
reconcile_given (struct attach *a)
{
  const struct disk_opts *dopt = a->dopt;

  if (!dopt)
    return 0;
  a->redacted = url_redact (dopt->url);
  if (!a->redacted) {
    log_error ("daemon: disk %s: out of memory", a->name);
    return -1;
  }
  /* A disk recorded with several sources may move to others: each is
   * checked against the recorded fingerprint before it serves. */
  if (a->recorded && strcmp (a->redacted, a->rec.url) != 0 &&
      !remote_identity_is_set (a->rec.identity)) {
    /* A record written by corfs up to 63d3432 holds the URL in that
     * version's redaction (a whole query dropped): the same URL given
     * again is accepted, and the record rewritten in the current
     * form, which a remount without --disk can connect with. */
    CLEANUP_FREE char *legacy = url_redact_legacy (dopt->url);
    if (!legacy || strcmp (legacy, a->rec.url) != 0) {
      log_error ("daemon: disk %s is recorded with parent %s; --disk gives %s "
                 "(a disk's parent cannot change)", a->name, a->rec.url, a->redacted);
      return -1;
    }
    a->rewrite_url = true;
  }
  if (a->recorded && dopt->block_size && dopt->block_size != a->rec.block_size) {
    log_error ("daemon: disk %s is recorded with block size %" PRIu32
               "; a conflicting block size %" PRIu64 " was given", a->name,
               a->rec.block_size, dopt->block_size);
    return -1;
  }
  return 0;
}

/* Step 1: the image format, the record's (raw when it names none), else
 * the one given (the disk's, else --format), else raw: never probed.  A
 * qcow2 parent is only read: it cannot be incoming (a live source
 * reallocates clusters under the cached tables), owned or mirrored
 * (corfs writes only raw parents).  0 or -1 (logged). */
static int
reconcile_format (struct attach *a)
{
  const struct disk_opts *dopt = a->dopt;
  int want = dopt ? (dopt->format >= 0 ? dopt->format : a->o->format) : -1;
  enum format_kind recorded = FORMAT_RAW;
  const char *why = NULL;

  if (a->recorded && a->rec.format[0] && format_parse (a->rec.format, &recorded) == -1) {
    log_error ("daemon: disk %s is recorded with image format %s, which this corfs does "
               "not read", a->name, a->rec.format);
    return -1;
  }
  if (a->recorded && want >= 0 && (enum format_kind) want != recorded) {
    log_error ("daemon: disk %s is recorded with image format %s; a conflicting format %s "
               "was given (a disk's format cannot change)", a->name, format_name (recorded),
               format_name (want));
    return -1;
  }
  a->kind = a->recorded ? recorded : want >= 0 ? (enum format_kind) want : FORMAT_RAW;
  if (a->kind == FORMAT_RAW)
    return 0;
  if ((dopt && (dopt->incoming || a->o->incoming)) ||
      (a->recorded && (a->rec.state == META_INCOMING || a->rec.state == META_ACTIVATING)))
    why = "cannot be --incoming: a live source reallocates clusters, so the tables corfs "
      "caches would go stale";
  else if ((dopt && (dopt->parent_owned || a->o->parent_owned)) ||
           (a->recorded && a->rec.parent_owned))
    why = "cannot be --parent-owned: corfs writes only raw parents (merge, mirror)";
  else if (a->want_mirror || (a->recorded && a->rec.mirror))
    why = "cannot be mirrored: corfs writes only raw parents";
  if (why) {
    log_error ("daemon: disk %s: a %s parent %s", a->name, format_name (a->kind), why);
    return -1;
  }
  return 0;
}

/* Step 3: the reader of a qcow2 parent.  Lazy: its tables are read at
 * the first use (a disk whose blocks are all present never contacts its
 * parent).  Else now, so that a bad image is refused at mount.  0 or -1
 * (logged). */
static int
open_format (struct attach *a, bool lazy)
{
  struct format_config fc = { .kind = a->kind, .l2_cache_bytes = a->o->qcow2_l2_cache,
                              .lazy = lazy, .remote = &a->rcfg,
                              .backing_url = a->dopt ? a->dopt->backing_url : NULL };
  char why[1280];
  int err;

  if (a->kind == FORMAT_RAW || a->fmt)
    return 0;
  if (format_open (a->r, &fc, deadline_ns (a), &a->fmt, &err) == 0)
    return 0;
  if (err == EINVAL || err == ENOTSUP)
    snprintf (why, sizeof why, "%s", log_last_error ());   /* the image's fault */
  else {
    remote_status (a->r, why, sizeof why);
    if (!*why)
      snprintf (why, sizeof why, "%s", strerror (err));
  }
  log_error ("daemon: disk %s: refused: %s", a->name, why);
  return -1;
}

/* The parent's size: the virtual size of an image in a format.  -1
 * with *err. */
static int64_t
parent_size (struct attach *a, int *err)
{
  if (a->fmt)
    return format_size (a->fmt, deadline_ns (a), err);
  return remote_get_size (a->r, deadline_ns (a), err);
}

/* Step 2: how to reach the parent (the URL as given, else as recorded;
 * HTTP(S)/S3 settings come only with the options) and whether it is
 * opened for writing: a parent the disk owns, or a new mirror's. */
static void
remote_config_for (struct attach *a)
{
  const struct disk_opts *dopt = a->dopt;
  struct remote_config *c = &a->rcfg;

  c->disk = a->name;
  c->connect_timeout_ns = a->o->connect_timeout_s * NS_PER_SEC;
  c->request_timeout_ns = REQUEST_TIMEOUT_S * NS_PER_SEC;
  c->url = dopt ? dopt->url : a->rec.url;
  if (dopt) {
    c->credentials_file = dopt->credentials_file;
    c->token_file = dopt->token_file;
    c->headers = (const char *const *) dopt->headers;
    c->ca_file = dopt->ca_file;
    c->client_cert = dopt->client_cert;
    c->client_key = dopt->client_key;
    c->insecure = dopt->insecure;
    c->s3_endpoint = dopt->s3_endpoint;
    c->s3_region = dopt->s3_region;
    c->s3_virtual_host = dopt->s3_virtual_host;
  }
  c->writable = (a->recorded && a->rec.parent_owned) || (!a->recorded && a->want_mirror);
}

/* Step 2, for a disk with several sources (disk-sources.c): their
 * configs, and the first one's pin.  0 or -1 (logged). */
static int
sources_for (struct attach *a)
{
  if (disk_sources_build (a->name, a->dopt, a->recorded ? &a->rec : NULL, &a->rcfg,
                          a->o->source_timeout_ms, &a->ds) == -1)
    return -1;
  disk_sources_pin (&a->ds, a->rcfg.pinned_identity);
  if (a->ds.n > 0 && a->dopt && (a->dopt->parent_owned || a->o->parent_owned)) {
    log_error ("daemon: disk %s: several sources are refused with --parent-owned (a write "
               "that reached one source is not on the others)", a->name);
    return -1;
  }
  return 0;
}

/* Blocks present in disk name's overlay, from its index opened and
 * closed again before the parent is (0 if it cannot be opened). */
static uint64_t
probe_present (struct meta *m, const char *name)
{
  struct meta_disk *probe = NULL;
  uint64_t present = 0;

  if (meta_disk_open (m, name, NULL, &probe, NULL) == 0) {
    present = meta_count (probe, META_PRESENT);
    meta_disk_close (probe, true);
  }
  return present;
}

/* Step 2: the identity the parent is held to.  The record's, wherever
 * meta_identity_binding says it binds (the states in which the parent
 * moves, a merge before a crash among them (docs/design.md rule 9), are
 * pinned afresh); none for accept-changed-parent, which re-bases the
 * disk and so is refused once blocks are present.  A URL matched only
 * in an older corfs's redaction needs the pin to confirm it.  0 or -1
 * (logged). */
static int
choose_pinned_identity (struct attach *a)
{
  a->rcfg.pinned_identity = a->recorded && meta_identity_binding (&a->rec)
    ? a->rec.identity : NULL;
  if (a->rewrite_url && (!a->rcfg.pinned_identity || !*a->rcfg.pinned_identity)) {
    /* Nothing to confirm the old-form match with: the URL stays as the
     * record has it. */
    log_error ("daemon: disk %s is recorded with parent %s by an older corfs; --disk "
               "gives %s, which only the parent's pinned identity could confirm, and "
               "none is pinned while a disk is incoming, activating, merging or an "
               "active mirror: mount without --disk", a->name, a->rec.url, a->redacted);
    return -1;
  }
  if (a->recorded && a->dopt && a->dopt->accept_changed_parent) {
    /* Re-basing onto a changed parent is only sane with nothing local. */
    uint64_t present = probe_present (a->m, a->name);
    if (present > 0) {
      log_error ("daemon: disk %s: accept-changed-parent refused: %" PRIu64 " blocks are "
                 "already present and would mix two images (start a new state directory)",
                 a->name, present);
      return -1;
    }
    log_warn ("daemon: disk %s: accept-changed-parent: re-pinning the parent's identity",
              a->name);
    a->rcfg.pinned_identity = NULL;
  }
  return 0;
}

/* Step 3: open the parent (no I/O yet).  A merge that was interrupted
 * may have changed it: the parent is marked as being modified, so its
 * identity is not held to.  0 or -1 (logged by remote_open). */
static int
open_parent (struct attach *a)
{
  if (remote_open (&a->rcfg, &a->r) == -1)
    return -1;
  if (a->recorded && a->rec.merging) {
    log_warn ("daemon: disk %s: a merge into %s was interrupted; run `corfs merge` "
              "again to finish it", a->name, a->rec.url);
    remote_set_modifying (a->r, true);
  }
  return 0;
}

/* Step 4: a recorded disk given --parent-owned (on the command line or
 * for this disk) now owns its parent.  0 or -1. */
static int
record_parent_owned (struct attach *a)
{
  const struct disk_opts *dopt = a->dopt;

  if (!dopt || !(dopt->parent_owned || a->o->parent_owned) || a->rec.parent_owned)
    return 0;
  meta_disk_record (a->md, &a->rec);
  a->rec.parent_owned = true;
  return meta_disk_update (a->md, &a->rec);
}

/* Step 4: the parent a recorded disk needs must still be the same image,
 * with the size recorded (its identity, if pinned, was checked as the
 * size was asked).  On failure an interrupted activation is undone.
 * 0 or -1 (logged). */
static int
check_parent_size (struct attach *a)
{
  int err;
  int64_t size;

  if (open_format (a, false) == -1) {
    unfinish_activation (a->name, a->md);
    return -1;
  }
  size = parent_size (a, &err);
  if (size < 0) {
    char msg[1280];
    remote_status (a->r, msg, sizeof msg);
    log_error ("daemon: disk %s: parent %s: %s", a->name, remote_url (a->r),
               err == ESTALE ? msg : *msg ? msg : strerror (err));
    unfinish_activation (a->name, a->md);
    return -1;
  }
  if ((uint64_t) size != a->rec.size) {
    log_error ("daemon: disk %s: parent %s has size %" PRId64 " but the disk was "
               "recorded with size %" PRIu64 "; refusing to attach a different image",
               a->name, remote_url (a->r), size, a->rec.size);
    unfinish_activation (a->name, a->md);
    return -1;
  }
  return 0;
}

/* Step 4: a set's sources' own pins (those checked so far; the prober
 * records the others as it checks them).  0 or -1. */
static int
record_source_ids (struct attach *a)
{
  char ids[META_SOURCE_IDS_MAX];

  if (a->ds.n == 0 || disk_sources_ids (a->r, ids, sizeof ids) == -1 ||
      !strcmp (ids, a->rec.source_ids))
    return 0;
  meta_disk_record (a->md, &a->rec);
  snprintf (a->rec.source_ids, sizeof a->rec.source_ids, "%s", ids);
  return meta_disk_update (a->md, &a->rec);
}

/* Step 4, once the parent passed check_parent_size: record its identity
 * where it was re-pinned (accept-changed-parent, --repin, an interrupted
 * merge; never a sealed mirror's), and a URL recorded by an older corfs
 * in the current form.  0 or -1. */
static int
record_parent (struct attach *a)
{
  char cur[META_ID_MAX];

  remote_identity (a->r, cur, sizeof cur);
  meta_disk_record (a->md, &a->rec);
  if (*cur && strcmp (cur, a->rec.identity) != 0 && !identity_is_sealed (&a->rec)) {
    snprintf (a->rec.identity, sizeof a->rec.identity, "%s", cur);
    if (meta_disk_update (a->md, &a->rec) == -1)
      return -1;
  }
  if (a->ds.n > 0 && a->redacted &&
      (strcmp (a->rec.url, a->redacted) != 0 || strcmp (a->rec.sources, a->ds.list) != 0)) {
    meta_disk_record (a->md, &a->rec);
    log_info ("daemon: disk %s: sources recorded as %s %s", a->name, a->redacted, a->ds.list);
    snprintf (a->rec.url, sizeof a->rec.url, "%s", a->redacted);
    snprintf (a->rec.sources, sizeof a->rec.sources, "%s", a->ds.list);
    if (meta_disk_update (a->md, &a->rec) == -1)
      return -1;
  }
  if (a->rewrite_url) {
    meta_disk_record (a->md, &a->rec);
    log_info ("daemon: disk %s: parent recorded as %s by an older corfs; "
              "recorded as %s now", a->name, a->rec.url, a->redacted);
    snprintf (a->rec.url, sizeof a->rec.url, "%s", a->redacted);
    if (meta_disk_update (a->md, &a->rec) == -1)
      return -1;
  }
  return record_source_ids (a);
}

/* Step 4, once the parent passed check_parent_size: the identities of
 * its backing files (a qcow2 chain) must be the recorded ones, unless
 * accept-changed-parent re-bases the disk (nothing present: checked in
 * step 2), which records them anew.  0 or -1 (logged). */
static int
check_backing_chain (struct attach *a)
{
  char now[META_ID_MAX];

  if (a->fmt == NULL)
    return 0;
  format_chain_identity (a->fmt, now, sizeof now);
  meta_disk_record (a->md, &a->rec);
  if (strcmp (now, a->rec.backing_identity) == 0)
    return 0;
  if (a->dopt && a->dopt->accept_changed_parent) {
    snprintf (a->rec.backing_identity, sizeof a->rec.backing_identity, "%s", now);
    return meta_disk_update (a->md, &a->rec);
  }
  log_error ("daemon: disk %s: the backing files of parent %s changed (recorded \"%s\", now "
             "\"%s\"): refusing to mix two images", a->name, remote_url (a->r),
             a->rec.backing_identity, now);
  return -1;
}

/* Step 4 for a disk with a record.  0 or -1 (logged). */
static int
attach_recorded (struct attach *a)
{
  bool widened = false, repin = wants_repin (a->o, a->name);

  if (meta_disk_open (a->m, a->name, NULL, &a->md, &widened) == -1) {
    log_error ("daemon: disk %s: opening its index: %m", a->name);
    return -1;
  }
  if (verify_mirror_parent (a->name, &a->rec, a->r, widened, a->hold_s) == -1 ||
      record_parent_owned (a) == -1 ||
      check_unpinned (a->name, &a->rec, a->md, repin) == -1)
    return -1;
  /* The parent is needed (or to be pinned): check that it is still the
   * same image.  A URL matched only through the old redaction (which
   * dropped whole queries: "?socket=/x/sig.sock" and "?socket=/y/sig.sock"
   * looked the same) is confirmed by the parent's identity before it is
   * recorded, even when every block is present. */
  if (meta_count (a->md, META_PRESENT) < meta_nr_blocks (a->md) || repin || a->rewrite_url) {
    if (check_parent_size (a) == -1 || record_parent (a) == -1 ||
        check_backing_chain (a) == -1)
      return -1;
  }
  else {
    log_info ("daemon: disk %s: every block is present; not contacting the parent",
              a->name);
    if (open_format (a, true) == -1)
      return -1;
  }
  /* Only once the parent's checks passed: a mount that fails them keeps
   * the verified identity for the next. */
  return forget_mirror_identity (a->name, a->md, &a->rec);
}

/* Step 4 for a new disk (given, so a->dopt is set): the parent's size
 * and identity make its record.  0 or -1 (logged). */
static int
create_record (struct attach *a)
{
  const struct disk_opts *dopt = a->dopt;
  uint64_t bs = dopt->block_size ? dopt->block_size : a->o->block_size;
  struct meta_record init;
  int err;
  int64_t size;

  if (open_format (a, false) == -1)
    return -1;
  size = parent_size (a, &err);
  if (size < 0) {
    char msg[1280];
    remote_status (a->r, msg, sizeof msg);
    log_error ("daemon: disk %s: cannot reach parent %s: %s", a->name, remote_url (a->r),
               *msg ? msg : strerror (err));
    return -1;
  }
  if (size == 0) {
    log_error ("daemon: disk %s: parent %s is empty", a->name, remote_url (a->r));
    return -1;
  }
  if (check_nr_blocks (a->name, a->r, size, bs) == -1)
    return -1;
  memset (&init, 0, sizeof init);
  snprintf (init.url, sizeof init.url, "%s", a->redacted);
  snprintf (init.sources, sizeof init.sources, "%s", a->ds.list);
  if (a->ds.n > 0 && disk_sources_ids (a->r, init.source_ids, sizeof init.source_ids) == -1)
    init.source_ids[0] = '\0';
  remote_identity (a->r, init.identity, sizeof init.identity);
  init.size = size;
  init.block_size = bs;
  init.state = dopt->incoming || a->o->incoming ? META_INCOMING : META_ACTIVE;
  init.parent_owned = dopt->parent_owned || a->o->parent_owned;
  init.generation = 1;
  init.mirror = a->want_mirror;
  if (a->kind != FORMAT_RAW)
    snprintf (init.format, sizeof init.format, "%s", format_name (a->kind));
  if (a->fmt)
    format_chain_identity (a->fmt, init.backing_identity, sizeof init.backing_identity);
  if (meta_disk_open (a->m, a->name, &init, &a->md, NULL) == -1) {
    log_error ("daemon: disk %s: creating its index record: %m", a->name);
    return -1;
  }
  log_info ("daemon: disk %s: new, parent %s (%s), %" PRIu64 " bytes, block size %" PRIu32,
            a->name, init.url, format_name (a->kind), init.size, init.block_size);
  return 0;
}

/* Step 5: an active mirror writes every guest write to its parent, so
 * the parent must take writes, and flushes: every guest fsync flushes
 * it, and one that cannot flush (an NBD server without FLUSH) would fail
 * them all, so refuse now.  0 or -1 (logged). */
static int
check_mirror_parent (struct attach *a)
{
  struct meta_record now;
  int err;

  meta_disk_record (a->md, &now);
  if (!now.mirror || now.state != META_ACTIVE)
    return 0;
  if (remote_make_writable (a->r, deadline_ns (a), &err) == -1) {
    char why[1280];
    remote_status (a->r, why, sizeof why);
    log_error ("daemon: disk %s: mirror mode needs a writable parent: %s", a->name,
               *why ? why : strerror (err));
    return -1;
  }
  if (remote_flush_all (a->r, deadline_ns (a), &err) == -1 && err == EOPNOTSUPP) {
    log_error ("daemon: disk %s: mirror mode needs a parent that can flush: %s offers "
               "none, so no write to it could be made durable (serve it with flush, or use "
               "writeback mode)", a->name, remote_url (a->r));
    return -1;
  }
  return 0;
}

/* Step 6: the engine's disk, with its overlay STATE/NAME.overlay, its
 * streaming settings (the disk's, else the mount's) and hints.  On
 * success the engine owns a->md, a->r and a->fmt.  0 or -1 (logged). */
static int
add_to_engine (struct attach *a, struct cor_engine *e)
{
  const struct mount_opts *o = a->o;
  const struct disk_opts *dopt = a->dopt;
  char overlay[PATH_MAX], trace[PATH_MAX];
  struct meta_record now;
  struct cor_range *hints;
  struct cor_disk *d;
  size_t nr_hints;
  int r;

  snprintf (overlay, sizeof overlay, "%s/%s.overlay", o->state, a->name);
  meta_disk_record (a->md, &now);
  if (disk_hints (o->state, a->name, dopt ? dopt->hint_file : NULL, now.identity,
                  meta_count (a->md, META_PRESENT) == 0, trace, sizeof trace,
                  &hints, &nr_hints) == -1)
    return -1;
  struct cor_disk_config dcfg = {
    .name = a->name, .overlay_path = overlay, .md = a->md, .remote = a->r, .format = a->fmt,
    .hold_ns = a->hold_s * NS_PER_SEC,
    .stream = dopt && dopt->stream >= 0 ? dopt->stream : o->stream,
    .rate = dopt && dopt->have_rate ? dopt->rate : o->rate,
    .release_parent = !dopt || dopt->release_parent != 0,
    .readahead = o->readahead,
    .trace_path = trace, .hints = hints, .nr_hints = nr_hints,
  };
  r = cor_disk_add (e, &dcfg, &d);
  free (hints);
  return r;
}

/* Attach one disk: its record reconciled with the options (dopt, NULL
 * for a recorded disk not given this time), its parent opened and
 * checked, and the disk added to the engine (the steps atop this file).
 * 0 or -1 (logged), with nothing left open. */
static int
attach_disk (struct mount_opts *o, struct meta *m, struct cor_engine *e,
             const char *name, const struct disk_opts *dopt, uint64_t hold_s)
{
  struct attach a = { .o = o, .m = m, .name = name, .dopt = dopt, .hold_s = hold_s };
  int ret = -1;

  a.recorded = meta_record_get (m, name, &a.rec) == 0;
  if (!a.recorded && errno != ENOENT) {
    log_error ("daemon: disk %s: reading its record: %m", name);
    return -1;
  }
  if (reconcile_modes (&a) == -1 || reconcile_given (&a) == -1 ||
      reconcile_format (&a) == -1)
    goto out;
  remote_config_for (&a);
  if (choose_pinned_identity (&a) == -1 || sources_for (&a) == -1 || open_parent (&a) == -1)
    goto out;
  if ((a.recorded ? attach_recorded (&a) : create_record (&a)) == -1 ||
      check_mirror_parent (&a) == -1 || add_to_engine (&a, e) == -1)
    goto out;
  ret = 0;
 out:
  if (ret == -1) {
    if (a.md)
      meta_disk_close (a.md, true);
    format_close (a.fmt);
    remote_close (a.r);
  }
  free (a.redacted);
  disk_sources_free (&a.ds);
  return ret;
}

/* Attach the disks recorded (names, NULL-terminated) and then the new
 * ones given.  0 or -1 (logged). */
static int
attach_each (struct mount_opts *o, struct meta *m, struct cor_engine *e, char **names,
             uint64_t hold_s)
{
  for (size_t i = 0; names[i]; i++) {
    ssize_t k = find_opt_disk (o, names[i]);
    if (attach_disk (o, m, e, names[i], k >= 0 ? &o->disks[k] : NULL, hold_s) == -1)
      return -1;
  }
  for (size_t i = 0; i < o->nr_disks; i++)
    if (!cor_disk_find (e, o->disks[i].name) &&
        attach_disk (o, m, e, o->disks[i].name, &o->disks[i], hold_s) == -1)
      return -1;
  return 0;
}

/* Supervised, after a worker crash: the dead worker's order (its slots'),
 * so that inode numbers (2 + the engine's index) mean the same disks to
 * the kernel; disks without a slot after, in their order.  A stable
 * insertion sort: a handful of names. */
static void
order_as_before (struct meta *m, char **names)
{
  for (size_t i = 1; names[0] && names[i]; i++) {
    char *n = names[i];
    unsigned key = (unsigned) meta_shared_slot (m, n);     /* -1: last */
    size_t j = i;
    while (j > 0 && (unsigned) meta_shared_slot (m, names[j - 1]) > key) {
      names[j] = names[j - 1];
      j--;
    }
    names[j] = n;
  }
}

/* (daemon-internal.h) */
int
attach_disks (struct mount_opts *o, struct meta *m, struct cor_engine *e, uint64_t hold_s)
{
  char **names = NULL;
  int r;

  /* Disks recorded before come back; new ones are added. */
  if (meta_disk_names (m, &names) == -1) {
    log_error ("daemon: listing disks: %m");
    return -1;
  }
  order_as_before (m, names);
  r = attach_each (o, m, e, names, hold_s);
  for (size_t i = 0; names[i]; i++)
    free (names[i]);
  free (names);
  if (r == -1)
    return -1;
  for (size_t i = 0; i < o->nr_repin; i++)
    if (!cor_disk_find (e, o->repin[i])) {
      log_error ("daemon: --repin %s: no such disk", o->repin[i]);
      return -1;
    }
  if (cor_disk_count (e) == 0) {
    log_error ("daemon: no disks: give --disk NAME=URL (state directory %s has none recorded)",
               o->state);
    return -1;
  }
  return 0;
}
