/* corfs: the source set's pure parts (sources.c), for its unit tests,
 * and what remote.c asks of a set.  Backends never include this. */
#ifndef CORFS_SOURCES_INTERNAL_H
#define CORFS_SOURCES_INTERNAL_H

#include <stddef.h>
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
 * its own pin broke: never read again). */
enum sources_state { SOURCES_UNCHECKED, SOURCES_OK, SOURCES_FAILED, SOURCES_MISMATCH };
const char *sources_state_name (enum sources_state s);

/* The order in which a request tries n sources of states st: into
 * order, returns how many. */
size_t sources_pick_order (const enum sources_state *st, size_t n, size_t *order);

/* For remote.c: a set's number of sources and one's state. */
size_t rsources_count (void *h);
void rsources_info (void *h, size_t i, struct remote_source_info *si);

#endif
