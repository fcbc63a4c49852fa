/* corfs: the block index (the only module that includes <lmdb.h>).
 *
 * One LMDB environment per state directory (STATE/index/) holds, per disk,
 * a record (parent URL without credentials, the parent's size and the
 * disk's (larger once grown), block size, identity,
 * owner state, flags, the file's mode and owner) and chunked bitmaps:
 *
 *   META_PRESENT  the overlay holds the block's data
 *   META_DIRTY    the overlay differs from the parent (only merge clears it)
 *   META_SUSPECT  may differ from the parent after an unclean shutdown
 *   META_CHANGED  written since the current generation's checkpoint
 *
 * The bitmaps live in memory and answer the hot-path questions; changes are
 * queued as "pending chunks" and written to LMDB by one committer in
 * batches (meta_batch_*).  The committer (in src/cor, which owns the
 * overlay fds) must fdatasync every overlay that the batch touches *before*
 * meta_batch_commit(): data before pointer (docs/design.md rules 1 and 2).
 *
 * Unclean shutdown (docs/design.md rule 4): meta_disk_open() marks the disk
 * "open" durably before returning; if it finds the mark already set (the
 * previous daemon died), it first ORs every present block into the
 * current generation's changed map and into the suspect map, in the same
 * commit.  meta_disk_close(.., clean=true) clears the mark.
 *
 * Keys in the "maps" database are 16 bytes, big-endian:
 * disk id (u32), map (u32: type << 24 | generation), chunk number (u64);
 * values are 1024-byte bitmap pages (8192 blocks), below LMDB's overflow
 * threshold.  All-zero pages are deleted rather than stored.
 *
 * Threads: the bitmap functions (meta_test, meta_set, meta_clear,
 * meta_count, meta_next) may be called from any thread without locks
 * (atomic word operations), with any of the caller's locks held.
 * Everything that touches LMDB serialises on an internal mutex; the map
 * is grown on MDB_MAP_FULL under that mutex, when no transaction is
 * active.  That mutex is a leaf: callers may hold their own locks across
 * any meta_* call without deadlock (src/cor holds d->owner_lock or
 * d->attr_lock), though a call that takes it may wait for an LMDB commit
 * (a sync); meta never calls out with it held (meta_changed_extents
 * calls fn after releasing it).  The thread model atop each of
 * src/meta's files says which threads call it.
 */
#ifndef CORFS_META_H
#define CORFS_META_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct meta;
struct meta_disk;
struct meta_batch;

enum meta_map { META_PRESENT, META_DIRTY, META_SUSPECT, META_CHANGED, META_NR_MAPS };

/* A disk's owner state (docs/design.md, "Disk states"): the one table of
 * names is meta_state_name's, used by the record, status and messages. */
enum meta_state { META_ACTIVE, META_INCOMING, META_ACTIVATING, META_HANDED_OFF,
                  META_STANDALONE, META_NR_STATES };

/* "active", "incoming", "activating", "handed-off", "standalone";
 * "unknown" for anything else. */
const char *meta_state_name (enum meta_state s);

#define META_URL_MAX 2048
#define META_ID_MAX 512
#define META_SOURCES_MAX 4096
#define META_SOURCE_IDS_MAX 8192

/* A disk's durable record.  Plain data: copy freely. */
/* The most blocks a disk may have: the index keeps META_NR_MAPS bitmaps
 * of one bit per block in memory, 512 MiB at this many (4 PiB with 4 MiB
 * blocks). */
#define META_MAX_BLOCKS (1ULL << 30)

struct meta_record;

/* Whether the record's parent identity binds a mount: the one place that
 * says when the parent may move under corfs.  It may not, except while
 * corfs itself moves it (a merge writing into it, an active mirror) or
 * while the source still runs (incoming, activating): those states are
 * pinned afresh when they end. */
bool meta_identity_binding (const struct meta_record *rec);

