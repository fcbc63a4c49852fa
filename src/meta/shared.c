/* corfs: the maps in memory that outlives the worker (`corfs mount
 * --supervise`; layout in common/survive.h).
 *
 * Unsupervised, a disk's maps are private anonymous memory (maps.c).
 * Supervised, meta_share gives the index the supervisor's memfd, and
 * every disk opened then gets a slot there: its four maps move into a
 * MAP_SHARED mapping of the slot once the open has committed.  When the
 * worker dies, the supervisor's memfd keeps every bit the worker set or
 * cleared, committed or not; the next worker finds the slot by the disk's
 * name and index id and adopts it.
 *
 * Adopting (read-your-writes across a worker crash): the bits loaded from
 * LMDB are ORed into the slot's, so the maps are a superset of both, and
 * every chunk is marked pending.  The adopted bits reach LMDB only through
 * the committer, which fdatasyncs the overlay of every disk in a batch
 * before committing it: the dead worker's overlay writes are in the page
 * cache (which survives the process) and become durable before any
 * pointer to them (rule 1).  The open transaction itself commits only
 * what LMDB had (and its widening), never the adopted bits.
 *
 * Rule 7: an overlay sync failure is recorded in the slot before the
 * worker answers anything after it (cor_disk_fail), because the next
 * worker's descriptors would not see the error again (errseq).
 *
 * A slot is released (and its memory punched) only by a clean close: a
 * worker that dies keeps it for the next one.
 *
 * Notes on the thread model: meta_share runs on the main thread before
 * any disk is opened; adopt and release run with m->lock held (disk.c);
 * the failed flag is a byte written and read with atomics from any
 * thread.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <lmdb.h>

#include "common/log.h"
#include "common/survive.h"
#include "meta/meta-internal.h"

_Static_assert (META_MAX_BLOCKS / 8 == SURVIVE_MAP_BYTES, "a slot map holds META_MAX_BLOCKS");
_Static_assert (META_NR_MAPS * SURVIVE_MAP_BYTES == SURVIVE_SLOT_BYTES, "four maps per slot");
_Static_assert (SURVIVE_SLOTS_OFF + SURVIVE_NR_SLOTS * sizeof (struct survive_slot)
                <= SURVIVE_DATA_OFF, "the slot table fits");

int
meta_share (struct meta *m, int fd)
{
  void *p = mmap (NULL, SURVIVE_DATA_OFF, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);

  if (p == MAP_FAILED) {
    log_error ("meta: mapping the supervisor's state: %m");
    return -1;
  }
  m->shm_fd = fd;
  m->shm_base = p;
  return 0;
}

void
meta_unshare (struct meta *m)
{
  if (m->shm_base)
    munmap (m->shm_base, SURVIVE_DATA_OFF);
  m->shm_base = NULL;
  m->shm_fd = -1;
}

static struct survive_slot *
slot_at (struct meta *m, int i)
{
  return (struct survive_slot *) ((char *) m->shm_base + SURVIVE_SLOTS_OFF) + i;
}

static uint64_t
map_off (int slot, int map)
{
  return SURVIVE_DATA_OFF + slot * SURVIVE_SLOT_BYTES + map * SURVIVE_MAP_BYTES;
}

/* The slot d had in a dead worker (its name), or a free one; *found
 * says which.  -1 if every slot is taken. */
static int
find_slot (struct meta *m, const char *name, bool *found)
{
  int free_slot = -1;

  *found = false;
  for (int i = 0; i < SURVIVE_NR_SLOTS; i++) {
    struct survive_slot *s = slot_at (m, i);
    if (s->in_use && !strcmp (s->name, name)) {
      *found = true;
      return i;
    }
    if (!s->in_use && free_slot == -1)
      free_slot = i;
  }
  return free_slot;
}

/* Move map b into the shared mapping p: adopt ORs the current bits into
 * what p holds and marks every chunk pending; otherwise p (zeroed) gets a
 * copy. */
