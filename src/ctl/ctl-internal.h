/* corfs: the control socket's request handling without a socket or a
 * thread, for the fuzzer (tests/fuzz/fuzz-ctl.c) and tests.  Not part of
 * ctl's interface to the daemon (ctl.h). */
#ifndef CORFS_CTL_INTERNAL_H
#define CORFS_CTL_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

struct cor_engine;
struct merge;

/* Answer one request line (len bytes, without its newline) as the control
 * thread answers a client, against the engine's disks and the jobs of mg.
 * A long command (checkpoint, activate, ...) runs on a job thread as the
 * server runs it, and is waited for: its reply is returned like any
 * other.  Returns the reply's JSON text (no newline; the caller frees it),
 * or NULL when no reply could be built.  Sets *events when the request
 * subscribes to the event stream. */
char *ctl_answer_line (struct cor_engine *e, struct merge *mg, const char *line, size_t len,
                       bool *events);

#endif
