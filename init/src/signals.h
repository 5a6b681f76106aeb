/* init's signals: all blocked and read from a signalfd; SIGCHLD reaps children and records the
 * exit of shims (whose status pipe carries the process's wait status). */
#ifndef HYPERVM_SIGNALS_H
#define HYPERVM_SIGNALS_H

/* Block every signal, ignore SIGPIPE, return the signalfd (or -1). */
int signals_setup(void);

/* Drain the signalfd and reap every child that has ended. */
void signals_on_readable(int sfd);

#endif