static void
move_map (struct bitmap *b, uint64_t *p, bool adopt)
{
  uint64_t nw = b->nr_chunks * CHUNK_WORDS;

  if (adopt) {
    for (uint64_t i = 0; i < nw; i++)
      p[i] |= b->words[i];
    for (uint64_t c = 0; c < b->nr_chunks; c++)
      b->pending[c / 64] |= 1ULL << (c % 64);
  }
  else
    memcpy (p, b->words, nw * sizeof *p);
  if (b->mapped_bytes)
    munmap (b->words, b->mapped_bytes);
  else
    free (b->words);
  b->words = p;
  b->mapped_bytes = SURVIVE_MAP_BYTES;
}

/* (meta-internal.h) */
int
meta_shared_adopt (struct meta *m, struct meta_disk *d, bool *adopted)
{
  bool found;
  int i;
  uint64_t *maps[META_NR_MAPS];

  *adopted = false;
  if (!m->shm_base)
    return 0;
  i = find_slot (m, d->name, &found);
  if (i == -1) {
    log_error ("meta: disk %s: no slot left in the supervisor's state (%d disks)",
               d->name, SURVIVE_NR_SLOTS);
    return ENOSPC;
  }
  struct survive_slot *s = slot_at (m, i);
  if (found && s->id != d->id) {
    log_warn ("meta: disk %s: the supervisor's state held another disk of that name; "
              "not adopted", d->name);
    found = false;
  }
  if (!found &&
      fallocate (m->shm_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                 map_off (i, 0), SURVIVE_SLOT_BYTES) == -1)
    return errno;
  for (int map = 0; map < META_NR_MAPS; map++) {
    void *p = mmap (NULL, SURVIVE_MAP_BYTES, PROT_READ | PROT_WRITE,
                    MAP_SHARED | MAP_NORESERVE, m->shm_fd, map_off (i, map));
    if (p == MAP_FAILED) {
      int err = errno;
      while (map-- > 0)
        munmap (maps[map], SURVIVE_MAP_BYTES);
      log_error ("meta: disk %s: mapping its slot: %s", d->name, strerror (err));
      return err;
    }
    maps[map] = p;
  }
  for (int map = 0; map < META_NR_MAPS; map++)
    move_map (&d->maps[map], maps[map], found);
  if (found) {
    meta_bitmap_clamp_tail (d);
    for (int map = 0; map < META_NR_MAPS; map++)
      meta_bitmap_recount (&d->maps[map]);
  }
  snprintf (s->name, sizeof s->name, "%s", d->name);
  s->id = d->id;
  if (!found)
    __atomic_store_n (&s->failed, 0, __ATOMIC_SEQ_CST);
  s->in_use = 1;
  d->slot = i;
  *adopted = found;
  return 0;
}

/* (meta-internal.h) */
void
meta_shared_release (struct meta *m, struct meta_disk *d)
{
  if (!m->shm_base || d->slot < 0)
    return;
  struct survive_slot *s = slot_at (m, d->slot);
  s->in_use = 0;
  s->name[0] = '\0';
  /* The maps are unmapped by the caller; the pages go now. */
  if (fallocate (m->shm_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                 map_off (d->slot, 0), SURVIVE_SLOT_BYTES) == -1)
    log_warn ("meta: disk %s: freeing its slot: %m", d->name);
  d->slot = -1;
}

void
meta_disk_set_failed (struct meta_disk *d)
{
  if (d->m->shm_base && d->slot >= 0)
    __atomic_store_n (&slot_at (d->m, d->slot)->failed, 1, __ATOMIC_SEQ_CST);
}

bool
meta_disk_was_failed (struct meta_disk *d)
{
  return d->m->shm_base && d->slot >= 0 &&
    __atomic_load_n (&slot_at (d->m, d->slot)->failed, __ATOMIC_SEQ_CST);
}

int
meta_shared_slot (struct meta *m, const char *name)
{
  bool found;
  int i;

  if (!m->shm_base)
    return -1;
  i = find_slot (m, name, &found);
  return found ? i : -1;
}
