/* corfs: the control socket's event stream: the engine's events, queued
 * from whatever thread emits them, sent by the ctl thread to the clients
 * that subscribed (the events command).
 *
 * Notes on the thread model: ctl_on_event runs on engine threads (the
 * streamer, writeback, merge jobs, long commands...) and must not block:
 * it takes qlock only to append to the queue (at most MAX_QUEUED_EVENTS;
 * beyond, or once stopping, events are counted as dropped) and pokes the
 * ctl thread through the wake-up pipe.  ctl_flush_events runs on the ctl
 * thread: it swaps the queue out under qlock and sends without it.
 *
 * Locks: qlock, a leaf: nothing else is taken while it is held.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "cor/cor.h"
#include "ctl/ctl-internal.h"

void
ctl_on_event (void *opaque, const struct cor_event *ev)
{
  struct ctl *c = opaque;
  struct timespec ts;
  json_t *j;

  clock_gettime (CLOCK_REALTIME, &ts);
  j = json_pack ("{s:s, s:s, s:f}", "event", ev->type, "disk", ev->disk,
                 "time", ts.tv_sec + ts.tv_nsec / 1e9);
  if (!j)
    return;
  if (ev->total)
    json_object_set_new (j, "done", json_integer (ev->done)),
      json_object_set_new (j, "total", json_integer (ev->total));
  if (ev->message)
    json_object_set_new (j, "message", json_string (ev->message));
  pthread_mutex_lock (&c->qlock);
  if (c->stopping || json_array_size (c->queue) >= MAX_QUEUED_EVENTS) {
    c->dropped++;
    json_decref (j);
  }
  else {
    json_array_append_new (c->queue, j);
    if (write (c->wake[1], "e", 1) == -1) { /* the pipe is full: it is awake */ }
  }
  pthread_mutex_unlock (&c->qlock);
}

/* A subscriber that cannot take an event at once is dropped rather than
 * stall the daemon. */
void
ctl_flush_events (struct ctl *c)
{
  json_t *q, *ev;
  size_t i;

  pthread_mutex_lock (&c->qlock);
  q = c->queue;
  c->queue = json_array ();
  pthread_mutex_unlock (&c->qlock);
  json_array_foreach (q, i, ev) {
    char *line = json_dumps (ev, JSON_COMPACT);
    size_t len;
    if (!line)
      continue;
    len = strlen (line);
    line[len++] = '\n';
    for (int k = 0; k < MAX_CLIENTS; k++) {
      struct client *cl = c->clients[k];
      if (cl && cl->events &&
          send (cl->fd, line, len, MSG_NOSIGNAL | MSG_DONTWAIT) != (ssize_t) len) {
        log_warn ("ctl: dropping an event subscriber that does not keep up");
        ctl_drop_client (c, k);
      }
    }
    free (line);
  }
  json_decref (q);
}
