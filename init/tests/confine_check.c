/* confine-check: apply init's container confinement (src/confine.c) to itself, as init does to
 * a container process, then try what the confinement must refuse; one "name=value" line per
 * probe, for tests/unit/test_init_confine.py. Runs on the host as root.
 *
 *   confine-check [--no-new-privs] [--uid UID]
 *   confine-check --verdicts     (the filter emulated over every syscall number, unconfined)
 *
 * Values: "ok", or the errno name of the failure; "signal=N" for a probe that killed its fork. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../src/confine.h"

static const char *result(long rc)
{
	static char buf[32];

	if (rc >= 0)
		return "ok";
	snprintf(buf, sizeof(buf), "%s", strerrorname_np(errno) ? strerrorname_np(errno) : "?");
	return buf;
}

static void status_line(const char *key)
{
	char line[256];
	FILE *f = fopen("/proc/self/status", "r");

	while (f != NULL && fgets(line, sizeof(line), f) != NULL)
		if (strncmp(line, key, strlen(key)) == 0 && line[strlen(key)] == ':') {
			char *v = line + strlen(key) + 1;
			v += strspn(v, " \t");
			printf("%s=%s", key, v);
		}
	if (f != NULL)
		fclose(f);
}

/* Run fn in a fork; "ok"/errno as it prints, or signal=N when the fork was killed. */
static void in_fork(const char *name, void (*fn)(void))
{
	int st;
	pid_t pid;

	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		fn();
		_exit(0);
	}
	waitpid(pid, &st, 0);
	if (WIFSIGNALED(st))
		printf("%s=signal=%d\n", name, WTERMSIG(st));
}

static void i386_getpid(void)
{
	long ret = 20; /* __NR_getpid of i386 */

	__asm__ volatile("int $0x80" : "+a"(ret) : : "memory");
	printf("i386_syscall=ok\n");
}

static void x32_getpid(void)
{
	printf("x32_syscall=%s\n", result(syscall(0x40000000L | SYS_getpid)));
}

/* --verdicts: the filter (emulated) against its specification, for every syscall number and
 * the argument-dependent cases: the count of numbers it denies and of mismatches. */
static int verdicts(void)
{
	const uint32_t arch = 0xc000003eU, eperm = 0x00050000U | EPERM, allow = 0x7fff0000U;
	size_t ndenied, denied_seen = 0, mismatches = 0;
	const uint32_t *denied = confine_denied_syscalls(&ndenied);

	for (uint32_t nr = 0; nr < 1024; nr++) {
		uint32_t want = allow, arg = 0;
		int in_list = 0;

		for (size_t i = 0; i < ndenied; i++)
			in_list |= denied[i] == nr;
		if (in_list)
			want = eperm;
		else if (nr == SYS_clone3)
			want = 0x00050000U | ENOSYS;
		else if (nr == SYS_personality)
			arg = 0x8; /* UNAME26: allowed */
		else if (nr == SYS_socket)
			arg = AF_INET;
		denied_seen += confine_filter_verdict(arch, nr, arg) == eperm;
		mismatches += confine_filter_verdict(arch, nr, arg) != want;
	}
	/* the argument-dependent ones, both ways; another ABI */
	mismatches += confine_filter_verdict(arch, SYS_clone, CLONE_NEWUSER) != eperm;
	mismatches += confine_filter_verdict(arch, SYS_clone, SIGCHLD) != allow;
	mismatches += confine_filter_verdict(arch, SYS_personality, ADDR_NO_RANDOMIZE) != eperm;
	mismatches += confine_filter_verdict(arch, SYS_socket, 40) != eperm;
	mismatches += confine_filter_verdict(arch, 0x40000000U | SYS_getpid, 0) != 0x80000000U;
	mismatches += confine_filter_verdict(0x40000003U, SYS_getpid, 0) != 0x80000000U;
	printf("verdict_denied=%zu\nverdict_list=%zu\nverdict_mismatches=%zu\n", denied_seen,
	       ndenied, mismatches);
	return 0;
}

int main(int argc, char **argv)
{
	struct op_error e;
	int nnp = 0;
	uint32_t uid = 0;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--verdicts") == 0)
			return verdicts();
		if (strcmp(argv[i], "--no-new-privs") == 0)
			nnp = 1;
		else if (strcmp(argv[i], "--uid") == 0 && i + 1 < argc)
			uid = (uint32_t)atoi(argv[++i]);
	}
	if (confine_before_credentials(nnp, &e) != 0 || setgid(uid) != 0 || setuid(uid) != 0 ||
	    confine_after_credentials(uid, &e) != 0) {
		printf("confine=%s %s\n", e.code, e.message);
		return 1;
	}
	printf("confine=ok\n");
	status_line("CapEff");
	status_line("CapPrm");
	status_line("CapInh");
	status_line("CapBnd");
	status_line("CapAmb");
	status_line("NoNewPrivs");
	status_line("Seccomp");
	printf("getpid=%s\n", result(syscall(SYS_getpid)));
	printf("unshare_user=%s\n", result(unshare(CLONE_NEWUSER)));
	printf("unshare_fs=%s\n", result(unshare(CLONE_FS)));
	printf("clone_newuser=%s\n",
	       result(syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)));
	printf("clone3=%s\n", result(syscall(SYS_clone3, NULL, 0)));
	printf("keyctl=%s\n", result(syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3, 0)));
	printf("add_key=%s\n", result(syscall(SYS_add_key, "user", "k", "v", 1, -3)));
	printf("bpf=%s\n", result(syscall(SYS_bpf, 0, NULL, 0)));
	printf("userfaultfd=%s\n", result(syscall(SYS_userfaultfd, 0)));
	printf("perf_event_open=%s\n", result(syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0)));
	printf("mount=%s\n", result(mount("none", "/tmp", "tmpfs", 0, NULL)));
	printf("io_uring_setup=%s\n", result(syscall(SYS_io_uring_setup, 1, NULL)));
	printf("personality_query=%s\n", result(personality(0xffffffff)));
	printf("personality_odd=%s\n", result(personality(ADDR_NO_RANDOMIZE)));
	printf("socket_vsock=%s\n", result(socket(40, SOCK_STREAM, 0)));
	printf("socket_inet=%s\n", result(socket(AF_INET, SOCK_STREAM, 0)));
	in_fork("i386_syscall", i386_getpid);
	in_fork("x32_syscall", x32_getpid);
	return 0;
}
