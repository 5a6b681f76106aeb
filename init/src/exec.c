#define _GNU_SOURCE
#include "exec.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "confine.h"
#include "log.h"
#include "stamp.h"

#ifndef AT_EMPTY_PATH
#define AT_EMPTY_PATH 0x1000
#endif

/* REPORT_READY (START `early_reply` only): confined, in its cwd, its file found executable;
 * only the execve is left. */
enum { REPORT_PID = 1, REPORT_FAIL = 2, REPORT_READY = 3 };

/* Smaller than PIPE_BUF, so each report is written atomically. */
struct spawn_report {
	int32_t kind;
	int32_t pid;
	struct op_error error;
};

static int self_fd = -1;
static int proc_fd = -1;

void spawn_set_context(int self, int proc)
{
	self_fd = self;
	proc_fd = proc;
}

static void close_pair(int fds[2])
{
	for (int i = 0; i < 2; i++) {
		if (fds[i] >= 0)
			close(fds[i]);
		fds[i] = -1;
	}
}

/* The pty pair of a tty process, opened in init's /dev/pts (the process inherits the slave,
 * so the container's own devpts instance does not matter); all fds O_CLOEXEC. */
static int open_pty(struct spawn_fds *f, int stdin_pipe, struct op_error *e)
{
	char name[64];
	int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);

	if (master < 0 || grantpt(master) != 0 || unlockpt(master) != 0 ||
	    ptsname_r(master, name, sizeof(name)) != 0) {
		log_errno("posix_openpt");
		if (master >= 0)
			close(master);
		return op_fail(e, "ESPAWN", errno, "cannot open a terminal");
	}
	f->out[0] = master;
	f->out[1] = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
	f->pty = fcntl(master, F_DUPFD_CLOEXEC, 0);
	if (stdin_pipe)
		f->in[1] = fcntl(master, F_DUPFD_CLOEXEC, 0);
	if (f->out[1] < 0 || f->pty < 0 || (stdin_pipe && f->in[1] < 0)) {
		log_errno("open the terminal %s", name);
		return op_fail(e, "ESPAWN", errno, "cannot open a terminal");
	}
	return 0;
}

int spawn_fds_open(struct spawn_fds *f, int stdin_pipe, int tty, struct op_error *e)
{
	int *pairs[] = {f->out, f->err, f->in, f->report, f->status};

	for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++)
		pairs[i][0] = pairs[i][1] = -1;
	f->pty = -1;
	if (tty && open_pty(f, stdin_pipe, e) != 0) {
		spawn_fds_close_all(f);
		return -1;
	}
	for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
		if ((pairs[i] == f->in && (!stdin_pipe || tty)) || (pairs[i] == f->out && tty))
			continue;
		if (pipe2(pairs[i], O_CLOEXEC) != 0) {
			log_errno("pipe2");
			spawn_fds_close_all(f);
			return op_fail(e, "ESPAWN", errno, "cannot create pipes");
		}
	}
	return 0;
}

void spawn_fds_close_child_side(struct spawn_fds *f)
{
	int *ends[] = {&f->out[1], &f->err[1], &f->in[0], &f->report[1], &f->status[1]};

	for (size_t i = 0; i < sizeof(ends) / sizeof(ends[0]); i++) {
		if (*ends[i] >= 0)
			close(*ends[i]);
		*ends[i] = -1;
	}
}

void spawn_fds_close_all(struct spawn_fds *f)
{
	close_pair(f->out);
	close_pair(f->err);
	close_pair(f->in);
	close_pair(f->report);
	close_pair(f->status);
	if (f->pty >= 0)
		close(f->pty);
	f->pty = -1;
}

static void write_report(int fd, const struct spawn_report *r)
{
	ssize_t n;

	do
		n = write(fd, r, sizeof(*r));
	while (n < 0 && errno == EINTR);
}

void spawn_report_failure(int report_fd, const struct op_error *e)
{
	struct spawn_report r = {.kind = REPORT_FAIL, .error = *e};

	write_report(report_fd, &r);
	_exit(127);
}

