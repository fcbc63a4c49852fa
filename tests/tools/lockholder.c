/* lockholder: stand in for a daemon that was just killed.  Takes the
 * flock on FILE (a state directory's corfs.pid), writes its pid there,
 * then lets its main thread exit while another thread keeps the file
 * (and the lock) open for SECONDS more: /proc/PID/stat then says zombie
 * although the lock is still held, as when SIGKILL hits a daemon whose
 * other threads are still leaving the kernel.
 *   lockholder FILE SECONDS
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

static unsigned seconds;

static void *
linger (void *arg)
{
  sleep (seconds);
  return arg;
}

int
main (int argc, char **argv)
{
  char pid[32];
  pthread_t t;
  int fd;

  if (argc != 3) {
    fprintf (stderr, "usage: lockholder FILE SECONDS\n");
    return 2;
  }
  seconds = atoi (argv[2]);
  fd = open (argv[1], O_RDWR | O_CREAT, 0644);
  if (fd == -1 || flock (fd, LOCK_EX | LOCK_NB) == -1) {
    perror (argv[1]);
    return 1;
  }
  snprintf (pid, sizeof pid, "%d\n", (int) getpid ());
  if (ftruncate (fd, 0) == -1 || pwrite (fd, pid, strlen (pid), 0) == -1) {
    perror (argv[1]);
    return 1;
  }
  if (pthread_create (&t, NULL, linger, NULL) != 0)
    return 1;
  pthread_exit (NULL);          /* the process lives on in linger */
}
