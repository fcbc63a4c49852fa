/* corfs: the client commands (they talk to the daemon through the control
 * socket only, or, for unmount, through the mount table and the lock). */
#ifndef CORFS_CLI_H
#define CORFS_CLI_H

/* Each returns the process exit code; argv[0] is the command name. */
int cli_unmount (int argc, char **argv);
int cli_status (int argc, char **argv);
int cli_stream (int argc, char **argv);
int cli_events (int argc, char **argv);
int cli_metrics (int argc, char **argv);
int cli_merge (int argc, char **argv);
int cli_flatten (int argc, char **argv);
int cli_checkpoint (int argc, char **argv);
int cli_dirty (int argc, char **argv);
int cli_activate (int argc, char **argv);
int cli_handoff (int argc, char **argv);
int cli_reclaim (int argc, char **argv);
int cli_pivot (int argc, char **argv);
int cli_abort (int argc, char **argv);
int cli_sources (int argc, char **argv);

#endif
