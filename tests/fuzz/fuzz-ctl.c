/* libFuzzer harness: the control socket's requests (src/ctl), each
 * input split into lines and answered one by one (ctl_answer_line) by a
 * real engine serving three small disks over file:// parents in a
 * scratch directory ($TMPDIR): "a" (writeback, active, some blocks
 * present and dirty), "m" (mirror, parent owned) and "i" (incoming).
 * status, metrics, stream, checkpoint, dirty, activate, handoff, reclaim,
 * pivot and abort run for real.  The job starters (merge, flatten with or
 * without --to) are replaced by a recorder (this file defines src/merge's
 * interface and the harness is linked without src/merge): a job would
 * write files named by the request, and a fuzzer running as root must
 * never truncate a host file.  The engine is rebuilt from scratch every
 * RESET_EVERY inputs, so that the owner states and epochs a run reaches
 * do not stay frozen for the rest of it.
 *
 * Checked for every line: a reply is built (the server drops a client it
 * cannot answer); it is a JSON object with a boolean "ok", and an error
 * has an "error" string; the request's "id", if any, comes back.
 * Leaks are checked at exit, after the engine is torn down (scripts/fuzz
 * runs this harness with -detect_leaks=0): between two inputs, the
 * engine's own threads may hold buffers that LeakSanitizer cannot see. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/jsonl.h"
#include "common/log.h"
#include "common/util.h"
#include "cor/cor.h"
#include "ctl/ctl-internal.h"
#include "merge/merge.h"
#include "meta/meta.h"
#include "remote/remote.h"

#define CHECK(cond) \
  do { if (!(cond)) { fprintf (stderr, "fuzz-ctl: check failed: %s\n", #cond); abort (); } \
  } while (0)

#ifndef RESET_EVERY
#define RESET_EVERY 500
#endif
#define DISK_SIZE (256 * 1024)
#define MAX_LINES 16

/* ---- the recorder standing in for src/merge ---- */

struct merge {
  struct cor_disk *d;           /* the last job's disk */
  const char *kind;
  char to[256];
  unsigned long calls;
};

struct merge *
merge_new (const char *state_dir)
{
  CHECK (state_dir);
  return calloc (1, sizeof (struct merge));
}

void
merge_free (struct merge *mg)
{
  free (mg);
}

int
merge_control (struct merge *mg, struct cor_disk *d, const char *action,
               bool parent_owned, uint64_t rate, char *errbuf, size_t len)
{
  static const char *actions[] = { "start", "pause", "resume", "cancel", "rate", NULL };

  CHECK (mg && d && action && errbuf && len > 0);
  mg->calls++;
  for (int i = 0; actions[i]; i++)
    if (!strcmp (action, actions[i])) {
      mg->d = d;
      mg->kind = "merge";
      return 0;
    }
  snprintf (errbuf, len, "disk %s: cannot %s the merge", cor_disk_name (d), action);
  return -1;
}

int
merge_flatten (struct merge *mg, struct cor_disk *d, const char *to, char *errbuf, size_t len)
{
  CHECK (mg && d && errbuf && len > 0);
  CHECK (!to || to[0] == '/');          /* ctl refuses a relative path */
  mg->calls++;
  mg->d = d;
  mg->kind = to ? "copy" : "flatten";
  snprintf (mg->to, sizeof mg->to, "%s", to ? to : "");
  return 0;
}

/* abort runs for real, without the job around it. */
int
merge_abort (struct merge *mg, struct cor_disk *d, char *errbuf, size_t len)
{
  CHECK (mg && d && errbuf && len > 0);
  return cor_abort (d, errbuf, len);
}

void
merge_status (struct merge *mg, struct cor_disk *d, struct merge_status *st)
{
  memset (st, 0, sizeof *st);
  st->kind = "none";
  st->state = "";
  if (mg->d == d && mg->kind) {
    st->kind = mg->kind;
    st->state = "done";
    st->done_bytes = st->total_bytes = cor_disk_size (d);
    snprintf (st->last_error, sizeof st->last_error, "%s", mg->to);
  }
}

/* ---- the engine ---- */

static char scratch[256];
static struct meta *m;
static struct cor_engine *e;
static struct merge *mg;
static unsigned long inputs;

static void
die (const char *what)
{
  fprintf (stderr, "fuzz-ctl: setting up: %s: %s\n", what, strerror (errno));
  exit (1);
}

