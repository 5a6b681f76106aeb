#define _GNU_SOURCE
#include "ending.h"

#include <errno.h>
#include <unistd.h>

#include "cgroup.h"
#include "stamp.h"

static void close_status(struct process *p)
{
	if (p->status_fd >= 0)
		close(p->status_fd);
	p->status_fd = -1;
}

/* The status is known: the EXIT may go (relay_flush_exits) once the output is drained. */
static void record(struct process *p, int wait_status)
{
	struct container *c = p->is_main ? container_find_by_reaper(p->shim_pid) : NULL;

	/* the kernel counts an OOM kill before it sends the SIGKILL: a kill that ended the main
	 * process, or any process of the container before it, is in the count by now */
	p->oom_killed = c != NULL && cgroup_oom_kills(c->cgroup) > 0;
	if (c != NULL)
		c->main_ended = 1;
	if (p->is_main)
		stamp(STAMP_STATUS);
	p->wait_status = wait_status;
	p->exited = 1;
	close_status(p);
	proc_close_stdin(p);
}

void ending_on_pipe(struct process *p)
{
	int st;
	ssize_t n;

	if (p->exited || p->status_fd < 0)
		return;
	n = read(p->status_fd, &st, sizeof(st));
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n == (ssize_t)sizeof(st)) {
		record(p, st);
		return;
	}
	/* EOF (or a short read: the shim writes its 4 bytes at once, below PIPE_BUF): the shim
	 * ended without a status; its reap gives it */
	close_status(p);
}

void ending_from_reap(struct process *p, int shim_status)
{
	int st;
	ssize_t n = p->status_fd >= 0 ? read(p->status_fd, &st, sizeof(st)) : -1;

	record(p, n == (ssize_t)sizeof(st) ? st : shim_status);
}
