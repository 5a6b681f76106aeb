#define _GNU_SOURCE
#include "cgroup.h"

#include <errno.h>
#include <sched.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#define CGROUP_ROOT "/sys/fs/cgroup"
/* the prefix keeps a container name (".." or "memory.max") from meaning anything else */
#define CGROUP_PREFIX CGROUP_ROOT "/ct-"
#define REMOVE_TRIES 100

static void cgroup_path(char *buf, size_t size, const char *container, const char *file)
{
	snprintf(buf, size, "%s%s%s%s", CGROUP_PREFIX, container, file ? "/" : "", file ? file : "");
}

static int write_file(const char *path, const char *value)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = write(fd, value, strlen(value));
	if (n < 0) {
		int saved = errno;
		close(fd);
		errno = saved;
		return -1;
	}
	close(fd);
	return 0;
}

/* Hand the memory and pids controllers to the root's children (once). */
static int enable_controllers(void)
{
	static int enabled;

	if (enabled)
		return 0;
	if (write_file(CGROUP_ROOT "/cgroup.subtree_control", "+memory +pids") != 0)
		return -1;
	enabled = 1;
	return 0;
}

static int remove_dir(const char *path, int tries)
{
	const struct timespec tick = {0, 10 * 1000 * 1000};

	for (int i = 0; i < tries; i++) {
		if (rmdir(path) == 0 || errno == ENOENT)
			return 0;
		if (errno != EBUSY)
			return -1;
		nanosleep(&tick, NULL); /* the processes of a container that just ended */
	}
	return -1;
}

static int set_limit(const char *container, const char *file, uint64_t value,
		     struct op_error *e)
{
	char path[128], text[32];

	if (value == 0)
		return 0;
	cgroup_path(path, sizeof(path), container, file);
	snprintf(text, sizeof(text), "%llu", (unsigned long long)value);
	if (write_file(path, text) != 0) {
		log_errno("write %s to %s", text, path);
		return op_fail(e, "ESPAWN", errno, "limits: set %s", file);
	}
	return 0;
}

int cgroup_create(const char *container, const struct limits *l, struct op_error *e)
{
	int asked = l->memory != 0 || l->pids != 0;
	char dir[128], procs[160];
	int fd;

	cgroup_path(dir, sizeof(dir), container, NULL);
	if (enable_controllers() != 0) {
		if (!asked)
			return -2;
		log_errno("enable the memory and pids controllers");
		return op_fail(e, "ESPAWN", errno, "limits: no cgroup v2 memory and pids "
						  "controllers in the guest kernel");
	}
	if (remove_dir(dir, REMOVE_TRIES) != 0)
		log_errno("remove the leftover cgroup %s", dir);
	if (mkdir(dir, 0755) != 0) {
		log_errno("mkdir %s", dir);
		return op_fail(e, "ESPAWN", errno, "limits: make the container's cgroup");
	}
	/* an OOM kill ends the whole container, like Mesos' memory limitation */
	if (set_limit(container, "memory.max", l->memory, e) != 0 ||
	    set_limit(container, "pids.max", l->pids, e) != 0 ||
	    set_limit(container, "memory.oom.group", 1, e) != 0)
		goto fail;
	cgroup_path(procs, sizeof(procs), container, "cgroup.procs");
	fd = open(procs, O_WRONLY | O_CLOEXEC);
	if (fd < 0) {
		log_errno("open %s", procs);
		op_fail(e, "ESPAWN", errno, "limits: open the container's cgroup");
		goto fail;
	}
	return fd;
fail:
	rmdir(dir);
	return -1;
}

int cgroup_attach(int procs_fd, pid_t pid, struct op_error *e)
{
	char text[16];
	ssize_t n;

	snprintf(text, sizeof(text), "%d", (int)pid);
	n = write(procs_fd, text, strlen(text));
	if (n < 0) {
		log_errno("move pid %d into its cgroup", (int)pid);
		return op_fail(e, "ESPAWN", errno, "limits: enter the container's cgroup");
	}
	return 0;
}

int cgroup_join_existing(const char *container, struct op_error *e)
{
	char procs[160];
	int fd, rc;

	cgroup_path(procs, sizeof(procs), container, "cgroup.procs");
	fd = open(procs, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return 0; /* a container without a cgroup (no cgroup v2 in the kernel) */
	rc = cgroup_attach(fd, 0, e);
	close(fd);
	return rc;
}

unsigned long cgroup_oom_kills(const char *container)
{
	char path[128], buf[512], *at;
	int fd;
	ssize_t n;

	cgroup_path(path, sizeof(path), container, "memory.events");
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

void cgroup_remove(const char *container)
{
	char dir[128];

	cgroup_path(dir, sizeof(dir), container, NULL);
	if (remove_dir(dir, 1) != 0)
		log_errno("remove the cgroup %s", dir);
}

int cgroup_enter(int procs_fd, struct op_error *e)
{
	int rc;

	if (procs_fd < 0)
		return 0;
	rc = cgroup_attach(procs_fd, 0, e);
	close(procs_fd);
	return rc != 0 ? -1 : cgroup_unshare_ns(0, e);
}

int cgroup_unshare_ns(int remount, struct op_error *e)
{
	if (unshare(CLONE_NEWCGROUP) != 0) {
		log_errno("unshare the cgroup namespace");
		return op_fail(e, "ESPAWN", errno, "limits: new cgroup namespace");
	}
	if (remount && umount2(CGROUP_ROOT, MNT_DETACH) == 0 &&
	    mount("cgroup2", CGROUP_ROOT, "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY,
		  NULL) != 0)
		log_errno("mount cgroup2 in the container (ignored)");
	return 0;
}