struct meta_record {
  char url[META_URL_MAX];        /* parent URL, credentials stripped */
  char identity[META_ID_MAX];    /* pinned parent identity (remote's string) */
  uint64_t size;                 /* the parent's size in bytes (pinned with the identity) */
  /* The disk's size in bytes: size, or more once grown (meta_disk_grow).
   * 0 in an init record means size; a record stored before disks could
   * grow (no disk_size key) reads as size. */
  uint64_t disk_size;
  uint32_t block_size;           /* bytes, power of two */
  enum meta_state state;
  uint64_t epoch;
  bool mirror;                   /* write mode: false = writeback */
  bool parent_owned;
  bool complete;                 /* every block present */
  uint32_t generation;           /* current change generation, from 1 */
  uint32_t widened_generation;   /* last generation widened by an unclean shutdown, or 0 */
  bool merging;                  /* a merge may have modified the parent (rule 9/11) */
  /* The disk file's permission bits (0777 at most) and owner, as chmod
   * and chown on the mount set them.  false (as in records written
   * before these fields existed) means the default: mode 0600, owned
   * by the daemon's user and group. */
  bool has_mode, has_uid, has_gid;
  uint32_t mode, uid, gid;
  /* The sources after the first (url) of a disk with several, in order,
   * credentials stripped, separated by single spaces; "" (as in records
   * written before) for a disk with one. */
  char sources[META_SOURCES_MAX];
  /* Each source's own pin (its remote's identity: ETag, file identity,
   * NBD sample hash) in the order url, sources, separated by tabs ("" for
   * one not pinned yet); "" for a disk with one source.  A later mount
   * holds each source to its pin, as a single parent is held to identity
   * (the set's fingerprint alone samples too little of the image). */
  char source_ids[META_SOURCE_IDS_MAX];
  /* The parent's image format (src/format's name, "qcow2"); "" (as in
   * records written before this field existed) means raw.  Stored only
   * when not raw.  Never probed: the record is what presents a disk. */
  char format[16];
  /* The identities of the parent image's backing files (format.h's
   * format_chain_identity); "" when it has none.  Stored when set. */
  char backing_identity[META_ID_MAX];
};

/* Open (creating if needed) the index in directory dir (STATE/index).
 * Runs mdb_reader_check.  Returns 0, or -1 with errno set and the detail
 * logged.  Call from the daemon after it has forked. */
int meta_open (const char *dir, struct meta **mp);

/* Close the environment.  All disks must be closed first. */
void meta_close (struct meta *m);

/* Supervised (`corfs mount --supervise`): keep every disk opened from now
 * on in the supervisor's memfd fd (common/survive.h), adopting what a dead
 * worker left there (src/meta/shared.c).  Before any disk is opened.
 * 0 or -1 (logged). */
int meta_share (struct meta *m, int fd);
void meta_unshare (struct meta *m);

/* Rule 7 across a worker restart: record that d's overlay sync failed
 * (before anything is answered after it), and whether a dead worker had
 * recorded that.  No-ops (false) unsupervised. */
void meta_disk_set_failed (struct meta_disk *d);

/* The slot a dead worker left for disk name in the supervisor's state,
 * or -1 (none, or unsupervised).  Slots are taken in the order disks are
 * opened, so a new worker attaching in slot order gives every disk the
 * index, and so the inode number, it had. */
int meta_shared_slot (struct meta *m, const char *name);
bool meta_disk_was_failed (struct meta_disk *d);

/* Read a disk's record.  0, or -1 with errno ENOENT if there is no such
 * disk, other errno for LMDB errors. */
int meta_record_get (struct meta *m, const char *name, struct meta_record *rec);

/* List recorded disk names.  *names is a NULL-terminated array; free each
 * string and the array.  0 or -1 with errno. */
int meta_disk_names (struct meta *m, char ***names);

/* Open a disk: create its record from *init if it does not exist (init
 * may be NULL to require an existing disk: ENOENT), load its bitmaps,
 * and mark it open (widening the maps first if the last daemon died
 * without closing it: *widened is set then).  The record is durable on
 * return.  0, or -1 with errno: ENOENT, EINVAL (block size not a power
 * of two, or a newline in url or identity: records are stored as lines),
 * ENAMETOOLONG (name over 64 bytes), EBUSY (already open in this
 * process), or an LMDB error mapped to errno. */
int meta_disk_open (struct meta *m, const char *name,
                    const struct meta_record *init,
                    struct meta_disk **dp, bool *widened);

/* Close a disk.  Must not run while a batch is between meta_batch_begin
 * and meta_batch_commit (the batch points at the disk): close disks only
 * from the committer's thread or after it has stopped.  With clean, first commit any pending bitmap chunks and
 * clear the open mark: the caller must have fdatasync'd the overlay after
 * its last write.  Always frees d.  0, or -1 with errno (d is freed anyway;
 * the mark stays set and the next open widens). */
int meta_disk_close (struct meta_disk *d, bool clean);

/* At an exit that leaves a thread running (cor_engine_finish): what
 * meta_disk_close (d, true) commits, without freeing or unlisting d,
 * which that thread may still hold.  0, or -1 with errno. */
int meta_disk_seal (struct meta_disk *d);

/* The disk's name (lives as long as d). */
const char *meta_disk_name (const struct meta_disk *d);

/* Copy of the record as last committed or updated. */
void meta_disk_record (struct meta_disk *d, struct meta_record *rec);

