/* crashtool: workload and checker for the kill -9 crash-consistency test.
 *
 * The test exposes a disk image through a corfs mount, runs "crashtool
 * write" on it, kills the daemon with SIGKILL in the middle, remounts, and
 * runs "crashtool verify".  The writer records in LOG what it is about to do
 * and what the filesystem has promised, so that the checker can tell a
 * legitimate post-crash state from a corrupted one.
 *
 * Usage:
 *   crashtool write FILE LOG SEED [--direct] [--max-ops N] [--seconds S]
 *   crashtool verify FILE LOG PARENT
 *   crashtool stats LOG
 *   crashtool stamp FILE SECTOR ID      (test aid: forge one stamped sector)
 *
 * Without --max-ops or --seconds, "write" runs until an I/O error, which is
 * what the crash test wants: the error is the daemon dying, so it ends the
 * run with exit status 0.  "verify" exits 0 if the file is consistent, 1 if
 * not, 2 on usage or local I/O errors.
 *
 * LOG has one record per line, each appended with a single write(2) to an
 * O_APPEND fd (no fsync: only the daemon gets killed, not the machine):
 *   S <first_id>           a writer session ("write" run) starts
 *   W <id> <sector> <n>    intent, logged BEFORE pwrite of n sectors
 *   A <id>                 fsync/fdatasync succeeded; <id> is the last write
 *                          whose pwrite had returned before the call
 *   E <id>                 the pwrite of write <id> failed (run ends)
 * Ids grow strictly over the whole log, across sessions (a new session
 * starts above the largest id in the log), so a stamp names one write.  A
 * torn final line (no newline) is ignored; "write" truncates it away first.
 *
 * A write is acknowledged if its pwrite did not fail and an A line of the
 * SAME session has an id >= its own.  The session scope matters: a write left
 * unacknowledged by a crash may have been lost, and an fsync in the next
 * session does not bring it back.
 *
 * The rule "verify" checks, for each 4 KiB sector s:
 *   acked(s) = the largest id of an acknowledged write covering s.
 *   If acked(s) exists, s must hold the stamp of acked(s) or of any write
 *   covering s with a larger id (acknowledged or not, failed or not: it may
 *   have reached the overlay before the crash).  Otherwise s must hold
 *   PARENT's content or the stamp of any write covering s.
 * A stamp is a whole sector: "CRASHTL1", id (LE64), sector (LE64), then a
 * fill generated from (id, sector).  All of it must match, so a stale sector,
 * a misplaced one or a torn one are all caught.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define SECTOR 4096
#define MAX_WRITE_SECTORS 16
#define MAX_READ_SECTORS 64
#define CHUNK (1024 * 1024)
#define MAGIC "CRASHTL1"
#define MAGIC_LEN 8
#define MAX_BAD_REPORTED 10
#define MAX_IDS_LISTED 8

/* ---- PRNG and stamps ---- */

