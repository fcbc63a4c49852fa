/* Unit tests: the remote connection pool (src/remote/pool.c) over a fake
 * backend whose connections are counters, and the registry's keys.
 *  - take opens a closed slot and prefers an open one; return keeps the
 *    connection, discard closes it and the next take reopens it;
 *  - a take with every slot busy waits until its deadline (ETIMEDOUT),
 *    and a failed open gives the slot back;
 *  - close_idle closes the idle connections only;
 *  - a connection of one's own never waits for a slot;
 *  - the registry gives one pool per key, and configurations that differ
 *    in credentials (or headers, TLS, disk) get different keys. */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "remote/remote-internal.h"

static int opens, closes, fail_open;    /* atomic */
static int handles[64];                 /* the fake connections */

static int64_t
fake_open (struct remote *r, void *h, struct remote_conn *c, char *id, size_t len,
           uint64_t deadline_ns, int *err)
{
  int n;

  cr_assert_null (c->handle);
  if (__atomic_load_n (&fail_open, __ATOMIC_SEQ_CST)) {
    *err = ECONNREFUSED;
    return -1;
  }
  n = __atomic_fetch_add (&opens, 1, __ATOMIC_SEQ_CST);
  c->handle = &handles[n % 64];
  if (id)
    snprintf (id, len, "fake:%d", n);
  return 42;
}

static void
fake_close (struct remote_conn *c)
{
  cr_assert_not_null (c->handle);
  __atomic_fetch_add (&closes, 1, __ATOMIC_SEQ_CST);
  c->handle = NULL;
}

static unsigned
fake_slots (const struct remote_config *cfg)
{
  return 2;
}

static const struct remote_ops fake_ops = {
  .name = "fake",
  .pool_slots = fake_slots,
  .conn_data_size = sizeof (int),
  .conn_open = fake_open,
  .conn_close = fake_close,
};

static struct remote_pool *
new_pool (const char *key)
{
  struct remote_pool *p;

  opens = closes = fail_open = 0;
  cr_assert_eq (remote_pool_get (key, &fake_ops, 2, &p), 0);
  cr_assert_eq (remote_pool_slots (p), 2);
  return p;
}

static uint64_t
soon (void)
{
  return now_ns () + NS_PER_SEC;
}

Test (pool, take_return_discard)
{
  struct remote_pool *p = new_pool ("take_return_discard");
  struct remote_conn *c, *c2;
  int err = 0;

  c = remote_pool_take (p, NULL, NULL, soon (), &err);
  cr_assert_not_null (c);
  cr_assert_not_null (c->handle);
  cr_assert_eq (opens, 1);
  cr_assert (c->ever_connected);
  *(int *) c->data = 7;                 /* the backend's per-slot state */
  remote_pool_return (p, c);

  /* The open one is preferred over the closed one: no new connection. */
  c2 = remote_pool_take (p, NULL, NULL, soon (), &err);
  cr_assert_eq (c2, c);
  cr_assert_eq (opens, 1);

  /* Discard closes it; the next take opens again, the slot's state kept. */
  remote_pool_discard (p, c2);
  cr_assert_eq (closes, 1);
  cr_assert_null (c2->handle);
  c = remote_pool_take (p, NULL, NULL, soon (), &err);
  cr_assert_not_null (c);
  cr_assert_eq (opens, 2);
  cr_assert_not_null (c->handle);
  if (c == c2)
    cr_assert_eq (*(int *) c->data, 7);
  remote_pool_return (p, c);
  remote_pool_put (p);
  cr_assert_eq (closes, 2, "the last put closes the open connection");
}

Test (pool, busy_waits_until_deadline)
{
  struct remote_pool *p = new_pool ("busy_waits_until_deadline");
  struct remote_conn *a, *b, *c;
  uint64_t start;
  int err = 0;

  a = remote_pool_take (p, NULL, NULL, soon (), &err);
  b = remote_pool_take (p, NULL, NULL, soon (), &err);
  cr_assert (a && b && a != b);
  start = now_ns ();
  c = remote_pool_take (p, NULL, NULL, start + NS_PER_SEC / 5, &err);
  cr_assert_null (c);
  cr_assert_eq (err, ETIMEDOUT);
  cr_assert_geq (now_ns () - start, NS_PER_SEC / 5 - NS_PER_SEC / 100);
  cr_assert_lt (now_ns () - start, NS_PER_SEC);

  /* Slot 1 in particular: busy too. */
  err = 0;
  cr_assert_null (remote_pool_take_slot (p, b->index, now_ns () + NS_PER_SEC / 20, &err));
  cr_assert_eq (err, ETIMEDOUT);
  remote_pool_return (p, a);
  remote_pool_return (p, b);

  /* A failed open gives the slot back: both are still free. */
  remote_pool_close_idle (p);
  fail_open = 1;
  err = 0;
  cr_assert_null (remote_pool_take (p, NULL, NULL, soon (), &err));
  cr_assert_eq (err, ECONNREFUSED);
  fail_open = 0;
  a = remote_pool_take_slot (p, 0, soon (), &err);
  b = remote_pool_take_slot (p, 1, soon (), &err);
  cr_assert (a && b);
  cr_assert_null (a->handle, "take_slot does not open");
  cr_assert_eq (remote_pool_open (p, NULL, NULL, a, soon (), &err), 0);
  cr_assert_not_null (a->handle);
  remote_pool_return (p, a);
  remote_pool_return (p, b);
  remote_pool_put (p);
}

