/* corfs: small helpers with no project logic. */
#ifndef CORFS_UTIL_H
#define CORFS_UTIL_H


#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define NS_PER_SEC 1000000000ULL

/* Read or write exactly count bytes at offset, retrying on EINTR and short
 * transfers.  Return 0, or -1 with errno set (EIO for an unexpected EOF). */
int full_pread (int fd, void *buf, size_t count, off_t offset);
int full_pwrite (int fd, const void *buf, size_t count, off_t offset);

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t now_ns (void);

/* Sleep for ns nanoseconds (restarting on EINTR). */
void sleep_ns (uint64_t ns);

/* Parse "64K", "1M", "4096" (binary suffixes K M G T, K = 1024).
 * Return 0 and set *out, or -1 with errno EINVAL/ERANGE. */
int parse_size (const char *s, uint64_t *out);

/* Parse a duration in whole seconds, 1 to max_s ("20"; no sign, blank
 * or suffix).  0 and sets *out, or -1 with errno EINVAL (not a positive
 * whole number) or ERANGE (above max_s).  The result times NS_PER_SEC
 * cannot overflow while max_s is below 18446744073. */
int parse_seconds (const char *s, uint64_t max_s, uint64_t *out);

/* Parse a migration epoch: a positive decimal integer, digits only, at
 * most INT64_MAX (the control socket's JSON integers are signed).
 * Return 0 and set *out, or -1 with errno EINVAL/ERANGE. */
int parse_epoch (const char *s, uint64_t *out);

/* Parse a boolean config value: true/false/yes/no/on/off/1/0. */
int parse_bool (const char *s, bool *out);

/* Is the buffer all zero bytes? */
bool is_zero (const void *buf, size_t count);

/* Copy of url for logs, status and the index: any userinfo ("user:password@",
 * or a token given as user name) removed, and the value of every query
 * parameter named as a credential replaced by "REDACTED" (names matched by
 * word after percent-decoding, plus every X-Amz-* and X-Goog-* parameter,
 * and a signed URL's validity window; the rules are atop url_redact in
 * util.c and in README.md).  Everything else is kept as it was, so a URL
 * without secrets (?socket=/run/p.sock) stays usable.  Caller frees; NULL
 * when out of memory. */
char *url_redact (const char *url);

/* The redaction of corfs up to 63d3432, kept only to recognise the URLs
 * that it recorded in existing indexes (daemon.c compares a remount's
 * --disk URL with the record): the userinfo removed, and the whole query
 * dropped when it contains any of a few substrings (sig, token,
 * password, X-Amz-...).  Never use it to show a URL.  Caller frees; NULL
 * when out of memory. */
char *url_redact_legacy (const char *url);

/* A disk name is [A-Za-z0-9._-]+, not "." or "..", at most 64 bytes. */
bool name_is_valid (const char *name);

/* Read a whole small file (at most 64 KiB), stripping one trailing newline.
 * Caller frees.  NULL with errno on error. */
char *read_small_file (const char *path);

/* read_small_file, and the length read into *len (the string may hold a
 * NUL before it: a caller that must not cut a value short checks). */
char *read_small_file_len (const char *path, size_t *len);



#include <pthread.h>
/* pthread_create with every signal blocked in the new thread, so that
 * SIGTERM/SIGINT reach the FUSE loop's signal handling (main thread). */
int thread_create_nosig (pthread_t *t, void *(*fn) (void *), void *arg);

/* pthread_cond_init on CLOCK_MONOTONIC, so that pthread_cond_timedwait
 * deadlines come from now_ns () and do not jump with the wall clock. */
void cond_init_monotonic (pthread_cond_t *c);

/* pthread_join, waiting at most until deadline_ns (now_ns () terms).
 * True if joined; false if the thread still runs (then it is not
 * joined, and may be joined again later). */
bool thread_join_until (pthread_t t, uint64_t deadline_ns);
#endif
