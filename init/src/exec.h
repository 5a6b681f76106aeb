/* Spawning a process: pipes, the fork of the process, its credentials, environment, cwd and
 * PATH search, the report pipe that carries its pid and any exec failure back to init, and the
 * hand-over of the parent to the shim (init's own binary re-entered with --shim). */
#ifndef HYPERVM_EXEC_H
#define HYPERVM_EXEC_H

#include <sys/types.h>

#include "operror.h"
#include "parse.h"

#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define SPAWN_TIMEOUT_MS 30000

/* Every fd is O_CLOEXEC; [0] is the read end. in[] is -1 without a stdin pipe. */
struct spawn_fds {
	int out[2];
	int err[2];
	int in[2];
	int report[2]; /* spawned side -> init: pid, or what failed */
	int status[2]; /* shim -> init: the wait status of the process */
	int pty;       /* tty: the terminal master (init keeps it for RESIZE); else -1 */
};

/* init's own binary (for the shim) and init's /proc (pids as init sees them). */
void spawn_set_context(int self_fd, int proc_fd);

/* With `tty`, out[] is the pty pair (master, slave) and in[1] a copy of the master. */
int spawn_fds_open(struct spawn_fds *f, int stdin_pipe, int tty, struct op_error *e);
/* In init after the fork: close the ends that belong to the spawned side. */
void spawn_fds_close_child_side(struct spawn_fds *f);
void spawn_fds_close_all(struct spawn_fds *f);

/* In the spawned side (already inside the container's namespaces): fork the process, then
 * become its shim. Never returns. */
void spawn_process_and_shim(const struct proc_spec *p, struct spawn_fds *f)
    __attribute__((noreturn));

/* A process forked ahead of its START (a prepared container): the forked side, once it has
 * its START, hands its parent what the shim needs over `parent_sock` and runs the process
 * (never returns); the parent waits in spawn_forked_shim for that, then becomes the shim of
 * `child`, or exits when `child` ended first (never returns). The fork is then off the
 * START's clock (~1.3 ms under TCG on the slower machines). */
void spawn_forked_process(const struct proc_spec *p, struct spawn_fds *f, int parent_sock)
    __attribute__((noreturn));
void spawn_forked_shim(pid_t child, int sock) __attribute__((noreturn));

/* Look up the directories of DEFAULT_PATH (in the caller's root), so that a PATH search
 * later finds their dentries cached (hits and misses alike); nothing else changes. */
void spawn_warm_default_path(void);

/* The caller's pid as init sees it (through init's /proc). */
pid_t spawn_pid_in_init_view(void);

/* In the spawned side: tell init what failed and exit. */
void spawn_report_failure(int report_fd, const struct op_error *e) __attribute__((noreturn));

/* In init: wait for the reports of the spawned side `child`; 0 with *pid (as init sees it) once
 * the process has exec'd (with `early`, a process of a START with `early_reply`: once only its
 * execve is left), -1 with e set otherwise. */
int spawn_await(int report_fd, pid_t child, int early, pid_t *pid, struct op_error *e);

/* PROTOCOL.md error code for an exec() errno. */
const char *exec_errno_code(int err);

#endif