struct waiter {
  struct remote_pool *p;
  struct remote_conn *got;
};

static void *
wait_take (void *arg)
{
  struct waiter *w = arg;
  int err = 0;

  w->got = remote_pool_take (w->p, NULL, NULL, now_ns () + 5 * NS_PER_SEC, &err);
  return NULL;
}

Test (pool, return_wakes_a_waiter)
{
  struct remote_pool *p = new_pool ("return_wakes_a_waiter");
  struct waiter w = { p, NULL };
  struct remote_conn *a, *b;
  pthread_t t;
  int err = 0;

  a = remote_pool_take (p, NULL, NULL, soon (), &err);
  b = remote_pool_take (p, NULL, NULL, soon (), &err);
  cr_assert_eq (pthread_create (&t, NULL, wait_take, &w), 0);
  sleep_ns (NS_PER_SEC / 10);
  remote_pool_return (p, a);
  pthread_join (t, NULL);
  cr_assert_eq (w.got, a);
  remote_pool_return (p, w.got);
  remote_pool_return (p, b);
  remote_pool_put (p);
}

Test (pool, close_idle_spares_busy)
{
  struct remote_pool *p = new_pool ("close_idle_spares_busy");
  struct remote_conn *a, *b;
  int err = 0;

  a = remote_pool_take (p, NULL, NULL, soon (), &err);
  b = remote_pool_take (p, NULL, NULL, soon (), &err);
  remote_pool_return (p, b);
  remote_pool_close_idle (p);
  cr_assert_eq (closes, 1);
  cr_assert_null (b->handle);
  cr_assert_not_null (a->handle, "a request's connection stays open");
  remote_pool_return (p, a);
  /* The next take prefers the open one (a), the closed one is reopened
   * only when needed. */
  cr_assert_eq (remote_pool_take (p, NULL, NULL, soon (), &err), a);
  cr_assert_eq (opens, 2);
  remote_pool_return (p, a);
  remote_pool_put (p);
  cr_assert_eq (closes, 2);
}

Test (pool, own_connection_never_waits)
{
  struct remote_pool *p = new_pool ("own_connection_never_waits");
  struct remote_conn *a, *b, own;
  char id[32] = "";
  int err = 0;

  a = remote_pool_take (p, NULL, NULL, soon (), &err);
  b = remote_pool_take (p, NULL, NULL, soon (), &err);
  cr_assert_eq (remote_pool_open_own (p, NULL, NULL, &own, id, sizeof id,
                                      now_ns () + NS_PER_SEC / 100, &err), 42);
  cr_assert_str_eq (id, "fake:2");
  cr_assert (own.handle && own.handle != a->handle && own.handle != b->handle);
  remote_pool_close_own (p, &own);
  cr_assert_eq (closes, 1);
  remote_pool_return (p, a);
  remote_pool_return (p, b);
  remote_pool_put (p);
}

Test (pool, registry_keys)
{
  const char *h1[] = { "X-A: 1", NULL }, *h2[] = { "X-A: 2", NULL };
  struct remote_config base = { .url = "https://example.test/disk.img", .disk = "d",
                                .credentials_file = "/etc/corfs/a.cred",
                                .connect_timeout_ns = NS_PER_SEC,
                                .request_timeout_ns = NS_PER_SEC };
  struct remote_config same = base, cred = base, hdr1 = base, hdr2 = base, tls = base,
    disk = base, scheme = base;
  struct remote_pool *p1, *p2, *p3;
  char *k, *ks, *kc, *kh1, *kh2, *kt, *kd, *kx;

  same.pinned_identity = "http:size=1";        /* not part of a connection */
  cred.credentials_file = "/etc/corfs/b.cred";
  hdr1.headers = h1;
  hdr2.headers = h2;
  tls.insecure = true;
  disk.disk = "e";
  scheme.url = "HTTPS://example.test/disk.img";
  k = remote_pool_key (&base, "http");
  ks = remote_pool_key (&same, "http");
  kc = remote_pool_key (&cred, "http");
  kh1 = remote_pool_key (&hdr1, "http");
  kh2 = remote_pool_key (&hdr2, "http");
  kt = remote_pool_key (&tls, "http");
  kd = remote_pool_key (&disk, "http");
  kx = remote_pool_key (&scheme, "http");
  cr_assert_str_eq (k, ks);
  cr_assert_str_eq (k, kx, "the scheme's case does not matter");
  cr_assert_str_neq (k, kc);
  cr_assert_str_neq (kh1, kh2);
  cr_assert_str_neq (k, kh1);
  cr_assert_str_neq (k, kt);
  cr_assert_str_neq (k, kd, "the disk is part of the key for now");

  /* One pool per key: the same key shares, other credentials do not. */
  cr_assert_eq (remote_pool_get (k, &fake_ops, 2, &p1), 0);
  cr_assert_eq (remote_pool_get (ks, &fake_ops, 2, &p2), 0);
  cr_assert_eq (remote_pool_get (kc, &fake_ops, 2, &p3), 0);
  cr_assert_eq (p1, p2);
  cr_assert_neq (p1, p3);
  remote_pool_put (p2);
  remote_pool_put (p3);
  /* p1 still holds a reference: the key finds the same pool. */
  cr_assert_eq (remote_pool_get (k, &fake_ops, 2, &p2), 0);
  cr_assert_eq (p1, p2);
  remote_pool_put (p2);
  remote_pool_put (p1);
  free (k); free (ks); free (kc); free (kh1); free (kh2); free (kt); free (kd); free (kx);
}
