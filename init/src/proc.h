/* The tables of init: processes it started (by handle) and running containers (by name). */
#ifndef HYPERVM_PROC_H
#define HYPERVM_PROC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "cgroup.h"
#include "parse.h"

#define MAX_PROCESSES 4096

struct byte_queue {
	uint8_t *data;
	size_t off; /* first unsent byte */
	size_t len; /* end of queued bytes */
};

struct process {
	struct process *next;
	uint32_t handle;
	pid_t pid;      /* the process itself, as seen by init */
	pid_t shim_pid; /* its shim: the container's reaper for a main process */
	int is_main;
	int out_fd, err_fd; /* read ends of stdout/stderr; -1 after EOF */
	int in_fd;          /* write end of stdin; -1 when /dev/null or closed */
	int status_fd;      /* read end of the shim's status pipe; -1 once read (ending.h) */
	int pty_fd;         /* a tty process's terminal master (for RESIZE); else -1 */
	struct byte_queue in_queue;
	int in_close_pending; /* a zero-length STDIN frame arrived: close once drained */
	int exited; /* its wait status is known (ending.h); its shim may still be ending */
	int wait_status;
	int oom_killed; /* main process: the kernel OOM-killed in its container's cgroup */
};

struct container {
	struct container *next;
	char name[MAX_NAME_LEN + 1];
	pid_t reaper_pid;
	uint32_t main_handle;
	char cgroup[CGROUP_NAME_MAX]; /* its cgroup's name; "": none */
	int mounts_fd; /* its mount namespace, held by init (signals_release_ended); -1: none */
	int main_ended; /* its main process's status is known: the reaper and the rest of the
			 * container are ending (no EXEC; a START of its name waits for the reaper) */
};

struct process *proc_new(uint32_t handle);
struct process *proc_find(uint32_t handle);
struct process *proc_find_by_shim(pid_t shim_pid);
struct process *proc_first(void);
size_t proc_count(void);
/* Close every fd of p, unlink and free it. */
void proc_remove(struct process *p);
void proc_close_stdin(struct process *p);

struct container *container_add(const char *name, pid_t reaper_pid, uint32_t main_handle);
struct container *container_find(const char *name);
struct container *container_find_by_reaper(pid_t reaper_pid);
void container_remove(struct container *c);

/* Bytes waiting in every stdin queue. */
size_t stdin_backlog(void);

#endif
