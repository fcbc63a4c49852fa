/* corfs: logging.
 *
 * One sink for the whole process: stderr until log_set_file() is called
 * (the daemon switches to STATE/corfs.log after forking).  Messages start
 * with the operation ("rnbd: connect: ..."), as libnbd's errors do.
 * Thread-safe: each message is written with a single write(2).
 */
#ifndef CORFS_LOG_H
#define CORFS_LOG_H

#include <stdarg.h>
#include <stdbool.h>

enum log_level { LOG_LVL_ERROR, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };

/* Messages above this level are dropped.  Default LOG_LVL_INFO; -v sets DEBUG. */
extern enum log_level log_level;

/* Send messages to fd as well as keeping the prefix "corfs[pid]".
 * The fd is not closed by the log module. */
void log_set_fd (int fd);

void log_msg (enum log_level lvl, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

#define log_error(...) log_msg (LOG_LVL_ERROR, __VA_ARGS__)
#define log_warn(...)  log_msg (LOG_LVL_WARN, __VA_ARGS__)
#define log_info(...)  log_msg (LOG_LVL_INFO, __VA_ARGS__)
#define log_debug(...) \
  do { if (log_level >= LOG_LVL_DEBUG) log_msg (LOG_LVL_DEBUG, __VA_ARGS__); } while (0)

/* The text of the last error logged (without timestamp and prefix), for
 * the daemon's readiness pipe.  Returns a static buffer. */
const char *log_last_error (void);

/* Rate limiting for data-path errors (like the kernel's DMERR_LIMIT):
 * returns true at most 10 times per 5 seconds per *state. */
struct log_ratelimit { long window; int count; };
bool log_ratelimit_ok (struct log_ratelimit *rl);

#endif