static __attribute__((noreturn)) void fail_errno(int report_fd, const char *code, int err,
						 const char *what)
{
	struct op_error e;

	op_fail(&e, code, err, "%s", what);
	spawn_report_failure(report_fd, &e);
}

const char *exec_errno_code(int err)
{
	switch (err) {
	case ENOENT:
	case ENOTDIR:
		return "ENOENT";
	case EACCES:
	case ENOEXEC:
	case EPERM:
		return "EACCES";
	default:
		return "ESPAWN";
	}
}

static const char *env_lookup(char *const *env, const char *name)
{
	size_t len = strlen(name);

	for (; *env != NULL; env++)
		if (strncmp(*env, name, len) == 0 && (*env)[len] == '=')
			return *env + len + 1;
	return NULL;
}

/* What trying one candidate of args[0] gave: 0 (found: the walk stops), else an errno. */
typedef int (*try_fn)(const struct proc_spec *p, const char *candidate);

/* execvp's walk for args[0]: the file itself when it has a '/', else each entry of PATH (from
 * env) in order, `try` on each candidate (built in `out`, PATH_MAX bytes) until one gives 0.
 * Else the errno that describes the failure best: another error than not-found at once,
 * EACCES if some candidate was not executable, else ENOENT. */
static int path_walk(const struct proc_spec *p, try_fn try, char out[PATH_MAX])
{
	const char *file = p->args[0];
	const char *path;
	int saw_eacces = 0;

	if (strchr(file, '/') != NULL) {
		if (strlen(file) >= PATH_MAX)
			return ENAMETOOLONG;
		snprintf(out, PATH_MAX, "%s", file);
		return try(p, out);
	}
	path = env_lookup(p->env, "PATH");
	if (path == NULL)
		path = DEFAULT_PATH;
	while (1) {
		const char *end = strchrnul(path, ':');
		size_t dirlen = (size_t)(end - path);
		int err = ENAMETOOLONG;

		if (dirlen == 0) /* an empty entry means the current directory */
			snprintf(out, PATH_MAX, "%s", file);
		else if (dirlen + 1 + strlen(file) < PATH_MAX)
			snprintf(out, PATH_MAX, "%.*s/%s", (int)dirlen, path, file);
		else
			out[0] = '\0';
		if (out[0] != '\0' && (err = try(p, out)) == 0)
			return 0;
		if (err == EACCES)
			saw_eacces = 1;
		else if (err != ENOENT && err != ENOTDIR && err != ENAMETOOLONG)
			return err;
		if (*end == '\0')
			break;
		path = end + 1;
	}
	return saw_eacces ? EACCES : ENOENT;
}

static int try_execve(const struct proc_spec *p, const char *candidate)
{
	execve(candidate, p->args, p->env);
	return errno;
}

/* 0 when `path` is a regular file the caller may execute (as execve checks it: a noexec
 * mount fails access() too), else the errno execve would most likely give. */
static int executable(const struct proc_spec *p, const char *path)
{
	struct stat st;

	(void)p;
	if (stat(path, &st) != 0)
		return errno;
	if (!S_ISREG(st.st_mode))
		return EACCES;
	return access(path, X_OK) == 0 ? 0 : errno;
}

/* execve() args[0], searching PATH as path_walk does; returns only on failure, its errno. */
static int exec_search(const struct proc_spec *p)
{
	char full[PATH_MAX];

	return path_walk(p, try_execve, full);
}

/* The file exec_search would run, into `out` (PATH_MAX bytes): the same candidates in the same
 * order, the first executable one. 0, else the errno exec_search would report. */
static int exec_resolve(const struct proc_spec *p, char out[PATH_MAX])
{
	return path_walk(p, executable, out);
}

/* START `early_reply`: init has replied OK already, so an execve that fails now is reported
 * as a shell reports it: a line on the process's stderr and exit status 127 (not found) or
 * 126 (found, cannot be run), the statuses the host gives an ENOENT/EACCES START error. */
