/* corfs: per-thread reuse of large I/O buffers (see iobuf.h).
 *
 * Thread model: any thread; each thread only touches its own slot. */
#include <pthread.h>
#include <stdlib.h>

#include "iobuf.h"

/* Two kept buffers per thread: merge's compare holds two at once. */
#define KEEP 2

struct slot {
  void *buf[KEEP];
  size_t cap[KEEP];
};

static pthread_key_t key;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static int key_err;

static void
slot_free (void *p)
{
  struct slot *s = p;

  for (int i = 0; i < KEEP; i++)
    free (s->buf[i]);
  free (s);
}

static void
make_key (void)
{
  key_err = pthread_key_create (&key, slot_free);
}

/* A buffer's capacity follows from the length asked for, so iobuf_put
 * needs no header (which would cost a page of alignment): requests of
 * up to 1 MiB share 1 MiB buffers, larger ones round up to 64 KiB. */
static size_t
capacity (size_t len)
{
  const size_t min = 1u << 20, step = 64u << 10;

  return len <= min ? min : (len + step - 1) / step * step;
}

static struct slot *
my_slot (void)
{
  struct slot *s;

  if (pthread_once (&once, make_key) != 0 || key_err != 0)
    return NULL;
  if ((s = pthread_getspecific (key)) == NULL) {
    if ((s = calloc (1, sizeof *s)) == NULL)
      return NULL;
    if (pthread_setspecific (key, s) != 0) {
      free (s);
      return NULL;
    }
  }
  return s;
}

void *
iobuf_get (size_t len)
{
  struct slot *s = my_slot ();
  size_t cap = capacity (len);
  void *buf;
  int best = -1;

  /* The smallest kept buffer that is big enough. */
  for (int i = 0; s && i < KEEP; i++)
    if (s->buf[i] && s->cap[i] >= cap && (best == -1 || s->cap[i] < s->cap[best]))
      best = i;
  if (best >= 0) {
    buf = s->buf[best];
    s->buf[best] = NULL;
    return buf;
  }
  /* Plain malloc, not posix_memalign: nothing needs page alignment,
   * and glibc serves malloc of a size it has seen freed from the arena
   * (its mmap threshold rises), where an aligned 1 MiB + 4 KiB always
   * came from a fresh mmap: merge's short-lived copy threads then
   * faulted in every buffer, doubling the daemon's CPU time per merge. */
  return malloc (cap);
}

size_t
iobuf_kept (void)
{
  struct slot *s = my_slot ();
  size_t n = 0;

  for (int i = 0; s && i < KEEP; i++)
    if (s->buf[i])
      n += s->cap[i];
  return n;
}

void
iobuf_put (void *buf, size_t len)
{
  struct slot *s;
  size_t cap = capacity (len);

  if (!buf)
    return;
  if (cap > IOBUF_KEEP_MAX || (s = my_slot ()) == NULL) {
    free (buf);
    return;
  }
  /* Into an empty place, else in place of the smallest kept buffer if
   * this one is larger (a larger one serves every request a smaller
   * would). */
  int victim = 0;
  for (int i = 0; i < KEEP; i++) {
    if (!s->buf[i]) {
      victim = i;
      break;
    }
    if (s->cap[i] < s->cap[victim])
      victim = i;
  }
  if (s->buf[victim] && s->cap[victim] >= cap) {
    free (buf);
    return;
  }
  free (s->buf[victim]);
  s->buf[victim] = buf;
  s->cap[victim] = cap;
}
