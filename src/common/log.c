/* corfs: logging (see log.h).
 *
 * Notes on the thread model: any thread may log.  Each message is formatted
 * into a local buffer and written with one write(2), so lines never interleave.
 * log_ratelimit_ok races benignly: at worst a few more messages get through.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"

enum log_level log_level = LOG_LVL_INFO;
static int log_fd = 2;
static char last_error[1024];

void
log_set_fd (int fd)
{
  log_fd = fd;
}

void
log_msg (enum log_level lvl, const char *fmt, ...)
{
  static const char *names[] = { "error", "warning", "info", "debug" };
  int saved_errno = errno;
  char buf[2048];
  struct timespec ts;
  struct tm tm;
  size_t n;
  va_list ap;

  if (lvl > log_level)
    return;
  clock_gettime (CLOCK_REALTIME, &ts);
  gmtime_r (&ts.tv_sec, &tm);
  n = strftime (buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  n += snprintf (buf + n, sizeof buf - n, ".%03ldZ corfs[%d]: %s: ",
                 ts.tv_nsec / 1000000, (int) getpid (), names[lvl]);
  errno = saved_errno;          /* so that %m in fmt works */
  va_start (ap, fmt);
  if (n < sizeof buf)
    n += vsnprintf (buf + n, sizeof buf - n, fmt, ap);
  va_end (ap);
  if (n >= sizeof buf - 1)
    n = sizeof buf - 2;
  if (lvl == LOG_LVL_ERROR) {
    /* Keep the message part: after "error: ". */
    const char *m = strstr (buf, "error: ");
    snprintf (last_error, sizeof last_error, "%.*s",
              (int) (n - (m ? (size_t) (m + 7 - buf) : 0)), m ? m + 7 : buf);
  }
  buf[n++] = '\n';
  if (write (log_fd, buf, n) == -1) {
    /* Nowhere left to report it. */
  }
  errno = saved_errno;
}

const char *
log_last_error (void)
{
  return last_error;
}

bool
log_ratelimit_ok (struct log_ratelimit *rl)
{
  long now = (long) time (NULL) / 5;

  if (rl->window != now) {
    rl->window = now;
    rl->count = 0;
  }
  return rl->count++ < 10;
}
