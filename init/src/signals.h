/* init's signals: all blocked and read from a signalfd; SIGCHLD reaps children: a shim whose
 * process's status its pipe had not given yet (ending.h), a container's reaper (the container
 * ends: its cgroup and mount namespace are released later), the prepared container's. */
#ifndef HYPERVM_SIGNALS_H
#define HYPERVM_SIGNALS_H

#include <sys/types.h>

/* Block every signal, ignore SIGPIPE, return the signalfd (or -1). */
int signals_setup(void);

/* Drain the signalfd and reap every child that has ended; how many. */
int signals_on_readable(int sfd);

/* Wait up to timeout_ms for the container reaper `reaper` (a child of init) to end, and reap
 * it as signals_on_readable would: 0, or -1 when it did not end in time. */
int signals_await_reaper(pid_t reaper, int timeout_ms);

/* Log each container that ended and release its mount namespace. Its mounts (tmpfs, overlay,
 * binds) hold nothing the host waits for, and their teardown costs milliseconds under TCG:
 * init does it in a later round than the EXIT frames (main.c, serve_forever). */
void signals_release_ended(void);

/* 1 while ended containers wait for signals_release_ended. */
int signals_ended_pending(void);

#endif
