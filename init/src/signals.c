#define _GNU_SOURCE
#include "signals.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cgroup.h"
#include "container.h"
#include "log.h"
#include "proc.h"
#include "stamp.h"

int signals_setup(void)
{
	sigset_t all;
	int sfd;

	signal(SIGPIPE, SIG_IGN);
	sigfillset(&all);
	sigprocmask(SIG_BLOCK, &all, NULL);
	sfd = signalfd(-1, &all, SFD_NONBLOCK | SFD_CLOEXEC);
	if (sfd < 0)
		log_errno("signalfd");
	return sfd;
}

/* Containers ended in this round of the main loop, logged and released after its EXIT frames. */
#define MAX_ENDED 16

static struct ended {
	char name[MAX_NAME_LEN + 1];
	int oom;
	int mounts_fd;
} ended[MAX_ENDED];
static size_t n_ended;

static void release(const struct ended *x)
{
	log_msg("container %s ended%s", x->name, x->oom ? " (out of memory)" : "");
	if (x->mounts_fd >= 0)
		close(x->mounts_fd);
}

int signals_ended_pending(void) { return n_ended > 0; }

void signals_release_ended(void)
{
	for (size_t i = 0; i < n_ended; i++)
		release(&ended[i]);
	n_ended = 0;
}

static void container_ended(const struct container *c, unsigned long oom_kills)
{
	struct ended x = {.oom = oom_kills > 0, .mounts_fd = c->mounts_fd};

	snprintf(x.name, sizeof(x.name), "%s", c->name);
	if (n_ended < MAX_ENDED)
		ended[n_ended++] = x;
	else
		release(&x);
}

/* The process's wait status from its shim: what the shim wrote, else how the shim ended. */
static int shim_reported_status(struct process *p, int shim_status)
{
	int st;
	ssize_t n = p->status_fd >= 0 ? read(p->status_fd, &st, sizeof(st)) : -1;

	if (n == (ssize_t)sizeof(st))
		return st;
	return shim_status;
}

static void on_child_exit(pid_t pid, int status)
{
	struct process *p = proc_find_by_shim(pid);
	struct container *c = container_find_by_reaper(pid);
	unsigned long oom_kills = 0;

	container_prepared_exited(pid);
	if (c != NULL) {
		/* its PID namespace died with the reaper: the OOM count is final */
		oom_kills = cgroup_oom_kills(c->cgroup);
		container_ended(c, oom_kills);
		cgroup_release(c->cgroup);
		container_remove(c);
	}
	if (p == NULL)
		return; /* an orphan re-parented to init, or a shim whose start failed */
	if (p->is_main)
		stamp(STAMP_REAPED);
	p->wait_status = shim_reported_status(p, status);
	p->oom_killed = p->is_main && oom_kills > 0;
	p->exited = 1;
	close(p->status_fd);
	p->status_fd = -1;
	proc_close_stdin(p);
}

void signals_on_readable(int sfd)
{
	struct signalfd_siginfo si;

	while (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si))
		if (si.ssi_signo != SIGCHLD)
			log_msg("ignoring signal %u", si.ssi_signo);
	for (;;) {
		int status;
		pid_t pid = waitpid(-1, &status, WNOHANG);

		if (pid > 0) {
			on_child_exit(pid, status);
			continue;
		}
		if (pid < 0 && errno == EINTR)
			continue;
		break;
	}
}
