#define _GNU_SOURCE
#include "shim.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"

static int parse_int(const char *s, int *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < 0 || v > 0x7fffffff)
		return -1;
	*out = (int)v;
	return 0;
}

/* The wait status waitpid would give for what waitid told. */
static int wait_status_of(const siginfo_t *si)
{
	switch (si->si_code) {
	case CLD_EXITED:
		return (si->si_status & 0xff) << 8;
	case CLD_DUMPED:
		return (si->si_status & 0x7f) | 0x80;
	default: /* CLD_KILLED */
		return si->si_status & 0x7f;
	}
}

/* 1 once `child` has ended, its wait status in *status, left a zombie: its reap (release_task,
 * ~1.3 ms under TCG the first time) waits until the status is written. */
static int peek(pid_t child, int *status)
{
	siginfo_t si;

	memset(&si, 0, sizeof(si));
	if (waitid(P_PID, (id_t)child, &si, WEXITED | WNOHANG | WNOWAIT) != 0 ||
	    si.si_pid != child)
		return 0;
	*status = wait_status_of(&si);
	return 1;
}

/* Reap every exited child; 1 once `child` has ended (status in *status). */
static int reap(pid_t child, int *status)
{
	for (;;) {
		int st;
		pid_t pid = waitpid(-1, &st, WNOHANG);

		if (pid == child) {
			*status = st;
			return 1;
		}
		if (pid > 0)
			continue;
		if (pid < 0 && errno == EINTR)
			continue;
		if (pid < 0 && errno == ECHILD) {
			log_msg("shim: process %d vanished", (int)child);
			*status = 127 << 8;
			return 1;
		}
		return 0;
	}
}

int shim_main(int argc, char **argv)
{
	int child, status_fd, status;
	sigset_t all;
	int sfd;

	if (argc != 4 || parse_int(argv[2], &child) != 0 || parse_int(argv[3], &status_fd) != 0) {
		log_msg("usage: hypervm-init --shim PID STATUS-FD");
		return 2;
	}
	prctl(PR_SET_NAME, "hypervm-shim", 0, 0, 0);
	/* Signals are already blocked (inherited from init), so none is lost before this. */
	sigfillset(&all);
	sigprocmask(SIG_BLOCK, &all, NULL);
	sfd = signalfd(-1, &all, SFD_CLOEXEC);
	if (sfd < 0) {
		log_errno("shim: signalfd");
		return 1;
	}
	for (;;) {
		struct signalfd_siginfo si;
		ssize_t n;

		if (peek((pid_t)child, &status) || reap((pid_t)child, &status)) {
			ssize_t w = write(status_fd, &status, sizeof(status));
			(void)w;
			/* the CPU to init, woken by the status, which sends the EXIT (on one vCPU it
			 * would otherwise wait for this shim's reap and exit: the guest kernel does
			 * not preempt, and init's wake-up does not reschedule a shim that has run
			 * this little since its own); then the zombie's reap (ECHILD when reap()
			 * took it already) and this shim's exit, with its PID namespace's teardown */
			sched_yield();
			while (waitpid((pid_t)child, &status, 0) < 0 && errno == EINTR)
				;
			_exit(0);
		}
		n = read(sfd, &si, sizeof(si));
		if (n != (ssize_t)sizeof(si)) {
			if (n < 0 && errno != EINTR)
				log_errno("shim: read signalfd");
			continue;
		}
		if (si.ssi_signo != SIGCHLD && kill((pid_t)child, (int)si.ssi_signo) != 0 &&
		    errno != ESRCH)
			log_errno("shim: forward signal %u", si.ssi_signo);
	}
}