static uint64_t
splitmix64 (uint64_t *x)
{
  uint64_t z = (*x += UINT64_C (0x9e3779b97f4a7c15));

  z = (z ^ (z >> 30)) * UINT64_C (0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C (0x94d049bb133111eb);
  return z ^ (z >> 31);
}

struct rng {
  uint64_t s;
};

static void
rng_seed (struct rng *r, uint64_t seed)
{
  uint64_t x = seed;

  r->s = splitmix64 (&x);
  if (r->s == 0)                /* xorshift's one fixed point */
    r->s = 1;
}

static uint64_t
rng_next (struct rng *r)
{
  uint64_t x = r->s;

  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return r->s = x;
}

/* Modulo bias is irrelevant for a workload generator. */
static uint64_t
rng_below (struct rng *r, uint64_t n)
{
  return rng_next (r) % n;
}

static void
put_le64 (unsigned char *p, uint64_t v)
{
  for (int i = 0; i < 8; i++)
    p[i] = (unsigned char) (v >> (8 * i));
}

static uint64_t
get_le64 (const unsigned char *p)
{
  uint64_t v = 0;

  for (int i = 7; i >= 0; i--)
    v = (v << 8) | p[i];
  return v;
}

/* The content write ID puts in SECTOR.  The fill depends on both, so that
 * even a header-correct sector with the wrong body is caught.
 */
static void
stamp_make (unsigned char *buf, uint64_t id, uint64_t sector)
{
  uint64_t x = id ^ (sector * UINT64_C (0xd6e8feb86659fd93));
  struct rng r;

  rng_seed (&r, splitmix64 (&x));
  memcpy (buf, MAGIC, MAGIC_LEN);
  put_le64 (buf + 8, id);
  put_le64 (buf + 16, sector);
  for (size_t i = 24; i < SECTOR; i += 8)
    put_le64 (buf + i, rng_next (&r));
}

/* ---- small helpers ---- */

static void __attribute__ ((format (printf, 1, 2)))
complain (const char *fmt, ...)
{
  va_list ap;

  fputs ("crashtool: ", stderr);
  va_start (ap, fmt);
  vfprintf (stderr, fmt, ap);
  va_end (ap);
  fputc ('\n', stderr);
}

static bool
parse_u64 (const char *s, uint64_t *out)
{
  char *end;

  if (*s < '0' || *s > '9')
    return false;
  errno = 0;
  *out = strtoull (s, &end, 10);
  return errno == 0 && *end == '\0';
}

static void *
xcalloc (size_t n, size_t size)
{
  void *p = calloc (n ? n : 1, size);

  if (p == NULL) {
    complain ("out of memory");
    exit (2);
  }
  return p;
}

static void *
xaligned (size_t size)
{
  void *p;

  /* O_DIRECT wants 4096-aligned buffers; using them always costs nothing. */
  if (posix_memalign (&p, SECTOR, size) != 0) {
    complain ("out of memory");
    exit (2);
  }
  memset (p, 0, size);
  return p;
}

/* Read exactly LEN bytes at the current position, short only at EOF. */
static ssize_t
read_full (int fd, unsigned char *buf, size_t len)
{
  size_t done = 0;

  while (done < len) {
    ssize_t r = read (fd, buf + done, len - done);

    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    if (r == 0)
      break;
    done += (size_t) r;
  }
  return (ssize_t) done;
}

/* ---- the log ---- */

struct wrec {
  uint64_t id, sector, n;
  size_t session;
  bool failed, acked;
};

struct log {
  struct wrec *w;               /* sorted by id after log_load */
  size_t nw;
  uint64_t *sess_max_a;         /* per session: largest A id ... */
  bool *sess_has_a;             /* ... if it has any A line */
  size_t nsess;
  uint64_t max_id;              /* largest id on any line, 0 if none */
  size_t nacked, na, ne, nbad;
  bool torn;
  off_t good_len;               /* bytes up to the end of the last full line */
};

static int
wrec_cmp (const void *a, const void *b)
{
  const struct wrec *x = a, *y = b;

  return x->id < y->id ? -1 : x->id > y->id;
}

/* Index of the first record with id >= ID. */
static size_t
log_lower_bound (const struct log *lg, uint64_t id)
{
  size_t lo = 0, hi = lg->nw;

  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;

    if (lg->w[mid].id < id)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/* Does a W line with this ID cover SECTOR?  Loops over equal ids only
 * because a hand-edited log might repeat one.
 */
static bool
log_covers (const struct log *lg, uint64_t id, uint64_t sector)
{
  for (size_t i = log_lower_bound (lg, id); i < lg->nw && lg->w[i].id == id;
       i++)
    if (sector >= lg->w[i].sector && sector - lg->w[i].sector < lg->w[i].n)
      return true;
  return false;
}

/* Parse exactly COUNT space-separated decimal numbers from P to END. */
static bool
parse_fields (const char *p, const char *end, uint64_t *out, int count)
{
  for (int i = 0; i < count; i++) {
    uint64_t v = 0;
    const char *start;

    if (p >= end || *p != ' ')
      return false;
    p++;
    start = p;
    while (p < end && *p >= '0' && *p <= '9') {
      if (v > (UINT64_MAX - 9) / 10)
        return false;
      v = v * 10 + (uint64_t) (*p - '0');
      p++;
    }
    if (p == start)
      return false;
    out[i] = v;
  }
  return p == end;
}

static void
sess_new (struct log *lg, size_t *cap)
{
  if (lg->nsess == *cap) {
    *cap = *cap ? *cap * 2 : 16;
    lg->sess_max_a = realloc (lg->sess_max_a, *cap * sizeof *lg->sess_max_a);
    lg->sess_has_a = realloc (lg->sess_has_a, *cap * sizeof *lg->sess_has_a);
    if (!lg->sess_max_a || !lg->sess_has_a) {
      complain ("out of memory");
      exit (2);
    }
  }
  lg->sess_max_a[lg->nsess] = 0;
  lg->sess_has_a[lg->nsess] = false;
  lg->nsess++;
}

/* Load PATH into LG, resolving E lines and acknowledgement.  A missing file
 * is an empty log if MAY_BE_MISSING.  Returns false (after a message) on
 * errors.
 */
static bool
log_load (const char *path, struct log *lg, bool may_be_missing)
{
  int fd;
  struct stat st;
  char *data;
  size_t len, wcap = 0, scap = 0, ecap = 0, ne = 0;
  uint64_t *eids = NULL;
  const char *p, *end;

  memset (lg, 0, sizeof *lg);
  sess_new (lg, &scap);         /* session 0: lines before any S line */

  fd = open (path, O_RDONLY);
  if (fd == -1) {
    if (errno == ENOENT && may_be_missing)
      return true;
    complain ("%s: %m", path);
    return false;
  }
  if (fstat (fd, &st) == -1) {
    complain ("%s: fstat: %m", path);
    close (fd);
    return false;
  }
  len = (size_t) st.st_size;
  data = xcalloc (len + 1, 1);
  if (read_full (fd, (unsigned char *) data, len) != (ssize_t) len) {
    complain ("%s: read failed or file changed size", path);
    close (fd);
    free (data);
    return false;
  }
  close (fd);

  for (p = data, end = data + len; p < end; ) {
    const char *nl = memchr (p, '\n', (size_t) (end - p));
    uint64_t f[3];

    if (nl == NULL) {
      lg->torn = true;          /* the writer died mid-append */
      break;
    }
    if (nl - p >= 2 && p[1] == ' ' && p[0] == 'W'
        && parse_fields (p + 1, nl, f, 3) && f[0] != 0 && f[2] != 0) {
      if (lg->nw == wcap) {
        wcap = wcap ? wcap * 2 : 4096;
        lg->w = realloc (lg->w, wcap * sizeof *lg->w);
        if (lg->w == NULL) {
          complain ("out of memory");
          exit (2);
        }
      }
      lg->w[lg->nw++] = (struct wrec) {
        .id = f[0], .sector = f[1], .n = f[2], .session = lg->nsess - 1,
      };
      if (f[0] > lg->max_id)
        lg->max_id = f[0];
    }
    else if (nl - p >= 2 && p[1] == ' ' && (p[0] == 'A' || p[0] == 'E'
                                            || p[0] == 'S')
             && parse_fields (p + 1, nl, f, 1)) {
      if (p[0] == 'A') {
        size_t s = lg->nsess - 1;

        if (!lg->sess_has_a[s] || f[0] > lg->sess_max_a[s])
          lg->sess_max_a[s] = f[0];
        lg->sess_has_a[s] = true;
        lg->na++;
      }
      else if (p[0] == 'E') {
        if (ne == ecap) {
          ecap = ecap ? ecap * 2 : 64;
          eids = realloc (eids, ecap * sizeof *eids);
          if (eids == NULL) {
            complain ("out of memory");
            exit (2);
          }
        }
        eids[ne++] = f[0];
        lg->ne++;
      }
      else
        sess_new (lg, &scap);
      if (f[0] > lg->max_id)
        lg->max_id = f[0];
    }
    else
      lg->nbad++;
    p = nl + 1;
  }
  lg->good_len = p - data;
  free (data);
  if (lg->nbad)
    complain ("%s: ignored %zu malformed line(s)", path, lg->nbad);

  qsort (lg->w, lg->nw, sizeof *lg->w, wrec_cmp);
  for (size_t i = 1; i < lg->nw; i++)
    if (lg->w[i].id == lg->w[i - 1].id)
      complain ("%s: write id %" PRIu64 " appears more than once", path,
             lg->w[i].id);
  for (size_t i = 0; i < ne; i++)
    for (size_t j = log_lower_bound (lg, eids[i]);
         j < lg->nw && lg->w[j].id == eids[i]; j++)
      lg->w[j].failed = true;
  free (eids);
  for (size_t i = 0; i < lg->nw; i++) {
    struct wrec *w = &lg->w[i];

    w->acked = !w->failed && lg->sess_has_a[w->session]
      && w->id <= lg->sess_max_a[w->session];
    lg->nacked += w->acked;
  }
  return true;
}

static void
log_free (struct log *lg)
{
  free (lg->w);
  free (lg->sess_max_a);
  free (lg->sess_has_a);
}

/* ---- write ---- */

static int log_fd = -1;

static void __attribute__ ((format (printf, 1, 2)))
log_append (const char *fmt, ...)
{
  char buf[128];
  va_list ap;
  int n;

  va_start (ap, fmt);
  n = vsnprintf (buf, sizeof buf, fmt, ap);
  va_end (ap);
  /* One write(2) per line so that a line is either whole or torn last. */
  if (write (log_fd, buf, (size_t) n) != n) {
    complain ("writing the log: %m");
    exit (2);
  }
}

static double
now_s (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static int
cmd_write (int argc, char **argv)
{
  const char *file = NULL, *logpath = NULL, *seedstr = NULL;
  uint64_t seed, max_ops = UINT64_MAX, ops, nsec, next_id, last_done;
  uint64_t nwrites = 0, nreads = 0, nfsyncs = 0;
  double seconds = -1, deadline = 0;
  bool direct = false;
  struct log lg;
  struct stat st;
  struct rng r;
  unsigned char *wbuf, *rbuf;
  const char *stop = "done";
  int fd, npos = 0, err = 0;

  for (int i = 0; i < argc; i++) {
    if (strcmp (argv[i], "--direct") == 0)
      direct = true;
    else if (strcmp (argv[i], "--max-ops") == 0 && i + 1 < argc) {
      if (!parse_u64 (argv[++i], &max_ops))
        goto usage;
    }
    else if (strcmp (argv[i], "--seconds") == 0 && i + 1 < argc) {
      char *end;

      seconds = strtod (argv[++i], &end);
      if (*end != '\0' || seconds < 0)
        goto usage;
    }
    else if (argv[i][0] == '-' && argv[i][1] == '-')
      goto usage;
    else if (npos == 0)
      file = argv[i], npos++;
    else if (npos == 1)
      logpath = argv[i], npos++;
    else if (npos == 2)
      seedstr = argv[i], npos++;
    else
      goto usage;
  }
  if (npos != 3 || !parse_u64 (seedstr, &seed))
    goto usage;

  if (!log_load (logpath, &lg, true))
    return 2;
  /* Drop a torn tail so our first line does not get glued onto it. */
  if (lg.torn && truncate (logpath, lg.good_len) == -1) {
    complain ("%s: truncate: %m", logpath);
    return 2;
  }
  next_id = lg.max_id + 1;
  log_free (&lg);
  log_fd = open (logpath, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (log_fd == -1) {
    complain ("%s: %m", logpath);
    return 2;
  }

  /* On a loaded machine the kill may land before the first operation:
   * a mount whose daemon is gone answers ENOTCONN (ECONNABORTED once
   * the connection is aborted), which is the crash, not a failure. */
  fd = open (file, O_RDWR | O_CLOEXEC | (direct ? O_DIRECT : 0));
  if (fd == -1 || fstat (fd, &st) == -1) {
    int e = errno;
    complain ("%s: %s: %m", file, fd == -1 ? "open" : "fstat");
    return e == ENOTCONN || e == ECONNABORTED ? 0 : 1;
  }
  /* Tell a test that the file is open ($CRASHTOOL_READY names a file to
   * create), so that its kill lands while we write, not before the open:
   * after a lazy unmount the path no longer names the disk. */
  const char *ready = getenv ("CRASHTOOL_READY");
  if (ready) {
    int rfd = open (ready, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (rfd != -1)
      close (rfd);
  }
  if (st.st_size <= 0 || st.st_size % SECTOR != 0) {
    complain ("%s: size %jd is not a positive multiple of %d", file,
           (intmax_t) st.st_size, SECTOR);
    return 1;
  }
  nsec = (uint64_t) st.st_size / SECTOR;

  wbuf = xaligned (MAX_WRITE_SECTORS * SECTOR);
  rbuf = xaligned (MAX_READ_SECTORS * SECTOR);
  rng_seed (&r, seed);
  log_append ("S %" PRIu64 "\n", next_id);
  /* Nothing of this session is written yet; an A with this id acks none. */
  last_done = next_id - 1;
  if (seconds >= 0)
    deadline = now_s () + seconds;

  for (ops = 0; ops < max_ops; ops++) {
    uint64_t op = rng_below (&r, 8);

    if (seconds >= 0 && (ops & 63) == 0 && now_s () >= deadline)
      break;

    if (op < 2) {               /* ~1 in 4: make everything so far durable */
      bool data_only = rng_below (&r, 2);

      if ((data_only ? fdatasync (fd) : fsync (fd)) == -1) {
        err = errno;
        stop = data_only ? "fdatasync" : "fsync";
        break;
      }
      log_append ("A %" PRIu64 "\n", last_done);
      nfsyncs++;
    }
    else if (op < 6) {
      uint64_t s = rng_below (&r, nsec);
      uint64_t n = 1 + rng_below (&r, MAX_WRITE_SECTORS);
      uint64_t id = next_id++;
      size_t len;
      ssize_t w;

      if (n > nsec - s)
        n = nsec - s;
      for (uint64_t i = 0; i < n; i++)
        stamp_make (wbuf + i * SECTOR, id, s + i);
      len = (size_t) n * SECTOR;
      log_append ("W %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", id, s, n);
      w = pwrite (fd, wbuf, len, (off_t) (s * SECTOR));
      if (w != (ssize_t) len) {
        /* A short write counts as failed: part of it may have landed,
         * which verify allows for any unacknowledged write anyway.
         */
        err = w == -1 ? errno : EIO;
        stop = w == -1 ? "pwrite" : "pwrite (short)";
        log_append ("E %" PRIu64 "\n", id);
        break;
      }
      last_done = id;
      nwrites++;
    }
    else {                      /* reads only make the daemon fetch */
      uint64_t s = rng_below (&r, nsec);
      uint64_t n = 1 + rng_below (&r, MAX_READ_SECTORS);
      size_t len;
      ssize_t got;

      if (n > nsec - s)
        n = nsec - s;
      len = (size_t) n * SECTOR;
      got = pread (fd, rbuf, len, (off_t) (s * SECTOR));
      if (got != (ssize_t) len) {
        err = got == -1 ? errno : EIO;
        stop = got == -1 ? "pread" : "pread (short)";
        break;
      }
      nreads++;
    }
  }

  /* Expected when the daemon is killed under us: not a failure. */
  fprintf (stderr, "crashtool write: %s%s%s after %" PRIu64 " ops: "
           "writes=%" PRIu64 " reads=%" PRIu64 " fsyncs=%" PRIu64
           " last_id=%" PRIu64 "\n", stop, err ? ": " : "",
           err ? strerror (err) : "", ops, nwrites, nreads, nfsyncs,
           next_id - 1);
  close (fd);
  close (log_fd);
  free (wbuf);
  free (rbuf);
  return 0;

 usage:
  complain ("usage: crashtool write FILE LOG SEED [--direct] [--max-ops N] "
         "[--seconds S]");
  return 2;
}

/* ---- verify ---- */

/* The ids of writes covering SECTOR with id > AFTER, for messages. */
static void
print_ids (const struct log *lg, uint64_t sector, uint64_t after)
{
  size_t shown = 0, more = 0;

  for (size_t i = log_lower_bound (lg, after + 1); i < lg->nw; i++) {
    const struct wrec *w = &lg->w[i];

    if (sector < w->sector || sector - w->sector >= w->n)
      continue;
    if (shown < MAX_IDS_LISTED)
      fprintf (stdout, "%s%" PRIu64 "%s", shown ? "," : "", w->id,
               w->failed ? "(E)" : w->acked ? "(A)" : "");
    else
      more++;
    shown++;
  }
  if (shown == 0)
    fputs ("none", stdout);
  else if (more)
    fprintf (stdout, ",+%zu more", more);
}

static void
report_bad (const struct log *lg, uint64_t s, uint64_t acked,
            const unsigned char *got, const unsigned char *parent,
            unsigned char *tmp)
{
  printf ("bad sector %" PRIu64 ": found ", s);
  if (memcmp (got, parent, SECTOR) == 0)
    printf ("parent content");
  else if (memcmp (got, MAGIC, MAGIC_LEN) == 0) {
    uint64_t id = get_le64 (got + 8), sec = get_le64 (got + 16);

    printf ("stamp id=%" PRIu64 " sector=%" PRIu64, id, sec);
    if (sec != s)
      printf (" (wrong sector)");
    if (!log_covers (lg, id, sec))
      printf (" (no W line covers it)");
    stamp_make (tmp, id, sec);
    if (memcmp (tmp, got, SECTOR) != 0)
      printf (" (fill mismatch)");
  }
  else {
    size_t i = 0;

    while (i < SECTOR && got[i] == 0)
      i++;
    printf (i == SECTOR ? "zeroes" : "garbage");
  }
  if (acked) {
    printf ("; allowed: acked write %" PRIu64 " or later writes ", acked);
    print_ids (lg, s, acked);
  }
  else {
    printf ("; allowed: parent or writes ");
    print_ids (lg, s, 0);
  }
  putchar ('\n');
}

static bool
sector_ok (const struct log *lg, uint64_t s, uint64_t acked,
           const unsigned char *got, const unsigned char *parent,
           unsigned char *tmp)
{
  uint64_t id;

  /* Parent first: a parent image may itself hold stamps of an older log. */
  if (acked == 0 && memcmp (got, parent, SECTOR) == 0)
    return true;
  if (memcmp (got, MAGIC, MAGIC_LEN) != 0)
    return false;
  id = get_le64 (got + 8);
  if (id < acked || !log_covers (lg, id, s))
    return false;
  stamp_make (tmp, id, s);
  return memcmp (tmp, got, SECTOR) == 0;
}

static int
cmd_verify (int argc, char **argv)
{
  const char *file, *logpath, *parentpath;
  struct log lg;
  struct stat st, pst;
  uint64_t nsec, *acked_of, nwritten = 0, nbad = 0, beyond = 0, s = 0;
  unsigned char *covered, *buf, *pbuf, *tmp;
  int fd, pfd;

  if (argc != 3) {
    complain ("usage: crashtool verify FILE LOG PARENT");
    return 2;
  }
  file = argv[0];
  logpath = argv[1];
  parentpath = argv[2];
  if (!log_load (logpath, &lg, false))
    return 2;
  fd = open (file, O_RDONLY | O_CLOEXEC);
  if (fd == -1 || fstat (fd, &st) == -1) {
    complain ("%s: %m", file);
    return 2;
  }
  pfd = open (parentpath, O_RDONLY | O_CLOEXEC);
  if (pfd == -1 || fstat (pfd, &pst) == -1) {
    complain ("%s: %m", parentpath);
    return 2;
  }
  if (st.st_size != pst.st_size || st.st_size % SECTOR != 0) {
    printf ("verify: FILE size %jd differs from PARENT size %jd or is not "
            "a multiple of %d\n", (intmax_t) st.st_size,
            (intmax_t) pst.st_size, SECTOR);
    return 1;
  }
  nsec = (uint64_t) st.st_size / SECTOR;

  /* Per-sector acked id (0 = none; ids start at 1) and a coverage flag; the
   * later writes are looked up by the stamp's id, so need no per-sector list.
   */
  acked_of = xcalloc (nsec, sizeof *acked_of);
  covered = xcalloc (nsec, 1);
  for (size_t i = 0; i < lg.nw; i++) {
    const struct wrec *w = &lg.w[i];

    if (w->sector >= nsec || w->n > nsec - w->sector)
      beyond++;
    for (uint64_t k = w->sector; k < nsec && k - w->sector < w->n; k++) {
      covered[k] = 1;
      if (w->acked && w->id > acked_of[k])
        acked_of[k] = w->id;
    }
  }
  if (beyond)
    complain ("%s: %" PRIu64 " write(s) extend past the end of %s", logpath,
           beyond, file);
  for (uint64_t k = 0; k < nsec; k++)
    nwritten += covered[k];

  buf = xaligned (CHUNK);
  pbuf = xaligned (CHUNK);
  tmp = xaligned (SECTOR);
  while (s < nsec) {
    size_t want = (nsec - s) * SECTOR < CHUNK ? (nsec - s) * SECTOR : CHUNK;
    ssize_t got = read_full (fd, buf, want);
    ssize_t pgot = read_full (pfd, pbuf, want);

    if (got != (ssize_t) want) {
      complain ("%s: read at sector %" PRIu64 ": %s", file, s,
             got == -1 ? strerror (errno) : "unexpected EOF");
      return 2;
    }
    if (pgot != (ssize_t) want) {
      complain ("%s: read at sector %" PRIu64 ": %s", parentpath, s,
             pgot == -1 ? strerror (errno) : "unexpected EOF");
      return 2;
    }
    for (size_t off = 0; off < want; off += SECTOR, s++) {
      if (sector_ok (&lg, s, acked_of[s], buf + off, pbuf + off, tmp))
        continue;
      if (nbad < MAX_BAD_REPORTED)
        report_bad (&lg, s, acked_of[s], buf + off, pbuf + off, tmp);
      nbad++;
    }
  }

  printf ("verify: sectors=%" PRIu64 " written_sectors=%" PRIu64
          " acked_writes=%zu total_writes=%zu bad=%" PRIu64 "\n",
          nsec, nwritten, lg.nacked, lg.nw, nbad);
  close (fd);
  close (pfd);
  free (acked_of);
  free (covered);
  free (buf);
  free (pbuf);
  free (tmp);
  log_free (&lg);
  return nbad ? 1 : 0;
}

/* ---- stats, stamp ---- */

static int
cmd_stats (int argc, char **argv)
{
  struct log lg;

  if (argc != 1) {
    complain ("usage: crashtool stats LOG");
    return 2;
  }
  if (!log_load (argv[0], &lg, false))
    return 2;
  printf ("writes=%zu acked_writes=%zu fsyncs=%zu errors=%zu\n",
          lg.nw, lg.nacked, lg.na, lg.ne);
  log_free (&lg);
  return 0;
}

/* Test aid (for the self-test): forge the stamp of write ID in SECTOR. */
static int
cmd_stamp (int argc, char **argv)
{
  unsigned char *buf;
  uint64_t sector, id;
  int fd;

  if (argc != 3 || !parse_u64 (argv[1], &sector)
      || !parse_u64 (argv[2], &id)) {
    complain ("usage: crashtool stamp FILE SECTOR ID");
    return 2;
  }
  fd = open (argv[0], O_WRONLY | O_CLOEXEC);
  if (fd == -1) {
    complain ("%s: %m", argv[0]);
    return 2;
  }
  buf = xaligned (SECTOR);
  stamp_make (buf, id, sector);
  if (pwrite (fd, buf, SECTOR, (off_t) (sector * SECTOR)) != SECTOR
      || close (fd) == -1) {
    complain ("%s: write: %m", argv[0]);
    return 2;
  }
  free (buf);
  return 0;
}

int
main (int argc, char **argv)
{
  if (argc >= 2 && strcmp (argv[1], "write") == 0)
    return cmd_write (argc - 2, argv + 2);
  if (argc >= 2 && strcmp (argv[1], "verify") == 0)
    return cmd_verify (argc - 2, argv + 2);
  if (argc >= 2 && strcmp (argv[1], "stats") == 0)
    return cmd_stats (argc - 2, argv + 2);
  if (argc >= 2 && strcmp (argv[1], "stamp") == 0)
    return cmd_stamp (argc - 2, argv + 2);
  fprintf (stderr,
           "usage: crashtool write FILE LOG SEED [--direct] [--max-ops N] "
           "[--seconds S]\n"
           "       crashtool verify FILE LOG PARENT\n"
           "       crashtool stats LOG\n"
           "       crashtool stamp FILE SECTOR ID\n");
  return 2;
}
