/* Unit tests: an interrupted activation (record "activating", as a crash
 * between activation's two records leaves it) found at mount, on a real
 * engine over a file:// parent in a scratch directory (src/cor/engine.c
 * cor_disk_add, pin_parent, cor_activate):
 *  - a parent that cannot be pinned then (missing, or of another size) puts
 *    the disk back to incoming, durably, with its epoch, instead of failing
 *    the disk (before: cor_disk_add failed, at every mount);
 *  - `activate` with that same epoch then finishes it once the parent is
 *    right (active, identity recorded), and still fails on the wrong one;
 *  - a reachable parent of the right size finishes it at once. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "cor/cor.h"
#include "meta/meta.h"
#include "remote/remote.h"

#define KiB 1024ULL
#define SIZE (1024 * KiB)
#define BS (64 * KiB)
#define EPOCH 3

static char dir[] = "/tmp/corfs-unit-activating.XXXXXX";
static char parent[128], aside[128], url[160], index_dir[128], overlay[128];
static struct meta *m;
static struct meta_disk *md;
static struct cor_engine *e;
static struct remote *r;

static void
write_parent (const char *path, size_t size)
{
  int fd = open (path, O_RDWR | O_CREAT | O_TRUNC, 0600);
  cr_assert_geq (fd, 0);
  cr_assert_eq (ftruncate (fd, size), 0);
  cr_assert_eq (pwrite (fd, "parent", 6, 0), 6);
  close (fd);
}

static void
setup (void)
{
  struct meta_record init;

  cr_assert_not_null (mkdtemp (dir));
  snprintf (parent, sizeof parent, "%s/parent.img", dir);
  snprintf (aside, sizeof aside, "%s/parent.aside", dir);
  snprintf (url, sizeof url, "file://%s", parent);
  snprintf (index_dir, sizeof index_dir, "%s/index", dir);
  snprintf (overlay, sizeof overlay, "%s/d.overlay", dir);
  write_parent (parent, SIZE);
  cr_assert_eq (mkdir (index_dir, 0700), 0);
  cr_assert_eq (meta_open (index_dir, &m), 0);

  struct remote_config rcfg = { .url = url, .disk = "d", .writable = false,
                                .connect_timeout_ns = NS_PER_SEC,
                                .request_timeout_ns = NS_PER_SEC };
  cr_assert_eq (remote_open (&rcfg, &r), 0);
  memset (&init, 0, sizeof init);
  snprintf (init.url, sizeof init.url, "%s", url);
  init.size = SIZE;
  init.block_size = BS;
  init.state = META_ACTIVATING;
  init.epoch = EPOCH;
  init.generation = 1;
  cr_assert_eq (meta_disk_open (m, "d", &init, &md, NULL), 0);
  cr_assert_eq (cor_engine_new (m, &e), 0);
}

static struct cor_disk *
add_disk (void)
{
  struct cor_disk *d = NULL;
  struct cor_disk_config cfg = { .name = "d", .overlay_path = overlay, .md = md,
                                 .remote = r, .hold_ns = NS_PER_SEC,
                                 .stream = COR_STREAM_OFF };
  cr_assert_eq (cor_disk_add (e, &cfg, &d), 0,
                "an interrupted activation whose parent cannot be pinned failed the disk");
  cr_assert_eq (cor_engine_start (e), 0);
  return d;
}

static int
remove_one (const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
  return remove (path) == -1 ? -1 : 0;
}

static void
teardown (void)
{
  cor_engine_quiesce (e);
  cor_engine_free (e);
  meta_close (m);
  nftw (dir, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

TestSuite (engine_activating, .init = setup, .fini = teardown);

static void
expect_state (int state, const char *why)
{
  struct meta_record rec;
  meta_disk_record (md, &rec);
  cr_assert_eq ((int) rec.state, state, "%s: state %d", why, (int) rec.state);
  cr_assert_eq (rec.epoch, EPOCH, "%s: epoch %llu", why, (unsigned long long) rec.epoch);
}

Test (engine_activating, missing_parent_back_to_incoming)
{
  char errbuf[1024] = "";

  cr_assert_eq (rename (parent, aside), 0);
  struct cor_disk *d = add_disk ();
  expect_state (META_INCOMING, "after a mount that could not pin the parent");
  cr_assert_eq (rename (aside, parent), 0);
  cr_assert_eq (cor_activate (d, EPOCH, true, errbuf, sizeof errbuf), 0,
                "activate with the same epoch: %s", errbuf);
  expect_state (META_ACTIVE, "after activate");
  struct meta_record rec;
  meta_disk_record (md, &rec);
  cr_assert_neq (rec.identity[0], '\0', "no identity recorded");
}

Test (engine_activating, other_size_back_to_incoming)
{
  char errbuf[1024] = "";

  write_parent (parent, SIZE + BS);
  struct cor_disk *d = add_disk ();
  expect_state (META_INCOMING, "after a mount over a parent of another size");
  cr_assert_eq (cor_activate (d, EPOCH, true, errbuf, sizeof errbuf), -1,
                "activate over a parent of another size succeeded");
  expect_state (META_INCOMING, "after a failed activate");
  write_parent (parent, SIZE);
  errbuf[0] = '\0';
  cr_assert_eq (cor_activate (d, EPOCH, true, errbuf, sizeof errbuf), 0,
                "activate once the parent is right: %s", errbuf);
  expect_state (META_ACTIVE, "after activate");
}

Test (engine_activating, good_parent_finished_at_mount)
{
  add_disk ();
  expect_state (META_ACTIVE, "after a mount over the right parent");
}
