#define _GNU_SOURCE
#include "shim.h"

#include <errno.h>
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

		if (reap((pid_t)child, &status)) {
			ssize_t w = write(status_fd, &status, sizeof(status));
			(void)w;
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
