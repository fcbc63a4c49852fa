/* corfs: the connection pool of every backend that has connections
 * (NBD, NFS, HTTP/S3), and the registry that holds the pools (see
 * remote-internal.h for the contract).
 *
 * Notes on the thread model: any thread.  p->lock protects the slots'
 * busy marks and the wait for a free slot (p->cond, CLOCK_MONOTONIC,
 * signalled on every return).  The rest of a slot (handle, data,
 * ever_connected, fresh) belongs to whoever holds it (busy), so the
 * backend reads and writes it without a lock; the pool touches it only on
 * slots it holds itself (close_idle, the final close).  registry.lock
 * protects the list of pools and their reference counts.  The lock is never held across a backend call:
 * conn_open and conn_close may block on the network (a connect, an NFS
 * CLOSE) up to their deadlines.
 *
 * Lock order: registry.lock is taken alone (never with a pool lock).
 * p->lock is taken below the block-status cache's zc.query (a block
 * status question takes a slot) and above nothing: nothing is locked
 * under it, and it is never taken with a backend's h->lock or r->lock
 * held (see wrapper-internal.h for the module's whole order).
 */
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/util.h"
#include "remote/remote-internal.h"

struct remote_pool {
  struct remote_pool *next;     /* in the registry */
  char *key;
  unsigned refs;                /* under registry.lock */
  const struct remote_ops *ops;
  pthread_mutex_t lock;
  pthread_cond_t cond;          /* a slot was returned */
  unsigned nslots;
  struct remote_conn *slots;
};

/* Every pool in the process, by key. */
static struct {
  pthread_mutex_t lock;
  struct remote_pool *pools;
} registry = { PTHREAD_MUTEX_INITIALIZER, NULL };

/* Append one field to the key, as its length, a colon and the bytes:
 * no value can pass for two fields, whatever characters it holds. */
static int
key_add (char **key, size_t *len, const char *name, const char *value)
{
  size_t n = value ? strlen (value) : 0;
  char *k;
  int w;

  k = realloc (*key, *len + strlen (name) + n + 32);
  if (!k)
    return -1;
  *key = k;
  w = sprintf (k + *len, "%s=%zu:", name, n);
  memcpy (k + *len + w, value ? value : "", n);
  *len += w + n;
  k[(*len)++] = '\n';
  k[*len] = '\0';
  return 0;
}

char *
remote_pool_key (const struct remote_config *cfg, const char *backend)
{
  char *key = NULL, *url = strdup (cfg->url), num[96];
  size_t len = 0;
  int e = 0;

  if (!url)
    return NULL;
  /* The scheme is case-insensitive (RFC 3986); nothing else is folded:
   * two spellings of one parent get two pools, which is never wrong. */
  for (char *p = url; *p && *p != ':'; p++)
    *p = tolower ((unsigned char) *p);
  snprintf (num, sizeof num, "%llu/%llu/%u/%d/%d/%d",
            (unsigned long long) cfg->connect_timeout_ns,
            (unsigned long long) cfg->request_timeout_ns, cfg->connections,
            cfg->writable, cfg->insecure, cfg->s3_virtual_host);
  e |= key_add (&key, &len, "backend", backend);
  e |= key_add (&key, &len, "disk", cfg->disk);
  e |= key_add (&key, &len, "url", url);
  e |= key_add (&key, &len, "credentials", cfg->credentials_file);
  e |= key_add (&key, &len, "token", cfg->token_file);
  for (size_t i = 0; !e && cfg->headers && cfg->headers[i]; i++)
    e |= key_add (&key, &len, "header", cfg->headers[i]);
  e |= key_add (&key, &len, "ca", cfg->ca_file);
  e |= key_add (&key, &len, "cert", cfg->client_cert);
  e |= key_add (&key, &len, "key", cfg->client_key);
  e |= key_add (&key, &len, "s3-endpoint", cfg->s3_endpoint);
  e |= key_add (&key, &len, "s3-region", cfg->s3_region);
  e |= key_add (&key, &len, "flags", num);
  free (url);
  if (e) {
    free (key);
    errno = ENOMEM;
    return NULL;
  }
  return key;
}

static struct remote_pool *
pool_new (const char *key, const struct remote_ops *ops, unsigned nslots)
{
  struct remote_pool *p = calloc (1, sizeof *p);

  if (!p)
    return NULL;
  p->key = strdup (key);
  p->slots = calloc (nslots ? nslots : 1, sizeof *p->slots);
  if (!p->key || !p->slots)
    goto nomem;
  for (unsigned i = 0; i < nslots; i++) {
    p->slots[i].index = i;
    if (ops->conn_data_size && !(p->slots[i].data = calloc (1, ops->conn_data_size)))
      goto nomem;
  }
  p->ops = ops;
  p->nslots = nslots;
  p->refs = 1;
  pthread_mutex_init (&p->lock, NULL);
  cond_init_monotonic (&p->cond);
  return p;

 nomem:
  for (unsigned i = 0; p->slots && i < nslots; i++)
    free (p->slots[i].data);
  free (p->slots);
  free (p->key);
  free (p);
  return NULL;
}

int
remote_pool_get (const char *key, const struct remote_ops *ops, unsigned nslots,
                 struct remote_pool **pp)
{
  struct remote_pool *p;

