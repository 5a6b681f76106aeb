#define _GNU_SOURCE
#include "signals.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cgroup.h"
#include "container.h"
#include "ending.h"
#include "log.h"
#include "proc.h"

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

static void on_child_exit(pid_t pid, int status)
{
	struct process *p = proc_find_by_shim(pid);
	struct container *c = container_find_by_reaper(pid);

	container_prepared_exited(pid);
	/* a process whose status its shim's pipe has not given yet (ending.h): one recorded
	 * already is not found (proc_find_by_shim skips exited ones), so a shim's own status
	 * never replaces its process's */
	if (p != NULL)
		ending_from_reap(p, status);
	if (c != NULL) {
		/* its PID namespace died with the reaper: the OOM count is final (the console line) */
		container_ended(c, cgroup_oom_kills(c->cgroup));
		cgroup_release(c->cgroup);
		container_remove(c);
	}
}

int signals_on_readable(int sfd)
{
	struct signalfd_siginfo si;
	int reaped = 0;

	while (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si))
		if (si.ssi_signo != SIGCHLD)
			log_msg("ignoring signal %u", si.ssi_signo);
	for (;;) {
		int status;
		pid_t pid = waitpid(-1, &status, WNOHANG);

		if (pid > 0) {
			on_child_exit(pid, status);
			reaped++;
			continue;
		}
		if (pid < 0 && errno == EINTR)
			continue;
		break;
	}
	return reaped;
}

int signals_await_reaper(pid_t reaper, int timeout_ms)
{
	struct pollfd pfd = {.fd = (int)syscall(SYS_pidfd_open, reaper, 0), .events = POLLIN};
	int rc, status;
	pid_t pid;

	if (pfd.fd < 0) {
		log_errno("pidfd_open %d", (int)reaper);
		return -1;
	}
	/* readable once the reaper is a zombie: its PID namespace's teardown is done */
	while ((rc = poll(&pfd, 1, timeout_ms)) < 0 && errno == EINTR)
		;
	close(pfd.fd);
	if (rc <= 0)
		return -1;
	while ((pid = waitpid(reaper, &status, WNOHANG)) < 0 && errno == EINTR)
		;
	if (pid != reaper)
		return -1;
	on_child_exit(pid, status);
	return 0;
}