static void
make_parent (const char *path)
{
  char buf[4096];
  int fd = open (path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

  if (fd == -1)
    die (path);
  for (int i = 0; i < DISK_SIZE / (int) sizeof buf; i += 3) {  /* data, holes between */
    memset (buf, 'a' + i % 26, sizeof buf);
    if (pwrite (fd, buf, sizeof buf, (off_t) i * sizeof buf) != (ssize_t) sizeof buf)
      die (path);
  }
  if (ftruncate (fd, DISK_SIZE) == -1)
    die (path);
  close (fd);
}

static void
add_disk (const char *name, enum meta_state state, bool mirror)
{
  char parent[320], url[340], overlay[320];
  struct remote_config rcfg = { .url = url, .disk = name, .writable = mirror,
                                .connect_timeout_ns = NS_PER_SEC,
                                .request_timeout_ns = NS_PER_SEC };
  struct meta_record init;
  struct meta_disk *md;
  struct remote *r;
  struct cor_disk *d;
  int err;

  snprintf (parent, sizeof parent, "%s/%s.img", scratch, name);
  snprintf (url, sizeof url, "file://%s", parent);
  snprintf (overlay, sizeof overlay, "%s/%s.overlay", scratch, name);
  make_parent (parent);
  if (remote_open (&rcfg, &r) == -1)
    die ("remote_open");
  memset (&init, 0, sizeof init);
  snprintf (init.url, sizeof init.url, "%s", url);
  if (remote_get_size (r, now_ns () + NS_PER_SEC, &err) != DISK_SIZE)
    die ("remote_get_size");
  remote_identity (r, init.identity, sizeof init.identity);
  init.size = DISK_SIZE;
  init.block_size = 4096;
  init.state = state;
  init.parent_owned = mirror;
  init.mirror = mirror;
  init.generation = 1;
  if (mirror && remote_make_writable (r, now_ns () + NS_PER_SEC, &err) == -1)
    die ("remote_make_writable");
  if (meta_disk_open (m, name, &init, &md, NULL) == -1)
    die ("meta_disk_open");
  struct cor_disk_config dcfg = {
    .name = name, .overlay_path = overlay, .md = md, .remote = r,
    .hold_ns = 2 * NS_PER_SEC, .stream = COR_STREAM_OFF,
  };
  if (cor_disk_add (e, &dcfg, &d) == -1)
    die ("cor_disk_add");
}

static void
engine_up (void)
{
  char dir[300], buf[8192];
  struct cor_disk *a;
  int err;

  snprintf (dir, sizeof dir, "%s/index", scratch);
  if (meta_open (dir, &m) == -1)
    die ("meta_open");
  if (cor_engine_new (m, &e) == -1)
    die ("cor_engine_new");
  add_disk ("a", META_ACTIVE, false);
  add_disk ("m", META_ACTIVE, true);
  add_disk ("i", META_INCOMING, false);
  if (cor_engine_start (e) == -1 || !(mg = merge_new (scratch)))
    die ("cor_engine_start");
  /* Some present, dirty and changed blocks for status, dirty and maps. */
  a = cor_disk_find (e, "a");
  memset (buf, 'w', sizeof buf);
  if (cor_read (a, buf, sizeof buf, 3 * 4096, &err) != (ssize_t) sizeof buf ||
      cor_write (a, buf, 100, 40 * 4096 + 7, &err) == -1 ||
      cor_write (cor_disk_find (e, "m"), buf, sizeof buf, 0, &err) == -1)
    die ("priming the disks");
}

static int
rm_entry (const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
  return remove (path);
}

static void
engine_down (void)
{
  merge_free (mg);
  cor_engine_free (e);
  meta_close (m);
  mg = NULL;
  e = NULL;
  m = NULL;
  /* Start the next engine from nothing: no index, overlays or parents. */
  nftw (scratch, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  if (mkdir (scratch, 0700) == -1)
    die (scratch);
}

static void
at_exit (void)
{
  if (e)
    engine_down ();
  rmdir (scratch);
}

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  const char *tmp = getenv ("TMPDIR");

  log_level = LOG_LVL_ERROR;
  snprintf (scratch, sizeof scratch, "%s/corfs-fuzz-ctl.XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp (scratch))
    die ("mkdtemp");
  engine_up ();
  atexit (at_exit);
  return 0;
}

static void
check_reply (const char *line, size_t len, const char *text)
{
  json_t *req = json_loadb (line, len, 0, NULL), *reply, *ok, *id;

  CHECK (text != NULL);
  reply = json_loads (text, 0, NULL);
  CHECK (json_is_object (reply));
  ok = json_object_get (reply, "ok");
  CHECK (json_is_boolean (ok));
  if (json_is_false (ok))
    CHECK (json_is_string (json_object_get (reply, "error")));
  id = json_object_get (req, "id");
  if (json_is_object (req) && id)
    CHECK (json_equal (id, json_object_get (reply, "id")));
  json_decref (reply);
  json_decref (req);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  const char *p = (const char *) data, *end = p + size;
  bool events = false;

  if (inputs++ % RESET_EVERY == RESET_EVERY - 1) {
    engine_down ();
    engine_up ();
  }
  for (int n = 0; p < end && n < MAX_LINES; n++) {
    const char *nl = memchr (p, '\n', end - p);
    size_t len = nl ? (size_t) (nl - p) : (size_t) (end - p);
    if (len > 0) {                      /* the server skips empty lines */
      char *reply = ctl_answer_line (e, mg, p, len, &events);
      check_reply (p, len, reply);
      free (reply);
    }
    p += len + (nl != NULL);
  }
  return 0;
}