  assert (ops->conn_open && ops->conn_close && nslots > 0);
  pthread_mutex_lock (&registry.lock);
  for (p = registry.pools; p; p = p->next)
    if (p->ops == ops && strcmp (p->key, key) == 0) {
      p->refs++;
      break;
    }
  if (!p && (p = pool_new (key, ops, nslots))) {
    p->next = registry.pools;
    registry.pools = p;
  }
  pthread_mutex_unlock (&registry.lock);
  if (!p) {
    errno = ENOMEM;
    return -1;
  }
  *pp = p;
  return 0;
}

void
remote_pool_put (struct remote_pool *p)
{
  bool last;

  if (!p)
    return;
  pthread_mutex_lock (&registry.lock);
  last = --p->refs == 0;
  if (last)
    for (struct remote_pool **pp = &registry.pools; *pp; pp = &(*pp)->next)
      if (*pp == p) {
        *pp = p->next;
        break;
      }
  pthread_mutex_unlock (&registry.lock);
  if (!last)
    return;
  /* No remote refers to it any more: no request can hold a slot. */
  for (unsigned i = 0; i < p->nslots; i++) {
    assert (!p->slots[i].busy);
    if (p->slots[i].handle)
      p->ops->conn_close (&p->slots[i]);
    free (p->slots[i].data);
  }
  pthread_mutex_destroy (&p->lock);
  pthread_cond_destroy (&p->cond);
  free (p->slots);
  free (p->key);
  free (p);
}

unsigned
remote_pool_slots (const struct remote_pool *p)
{
  return p->nslots;
}

/* Wait on p->cond until deadline_ns (CLOCK_MONOTONIC).  Must hold
 * p->lock.  false when the deadline passed. */
static bool
wait_until (struct remote_pool *p, uint64_t deadline_ns)
{
  struct timespec ts = { deadline_ns / NS_PER_SEC, deadline_ns % NS_PER_SEC };

  return pthread_cond_timedwait (&p->cond, &p->lock, &ts) != ETIMEDOUT;
}

int
remote_pool_open (struct remote_pool *p, struct remote *r, void *h, struct remote_conn *c,
                  uint64_t deadline_ns, int *err)
{
  assert (c->busy);
  if (c->handle)
    return 0;
  if (p->ops->conn_open (r, h, c, NULL, 0, deadline_ns, err) < 0) {
    assert (!c->handle);
    return -1;
  }
  c->ever_connected = true;
  return 0;
}

struct remote_conn *
remote_pool_take (struct remote_pool *p, struct remote *r, void *h, uint64_t deadline_ns,
                  int *err)
{
  struct remote_conn *c = NULL;

  pthread_mutex_lock (&p->lock);
  for (;;) {
    /* The last free slot with a connection, else the first free one. */
    for (unsigned i = 0; i < p->nslots; i++)
      if (!p->slots[i].busy && (p->slots[i].handle || !c))
        c = &p->slots[i];
    if (c) {
      c->busy = true;
      break;
    }
    if (!wait_until (p, deadline_ns)) {
      *err = ETIMEDOUT;
      break;
    }
  }
  pthread_mutex_unlock (&p->lock);
  if (c && remote_pool_open (p, r, h, c, deadline_ns, err) == -1) {
    remote_pool_return (p, c);
    return NULL;
  }
  return c;
}

struct remote_conn *
remote_pool_take_slot (struct remote_pool *p, unsigned i, uint64_t deadline_ns, int *err)
{
  struct remote_conn *c = &p->slots[i];

  assert (i < p->nslots);
  pthread_mutex_lock (&p->lock);
  while (c->busy)
    if (!wait_until (p, deadline_ns)) {
      *err = ETIMEDOUT;
      pthread_mutex_unlock (&p->lock);
      return NULL;
    }
  c->busy = true;
  pthread_mutex_unlock (&p->lock);
  return c;
}

void
remote_pool_return (struct remote_pool *p, struct remote_conn *c)
{
  pthread_mutex_lock (&p->lock);
  assert (c->busy);
  c->busy = false;
  pthread_cond_signal (&p->cond);
  pthread_mutex_unlock (&p->lock);
}

void
remote_pool_discard (struct remote_pool *p, struct remote_conn *c)
{
  if (c->handle)
    p->ops->conn_close (c);
  remote_pool_return (p, c);
}

void
remote_pool_close_idle (struct remote_pool *p)
{
  /* Each slot once: hold it if it is idle and open, close its connection
   * outside the lock (a request that wants it meanwhile waits, as for a
   * busy one), give it back. */
  for (unsigned i = 0; i < p->nslots; i++) {
    struct remote_conn *c = &p->slots[i];
    bool mine;

    pthread_mutex_lock (&p->lock);
    mine = !c->busy && c->handle;
    if (mine)
      c->busy = true;
    pthread_mutex_unlock (&p->lock);
    if (mine)
      remote_pool_discard (p, c);
  }
}

int64_t
remote_pool_open_own (struct remote_pool *p, struct remote *r, void *h, struct remote_conn *c,
                      char *id, size_t len, uint64_t deadline_ns, int *err)
{
  int64_t size;

  *c = (struct remote_conn) { .busy = true, .index = p->nslots };
  if (p->ops->conn_data_size && !(c->data = calloc (1, p->ops->conn_data_size))) {
    *err = ENOMEM;
    return -1;
  }
  size = p->ops->conn_open (r, h, c, id, len, deadline_ns, err);
  if (size >= 0)
    c->ever_connected = true;
  return size;
}

void
remote_pool_close_own (struct remote_pool *p, struct remote_conn *c)
{
  if (c->handle)
    p->ops->conn_close (c);
  free (c->data);
  c->data = NULL;
}
