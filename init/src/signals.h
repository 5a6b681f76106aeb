/* init's signals: all blocked and read from a signalfd; SIGCHLD reaps children and records the
 * exit of shims (whose status pipe carries the process's wait status). */
#ifndef HYPERVM_SIGNALS_H
#define HYPERVM_SIGNALS_H

/* Block every signal, ignore SIGPIPE, return the signalfd (or -1). */
int signals_setup(void);

/* Drain the signalfd and reap every child that has ended. */
void signals_on_readable(int sfd);

/* Log each container that ended and release its mount namespace. Its mounts (tmpfs, overlay,
 * binds) hold nothing the host waits for, and their teardown costs milliseconds under TCG:
 * init does it in a later round than the EXIT frames (main.c, serve_forever). */
void signals_release_ended(void);

/* 1 while ended containers wait for signals_release_ended. */
int signals_ended_pending(void);

#endif
