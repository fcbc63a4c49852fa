/* corfs: the source set's pure parts (sources.c), for its unit tests,
 * and what remote.c asks of a set.  Backends never include this. */
#ifndef CORFS_SOURCES_INTERNAL_H
#define CORFS_SOURCES_INTERNAL_H

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

#include "remote/remote.h"

/* Samples of the content fingerprint: the first block, the last, and
 * the rest at offsets drawn from the seed; SFP_BLOCK bytes each (less
 * for a short last block). */
#define SFP_SAMPLES 34
#define SFP_BLOCK 4096

/* Sample i (< SFP_SAMPLES) of an image of size bytes (> 0). */
void sfp_sample (uint64_t seed, uint64_t size, unsigned i, uint64_t *offset, size_t *len);
/* The hash: sfp_start, then sfp_mix over each sample's bytes in order. */
uint64_t sfp_start (uint64_t seed, uint64_t size);
uint64_t sfp_mix (uint64_t h, const void *data, size_t len);
/* The set's identity string "sources:size=N,seed=S,fp=F" and back
 * (0, or -1 when id is not one). */
int sfp_format (char *id, size_t len, uint64_t size, uint64_t seed, uint64_t fp);
int sfp_parse (const char *id, uint64_t *size, uint64_t *seed, uint64_t *fp);

/* A source's state: not yet checked against the fingerprint, serving,
 * failed (retried in the background), refused (a different image, or
 * its own pin broke: never read again), removed (corfs sources
 * --remove). */
enum sources_state { SOURCES_UNCHECKED, SOURCES_OK, SOURCES_FAILED, SOURCES_MISMATCH,
                     SOURCES_REMOVED };
const char *sources_state_name (enum sources_state s);

/* The order in which a request tries n sources of states st: into
 * order, returns how many. */
size_t sources_pick_order (const enum sources_state *st, size_t n, size_t *order);
/* Policy spread: rotate the first `healthy` entries of order (the ok
 * ones, first in order) by turn, leaving the rest in place. */
void sources_rotate (size_t *order, size_t healthy, unsigned turn);

/* ---- the set's state (sources.c, sources-admin.c) ---- */

#include <pthread.h>

/* Slots for sources: those given, and those added at run time (a removed
 * source keeps its slot until the set is closed: a request may still be
 * using it). */
#define SOURCES_CAP 16

struct src {
  struct remote *r;
  enum sources_state state;
  bool verified;                /* matched the fingerprint since it last failed */
  bool probed;                  /* the prober checked it once, unchecked */
  bool pin_recorded;            /* its own pin is in the disk's record (it
                                   was given one, or "source-pinned" told) */
  uint64_t next_probe_ns, backoff_ns;
  uint64_t reads, bytes, errors, latency_ns;  /* latency: the last piece served */
  char why[256];                /* why it failed or was refused */
  pthread_mutex_t check;        /* held across a verification */
};

struct rsources {
  struct remote *outer;
  char *disk;
  pthread_mutex_t lock;         /* see the thread model */
  pthread_mutex_t fp_lock;      /* held while the fingerprint is taken */
  pthread_cond_t wake;          /* the prober's */
  struct src *v;                /* SOURCES_CAP slots */
  size_t n;                     /* slots in use (atomic: grows only, under
                                   lock, once the slot is ready) */
  bool first_only;              /* the fingerprint may only come from
                                   source 0 (its own pin holds it to the
                                   image recorded before the set) */
  uint64_t connect_timeout_ns, request_timeout_ns;  /* for sources added */
  bool spread;                  /* policy spread (remote_config) */
  unsigned turn;                /* atomic: spread's round-robin counter */
  uint64_t seed, fp, size;
  bool have_fp;
  uint64_t timeout_ns;
  /* remote_set_source_notify's (notify atomic: set once, maybe while
   * the prober runs) */
  void (*notify) (void *opaque, const char *event, const char *url, const char *why);
  void *notify_opaque;
  pthread_t prober;
  bool prober_started, stop;
  struct src *adding;           /* the slot an add is checking, or NULL
                                   (cancelled with the others) */
  bool cancelling;              /* rsources_cancel is cancelling adding */
  bool ids_dirty;               /* a source was pinned afresh: the prober
                                   tells notify "source-pinned" */
};

/* Check s against the set's size and fingerprint (which must be taken),
 * once per failure: ok, mismatch or failed.  0 if it may serve, else -1. */
int sources_verify (struct rsources *set, struct src *s, uint64_t deadline_ns);

/* For remote.c: a set's number of sources and one's state. */
size_t rsources_count (void *h);
void rsources_info (void *h, size_t i, struct remote_source_info *si);
int rsources_add (void *h, const struct remote_config *src, uint64_t deadline_ns, char *why,
                  size_t len);
int rsources_remove (void *h, const char *url, char *why, size_t len);
void rsources_set_notify (void *h, void (*fn) (void *, const char *, const char *, const char *),
                          void *opaque);
/* Tell the notify function (if any) about s; no lock held. */
void sources_notify (struct rsources *set, struct src *s, const char *event, const char *why);

#endif