static __attribute__((noreturn)) void exec_after_reply(const struct proc_spec *p,
							 const char *file)
{
	int err;

	execve(file, p->args, p->env);
	err = errno;
	dprintf(2, "hypervm-init: cannot execute %.100s: %s\n", p->args[0], strerror(err));
	_exit(strcmp(exec_errno_code(err), "ENOENT") == 0 ? 127 : 126);
}

static void reset_signals(void)
{
	sigset_t none;

	for (int sig = 1; sig < NSIG; sig++)
		signal(sig, SIG_DFL); /* fails harmlessly for SIGKILL, SIGSTOP, libc-internal ones */
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
}

pid_t spawn_pid_in_init_view(void)
{
	char buf[32];
	ssize_t n = readlinkat(proc_fd, "self", buf, sizeof(buf) - 1);

	if (n <= 0)
		return getpid();
	buf[n] = '\0';
	return (pid_t)atoi(buf);
}

static void setup_stdio(const struct proc_spec *p, struct spawn_fds *f)
{
	int rfd = f->report[1];
	int in;

	if (p->tty) { /* setsid() came first: the slave becomes the controlling terminal */
		if (dup2(f->out[1], 0) < 0 || dup2(f->out[1], 1) < 0 || dup2(f->out[1], 2) < 0 ||
		    ioctl(0, TIOCSCTTY, 0) != 0)
			fail_errno(rfd, "ESPAWN", errno, "process.tty: cannot set up the terminal");
		return;
	}
	in = p->stdin_pipe ? f->in[0] : open("/dev/null", O_RDONLY);
	if (in < 0)
		fail_errno(rfd, "ESPAWN", errno, "open /dev/null for stdin");
	if (dup2(in, 0) < 0 || dup2(f->out[1], 1) < 0 || dup2(f->err[1], 2) < 0)
		fail_errno(rfd, "ESPAWN", errno, "dup2 stdio");
	if (!p->stdin_pipe)
		close(in);
}

static void set_credentials(const struct proc_spec *p, int rfd)
{
	gid_t gids[MAX_GIDS];

	/* The system calls themselves: musl's wrappers apply them to every thread through
	 * __synccall (signals blocked and restored around each), and this process has one thread:
	 * the same result without that code, which a cold VM's START would translate under TCG. */
	for (size_t i = 0; i < p->ngids; i++)
		gids[i] = (gid_t)p->gids[i];
	if (syscall(SYS_setgroups, p->ngids, gids) != 0)
		fail_errno(rfd, "ESPAWN", errno, "process.additional_gids: setgroups");
	if (syscall(SYS_setgid, (gid_t)p->gid) != 0)
		fail_errno(rfd, "ESPAWN", errno, "process.gid: setgid");
	if (syscall(SYS_setuid, (uid_t)p->uid) != 0)
		fail_errno(rfd, "ESPAWN", errno, "process.uid: setuid");
}

/* `go`: the write end of the pipe the shim-to-be waits on (-1: none), closed once only the
 * execve is left. */