/* Durably replace the record (one LMDB commit), except generation and
 * widened_generation, which only meta_checkpoint and meta_disk_open
 * change, disk_size, which only meta_disk_grow changes, and mode, uid and gid (with their has_ flags), which only
 * meta_disk_set_attr changes: those are kept from the in-memory record,
 * so a copy read before a checkpoint or a chmod does not roll them back.
 * Callers that read, modify and write the record must serialise with
 * each other (src/cor's cor_update_record does).  0 or -1 with errno. */
int meta_disk_update (struct meta_disk *d, const struct meta_record *rec);

/* Durably set the disk file's mode (mode & 0777), owner and group, each
 * only if >= 0, in one LMDB commit under meta's own lock, leaving every
 * other field as it is: callers need no other lock (chmod must not wait
 * for a state change).  *out (if not NULL) gets the record as it is after
 * the call, changed or not.  0 or -1 with errno. */
int meta_disk_set_attr (struct meta_disk *d, int64_t mode, int64_t uid, int64_t gid,
                        struct meta_record *out);

/* Grow the disk to new_size bytes, durably, in one commit: the record's
 * disk_size, and the blocks past the old end marked present (they read
 * as zeros: the caller has extended the overlay first), dirty (the
 * parent has no such blocks) and changed.  Pages of the maps that the
 * commit writes are built from what is stored, so bits of the old blocks
 * that no batch has committed yet (their data maybe not synced) are not
 * made durable by it.  The caller keeps every writer out, has committed
 * every pending chunk since (a flush: no batch taken before the grow may
 * commit after it), and serialises
 * with meta_disk_update (src/cor's owner_lock).  *out (if not NULL) gets
 * the record after the call.  0, or -1 with errno: EINVAL (new_size
 * below the disk's size), EFBIG (more than META_MAX_BLOCKS blocks, or
 * more than the maps reserved at open), or an LMDB error.  Growing to
 * the same size is a no-op (0). */
int meta_disk_grow (struct meta_disk *d, uint64_t new_size, struct meta_record *out);

/* Number of blocks (disk_size rounded up to the block size).  Grows with
 * meta_disk_grow; any thread. */
uint64_t meta_nr_blocks (const struct meta_disk *d);

/* Bitmap operations, in memory.  set/clear queue the chunks for the next
 * batch.  blk + nr must not exceed meta_nr_blocks(). */
bool meta_test (struct meta_disk *d, enum meta_map map, uint64_t blk);
void meta_set (struct meta_disk *d, enum meta_map map, uint64_t blk, uint64_t nr);
void meta_clear (struct meta_disk *d, enum meta_map map, uint64_t blk, uint64_t nr);
uint64_t meta_count (struct meta_disk *d, enum meta_map map);
/* Blocks set in map a or map b (a scan of both maps: not for hot paths). */
uint64_t meta_count_union (struct meta_disk *d, enum meta_map a, enum meta_map b);

/* Find the first block >= from whose bit equals value; returns
 * meta_nr_blocks() if there is none. */
uint64_t meta_next (struct meta_disk *d, enum meta_map map, bool value, uint64_t from);

/* Group commit, in three steps (the caller is the single committer):
 *   1. b = meta_batch_begin (m): take every disk's pending chunks.
 *   2. for each disk with meta_batch_has (b, d): fdatasync its overlay;
 *      on failure meta_batch_drop (b, d) so none of its bits are committed.
 *   3. meta_batch_commit (b): one LMDB transaction; frees b.  On failure
 *      the chunks are queued again and -1 is returned with errno.
 * meta_batch_begin returns NULL with errno ENOMEM on allocation failure. */
struct meta_batch *meta_batch_begin (struct meta *m);
bool meta_batch_has (const struct meta_batch *b, const struct meta_disk *d);
void meta_batch_drop (struct meta_batch *b, struct meta_disk *d);
int meta_batch_commit (struct meta_batch *b);

/* Start a new change generation (docs/design.md rule 4): in one commit, write
 * the current generation's pending changed chunks under its own number,
 * bump rec.generation, and start an empty changed map.  The caller must
 * keep every writer out meanwhile (cor_checkpoint claims the whole disk).
 * Returns the new generation, or 0 with errno. */
uint32_t meta_checkpoint (struct meta_disk *d);

/* Call fn for each maximal extent of blocks changed in any generation
 * >= since (the union of their changed maps).  *widened says whether an
 * unclean shutdown widened one of them (a superset).  0, or -1 with errno
 * (EINVAL: since is 0 or above the current generation). */
int meta_changed_extents (struct meta_disk *d, uint32_t since, bool *widened,
                          int (*fn) (void *opaque, uint64_t first_blk, uint64_t nr_blks),
                          void *opaque);

/* Testing hook: the LMDB map size in bytes (it grows on MDB_MAP_FULL). */
size_t meta_map_size (struct meta *m);

#endif
