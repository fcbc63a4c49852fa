/* corfs: per-thread reuse of large I/O buffers (see iobuf.h).
 *
 * Thread model: any thread; each thread only touches its own slot. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "iobuf.h"

struct slot {
  void *buf;
  size_t cap;
};

static pthread_key_t key;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static int key_err;

static void
slot_free (void *p)
{
  struct slot *s = p;

  free (s->buf);
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
  int r;

  if (s && s->buf && s->cap >= cap) {
    buf = s->buf;
    s->buf = NULL;
    return buf;
  }
  if ((r = posix_memalign (&buf, 4096, cap)) != 0) {
    errno = r;
    return NULL;
  }
  return buf;
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
  /* Keep the larger of the two: it serves every request the smaller
   * would. */
  if (s->buf && s->cap >= cap) {
    free (buf);
    return;
  }
  free (s->buf);
  s->buf = buf;
  s->cap = cap;
}