static __attribute__((noreturn)) void run_process(const struct proc_spec *p, struct spawn_fds *f,
						  int go)
{
	int rfd = f->report[1];
	struct spawn_report r = {.kind = REPORT_PID, .pid = spawn_pid_in_init_view()};
	struct op_error e;
	int err;

	stamp(STAMP_FORKED);
	write_report(rfd, &r);
	setsid();
	setup_stdio(p, f);
	reset_signals();
	umask(022);
	/* no_new_privs by default for root, who needs no set-id program; not for other users,
	 * who may (su, sudo, ping): Docker sets it for nobody */
	if (confine_before_credentials(p->no_new_privs < 0 ? p->uid == 0 : p->no_new_privs, &e) !=
	    0)
		spawn_report_failure(rfd, &e);
	set_credentials(p, rfd);
	if (confine_after_credentials(p->uid, &e) != 0)
		spawn_report_failure(rfd, &e);
	if (chdir(p->cwd) != 0) {
		op_fail(&e, "ESPAWN", errno, "process.cwd: cannot enter %.100s", p->cwd);
		spawn_report_failure(rfd, &e);
	}
	stamp(STAMP_CONFINED);
	if (p->early_reply) {
		char file[PATH_MAX];

		err = exec_resolve(p, file);
		if (err == 0) {
			stamp(STAMP_RESOLVED);
			r.kind = REPORT_READY;
			write_report(rfd, &r); /* init may stop reading now: nothing more goes there */
			if (go >= 0)
				close(go); /* the shim's own exec may go now, after init's reply */
			exec_after_reply(p, file);
		}
	} else {
		err = exec_search(p);
	}
	op_fail(&e, exec_errno_code(err), err, "process.args[0]: cannot execute %.100s",
		p->args[0]);
	spawn_report_failure(rfd, &e);
}

/* The OOM killer spares the shim (a group kill of memory.oom.group too), so it reports how its
 * process ended. Through init's /proc: an EXEC's shim is not in the container's PID namespace. */
static void shim_out_of_oom_reach(void)
{
	int fd = openat(proc_fd, "self/oom_score_adj", O_WRONLY | O_CLOEXEC);

	if (fd < 0 || write(fd, "-1000", 5) != 5)
		log_errno("set the shim's oom_score_adj (ignored)");
	if (fd >= 0)
		close(fd);
}

/* The parent's half of a spawn: wait until the process `child` has reported READY (`go_read`
 * closed by it; -1: no wait), then become its shim, handing it `status_fd`. Never returns. */
static __attribute__((noreturn)) void become_shim(pid_t child, int go_read, int status_fd,
						   int report_fd)
{
	char pid_arg[16], fd_arg[16];
	char *argv[] = {"hypervm-init", "--shim", pid_arg, fd_arg, NULL};
	char *envp[] = {NULL};

	if (go_read >= 0) {
		char byte;

		while (read(go_read, &byte, 1) < 0 && errno == EINTR)
			;
		close(go_read);
	}
	shim_out_of_oom_reach();
	snprintf(pid_arg, sizeof(pid_arg), "%d", (int)child);
	snprintf(fd_arg, sizeof(fd_arg), "%d", status_fd);
	if (fcntl(status_fd, F_SETFD, 0) != 0) {
		kill(child, SIGKILL);
		fail_errno(report_fd, "ESPAWN", errno, "status pipe");
	}
	stamp(STAMP_SHIM);
	syscall(SYS_execveat, self_fd, "", argv, envp, AT_EMPTY_PATH);
	log_errno("execveat init for the shim");
	kill(child, SIGKILL);
	fail_errno(report_fd, "ESPAWN", errno, "cannot start the shim");
}

void spawn_process_and_shim(const struct proc_spec *p, struct spawn_fds *f)
{
	int go[2] = {-1, -1};
	pid_t child;

	/* early_reply: the shim-to-be execs itself only once the process has reported READY (or
	 * ended): on one vCPU the parent runs first after fork, and its execveat (~3 ms under TCG)
	 * would otherwise come before the process's READY, on the START's clock */
	if (p->early_reply && pipe2(go, O_CLOEXEC) != 0)
		fail_errno(f->report[1], "ESPAWN", errno, "pipe");
	child = fork();
	if (child < 0)
		fail_errno(f->report[1], "ESPAWN", errno, "fork");
	if (child == 0) {
		if (go[0] >= 0)
			close(go[0]);
		run_process(p, f, go[1]);
	}
	if (go[1] >= 0)
		close(go[1]);
	become_shim(child, go[0], f->status[1], f->report[1]);
}

void spawn_warm_default_path(void)
{
	char dir[sizeof(DEFAULT_PATH)];
	struct stat st;

	memcpy(dir, DEFAULT_PATH, sizeof(dir));
	for (char *save = NULL, *d = strtok_r(dir, ":", &save); d != NULL;
	     d = strtok_r(NULL, ":", &save))
		(void)stat(d, &st); /* a miss is cached as well as a hit */
}

