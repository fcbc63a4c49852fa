/* corfs: JSON lines over a socket, shared by the control socket (ctl) and
 * the command-line client (cli).  This header is the one place that
 * includes <jansson.h>. */
#ifndef CORFS_JSONL_H
#define CORFS_JSONL_H

#include <jansson.h>
#include <stddef.h>

#define JSONL_MAX_LINE (64 * 1024)

/* Send v as one line.  0, or -1 with errno. */
int jsonl_send (int fd, const json_t *v);

/* Read one line (blocking) and parse it.  Returns a new reference, or
 * NULL with errno (EPROTO for malformed JSON or a line over the limit,
 * ECONNRESET on EOF). */
json_t *jsonl_recv (int fd);

/* Send req and read the reply, which is read even if the send failed
 * (a refused client's reason is queued before the daemon hangs up).  A
 * new reference, or NULL with errno (the send's error if it failed). */
json_t *jsonl_call (int fd, const json_t *req);

/* Connect to the control socket of state directory state.  fd or -1 with
 * the reason in errbuf. */
int jsonl_connect (const char *state, char *errbuf, size_t len);

#endif
