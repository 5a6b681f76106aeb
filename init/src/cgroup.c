#define _GNU_SOURCE
#include "cgroup.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "log.h"
#include "stamp.h"
#include "sysfs.h"

#define CGROUP_ROOT "/sys/fs/cgroup"
#define MAX_RELEASED 64

static enum { UNKNOWN, AVAILABLE, MISSING } controllers = UNKNOWN;
static uint32_t next_seq = 1;
static char spares[CGROUP_SPARES][CGROUP_NAME_MAX]; /* made ahead, taken in order */
static size_t nspares;
static int spare_failed; /* housekeeping stops trying (a START still tries, and says why) */
static char released[MAX_RELEASED][CGROUP_NAME_MAX];
static size_t nreleased;

static void cgroup_path(char *buf, size_t size, const char *name, const char *file)
{
	snprintf(buf, size, "%s/%s%s%s", CGROUP_ROOT, name, file ? "/" : "", file ? file : "");
}

/* Hand the memory and pids controllers to the root's children, once. */
static int have_controllers(void)
{
	if (controllers == UNKNOWN) {
		int ok = sysfs_write(CGROUP_ROOT "/cgroup.subtree_control", "+memory +pids") == 0;

		if (!ok)
			log_errno("no cgroup v2 memory and pids controllers: containers get no limits");
		controllers = ok ? AVAILABLE : MISSING;
	}
	return controllers == AVAILABLE;
}

static int set_value(const char *name, const char *file, uint64_t value, struct op_error *e)
{
	char path[96], text[32];

	cgroup_path(path, sizeof(path), name, file);
	snprintf(text, sizeof(text), "%llu", (unsigned long long)value);
	if (sysfs_write(path, text) != 0) {
		log_errno("write %s to %s", text, path);
		return op_fail(e, "ESPAWN", errno, "limits: set %s", file);
	}
	return 0;
}

/* One more fresh spare: an OOM kill in it ends all of it, like Mesos' memory limitation. */
static int make_spare(struct op_error *e)
{
	char name[CGROUP_NAME_MAX], dir[64];

	snprintf(name, sizeof(name), "ct%u", next_seq++);
	cgroup_path(dir, sizeof(dir), name, NULL);
	if (mkdir(dir, 0755) != 0) {
		log_errno("mkdir %s", dir);
		return op_fail(e, "ESPAWN", errno, "limits: make the container's cgroup");
	}
	if (set_value(name, "memory.oom.group", 1, e) != 0) {
		rmdir(dir);
		return -1;
	}
	memcpy(spares[nspares++], name, CGROUP_NAME_MAX);
	return 0;
}

int cgroup_set_limits(const char *name, const struct limits *l, struct op_error *e)
{
	if (name[0] == '\0') {
		if (l->memory == 0 && l->pids == 0)
			return 0;
		return op_fail(e, "ESPAWN", 0, "limits: the guest kernel has no cgroup v2 memory "
					       "and pids controllers");
	}
	if ((l->memory > 0 && set_value(name, "memory.max", l->memory, e) != 0) ||
	    (l->pids > 0 && set_value(name, "pids.max", l->pids, e) != 0))
		return -1;
	return 0;
}

int cgroup_open(const char *name, struct op_error *e)
{
	char dir[64];
	int fd;

	if (name[0] == '\0')
		return -2;
	cgroup_path(dir, sizeof(dir), name, NULL);
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) {
		log_errno("open %s", dir);
		return op_fail(e, "ESPAWN", errno, "open the container's cgroup");
	}
	return fd;
}

int cgroup_create(const struct limits *l, char name[CGROUP_NAME_MAX], int *ahead,
		  struct op_error *e)
{
	int fd;

	name[0] = '\0';
	*ahead = 0;
	if (!have_controllers())
		return cgroup_set_limits(name, l, e) == 0 ? -2 : -1;
	*ahead = nspares > 0;
	if (nspares == 0 && make_spare(e) != 0)
		return -1;
	memcpy(name, spares[0], CGROUP_NAME_MAX);
	memmove(spares[0], spares[1], --nspares * CGROUP_NAME_MAX);
	if (cgroup_set_limits(name, l, e) != 0 || (fd = cgroup_open(name, e)) < 0) {
		cgroup_release(name);
		name[0] = '\0';
		return -1;
	}
	return fd;
}

/* clone3(2)'s arguments, version 2 (with cgroup); musl has no <linux/sched.h> */
struct clone_args_v2 {
	uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid,
	    set_tid_size, cgroup;
};
#define CLONE_INTO_CGROUP_FLAG 0x200000000ULL

long cgroup_clone(unsigned long ns_flags, int cgroup_fd)
{
	struct clone_args_v2 args = {.flags = ns_flags, .exit_signal = SIGCHLD};

	if (cgroup_fd < 0)
		return syscall(SYS_clone, ns_flags | SIGCHLD, 0, 0, 0, 0);
	args.flags |= CLONE_INTO_CGROUP_FLAG;
	args.cgroup = (uint64_t)cgroup_fd;
	/* no stack: fork() semantics, the child continues here */
	return syscall(SYS_clone3, &args, sizeof(args));
}

int cgroup_unshare_ns(struct op_error *e)
{
	if (unshare(CLONE_NEWCGROUP) != 0) {
		log_errno("unshare the cgroup namespace");
		return op_fail(e, "ESPAWN", errno, "limits: new cgroup namespace");
	}
	return 0;
}

unsigned long cgroup_oom_kills(const char *name)
{
	char path[96], buf[512], *at;
	int fd;
	ssize_t n;

	if (name[0] == '\0')
		return 0;
	cgroup_path(path, sizeof(path), name, "memory.events");
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	at = strstr(buf, "\noom_kill ");
	return at != NULL ? strtoul(at + strlen("\noom_kill "), NULL, 10) : 0;
}

void cgroup_release(const char *name)
{
	if (name[0] == '\0')
		return;
	if (nreleased == MAX_RELEASED) {
		log_msg("too many cgroups to remove: %s stays", name);
		return;
	}
	snprintf(released[nreleased++], CGROUP_NAME_MAX, "%s", name);
}

int cgroup_spare_due(int in_run)
{
	return (nspares == 0 || (nspares < CGROUP_SPARES && !in_run)) && !spare_failed &&
	       controllers != MISSING;
}

int cgroup_release_pending(void) { return nreleased > 0; }

void cgroup_housekeeping(int spare_now, int in_run, int quiet)
{
	struct op_error e;
	int rc;

	for (size_t i = 0; i < nreleased;) {
		char dir[64];

		cgroup_path(dir, sizeof(dir), released[i], NULL);
		rc = rmdir(dir);
		if (rc != 0 && errno == EBUSY) {
			i++; /* a process of the ended container is still exiting: next time */
			continue;
		}
		if (rc != 0 && errno != ENOENT)
			log_errno("remove the cgroup %s", dir);
		memcpy(released[i], released[--nreleased], CGROUP_NAME_MAX);
	}
	if (spare_now && nspares == 0 && cgroup_spare_due(in_run) && have_controllers()) {
		spare_failed = make_spare(&e) != 0;
		if (in_run)
			stamp(STAMP_SPARE);
	}
	/* the others only in a quiet guest with no process (a template, an idle VM): never on
	 * a cold run's way from READY to its START, nor beside a running process */
	while (quiet && !in_run && cgroup_spare_due(in_run) && have_controllers())
		spare_failed = make_spare(&e) != 0;
}