/* What the process forked ahead hands its parent: the status and report ends, and the read
 * end of the READY wait (START early_reply only). */
#define HANDOVER_FDS 3

void spawn_forked_process(const struct proc_spec *p, struct spawn_fds *f, int parent_sock)
{
	int go[2] = {-1, -1};
	int fds[HANDOVER_FDS] = {f->status[1], f->report[1], -1};
	size_t nfds = 2;
	char byte = 0, control[CMSG_SPACE(sizeof(int) * HANDOVER_FDS)];
	struct iovec iov = {&byte, 1};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control};
	struct cmsghdr *c;
	ssize_t n;

	if (p->early_reply && pipe2(go, O_CLOEXEC) != 0)
		fail_errno(f->report[1], "ESPAWN", errno, "pipe");
	if (go[0] >= 0)
		fds[nfds++] = go[0];
	memset(control, 0, sizeof(control));
	msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
	c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
	memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
	do
		n = sendmsg(parent_sock, &msg, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	if (n != 1)
		fail_errno(f->report[1], "ESPAWN", errno, "hand the shim its pipes");
	close(parent_sock);
	if (go[0] >= 0)
		close(go[0]);
	run_process(p, f, go[1]);
}

void spawn_forked_shim(pid_t child, int sock)
{
	int fds[HANDOVER_FDS] = {-1, -1, -1};
	size_t nfds = 0;
	char byte, control[CMSG_SPACE(sizeof(int) * HANDOVER_FDS)];
	struct iovec iov = {&byte, 1};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
			     .msg_controllen = sizeof(control)};
	ssize_t n;

	do
		n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n != 1)
		_exit(0); /* the process ended first: dropped before a START, or its START failed */
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
		    c->cmsg_len >= CMSG_LEN(0)) {
			nfds = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			if (nfds > HANDOVER_FDS)
				nfds = HANDOVER_FDS;
			memcpy(fds, CMSG_DATA(c), sizeof(int) * nfds);
		}
	close(sock);
	if (nfds < 2) {
		kill(child, SIGKILL);
		_exit(1);
	}
	become_shim(child, nfds > 2 ? fds[2] : -1, fds[0], fds[1]);
}

int spawn_await(int report_fd, pid_t child, int early, pid_t *pid, struct op_error *e)
{
	struct spawn_report r;
	int failed = 0;

	*pid = 0;
	for (;;) {
		struct pollfd pfd = {.fd = report_fd, .events = POLLIN};
		int rc = poll(&pfd, 1, SPAWN_TIMEOUT_MS);
		ssize_t n;

		if (rc < 0 && errno == EINTR)
			continue;
		if (rc <= 0) {
			log_msg("process of pid %d did not start in %d ms", (int)child,
				SPAWN_TIMEOUT_MS);
			return op_fail(e, "ESPAWN", 0, "the process did not start in time");
		}
		n = read(report_fd, &r, sizeof(r));
		if (n < 0 && errno == EINTR)
			continue;
		if (n == 0)
			break;
		if (n != (ssize_t)sizeof(r)) {
			log_msg("short report from pid %d", (int)child);
			return op_fail(e, "ESPAWN", 0, "the process did not start");
		}
		if (r.kind == REPORT_PID) {
			*pid = r.pid;
		} else if (r.kind == REPORT_READY && early && !failed && *pid > 0) {
			return 0; /* only its execve is left (exec_after_reply) */
		} else if (r.kind == REPORT_FAIL && !failed) {
			failed = 1;
			*e = r.error;
			e->code[sizeof(e->code) - 1] = '\0';
			e->message[sizeof(e->message) - 1] = '\0';
		}
	}
	if (failed)
		return -1;
	if (*pid <= 0)
		return op_fail(e, "ESPAWN", 0, "the process did not start");
	return 0;
}
