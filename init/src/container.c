#define _GNU_SOURCE
#include "container.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "layers.h"
#include "log.h"
#include "net.h"
#include "shares.h"

static int mkdir_p(const char *path, struct op_error *e)
{
	char buf[MAX_PATH_LEN + 1];
	size_t len = strlen(path);

	if (len > MAX_PATH_LEN)
		return op_fail(e, "EMOUNT", ENAMETOOLONG, "%.100s", path);
	memcpy(buf, path, len + 1);
	for (char *p = buf + 1;; p++) {
		if (*p != '/' && *p != '\0')
			continue;
		char saved = *p;
		*p = '\0';
		if (mkdir(buf, 0755) != 0 && errno != EEXIST) {
			log_errno("mkdir %s", buf);
			return op_fail(e, "EMOUNT", errno, "mkdir %.100s", buf);
		}
		*p = saved;
		if (saved == '\0')
			return 0;
	}
}

static int do_mount(const char *src, const char *dst, const char *type, unsigned long flags,
		    const char *data, struct op_error *e)
{
	if (mkdir_p(dst, e) != 0)
		return -1;
	if (mount(src, dst, type, flags, data) != 0) {
		log_errno("mount %s (%s) on %s", src, type ? type : "bind", dst);
		return op_fail(e, "EMOUNT", errno, "mount %s on %.100s", type ? type : src, dst);
	}
	return 0;
}

/* lowerdir=<top>:...:<bottom>, relative to LAYERS_DIR (keeps the option short). */
static int overlay_options(const struct start_req *req, char *buf, size_t size)
{
	size_t off = (size_t)snprintf(buf, size, "lowerdir=");

	for (size_t i = req->nlayers; i-- > 0;) {
		int n = snprintf(buf + off, size - off, "%s%s", req->layers[i], i > 0 ? ":" : "");
		if (n < 0 || (size_t)n >= size - off)
			return -1;
		off += (size_t)n;
	}
	if (!req->readonly) {
		int n = snprintf(buf + off, size - off, ",upperdir=%s/upper,workdir=%s/work",
				 SCRATCH_DIR, SCRATCH_DIR);
		if (n < 0 || (size_t)n >= size - off)
			return -1;
	}
	return 0;
}

static int assemble_rootfs(const struct start_req *req, struct op_error *e)
{
	const char *root = SCRATCH_DIR "/root";
	char opts[4096];

	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) {
		log_errno("make / private");
		return op_fail(e, "EMOUNT", errno, "make / private");
	}
	if (do_mount("tmpfs", SCRATCH_DIR, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755", e) != 0 ||
	    mkdir_p(SCRATCH_DIR "/upper", e) != 0 || mkdir_p(SCRATCH_DIR "/work", e) != 0 ||
	    mkdir_p(root, e) != 0)
		return -1;
	if (req->readonly && req->nlayers == 1) {
		char layer[128];

		snprintf(layer, sizeof(layer), "%s/%s", LAYERS_DIR, req->layers[0]);
		if (do_mount(layer, root, NULL, MS_BIND, NULL, e) != 0 ||
		    do_mount(NULL, root, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL, e) != 0)
			return -1;
		return 0;
	}
	if (overlay_options(req, opts, sizeof(opts)) != 0)
		return op_fail(e, "EMOUNT", 0, "rootfs.layers: overlay options too long");
	if (chdir(LAYERS_DIR) != 0) {
		log_errno("chdir %s", LAYERS_DIR);
		return op_fail(e, "EMOUNT", errno, "chdir %s", LAYERS_DIR);
	}
	return do_mount("overlay", root, "overlay", req->readonly ? MS_RDONLY : 0, opts, e);
}

static int enter_rootfs(struct op_error *e)
{
	if (chdir(SCRATCH_DIR "/root") != 0 || syscall(SYS_pivot_root, ".", ".") != 0 ||
	    umount2(".", MNT_DETACH) != 0 || chdir("/") != 0) {
		log_errno("pivot_root into the container root");
		return op_fail(e, "EMOUNT", errno, "pivot_root into the container root");
	}
	return 0;
}

static int make_dev_nodes(struct op_error *e)
{
	static const struct {
		const char *name;
		unsigned major, minor;
	} nodes[] = {{"/dev/null", 1, 3},    {"/dev/zero", 1, 5},   {"/dev/full", 1, 7},
		     {"/dev/random", 1, 8},  {"/dev/urandom", 1, 9}, {"/dev/tty", 5, 0}};
	static const struct {
		const char *target, *link;
	} links[] = {{"pts/ptmx", "/dev/ptmx"},           {"/proc/self/fd", "/dev/fd"},
		     {"/proc/self/fd/0", "/dev/stdin"},    {"/proc/self/fd/1", "/dev/stdout"},
		     {"/proc/self/fd/2", "/dev/stderr"}};

	for (size_t i = 0; i < sizeof(nodes) / sizeof(nodes[0]); i++) {
		if (mknod(nodes[i].name, S_IFCHR | 0666, makedev(nodes[i].major, nodes[i].minor)) !=
			0 ||
		    chmod(nodes[i].name, 0666) != 0) {
			log_errno("mknod %s", nodes[i].name);
			return op_fail(e, "EMOUNT", errno, "mknod %s", nodes[i].name);
		}
	}
	for (size_t i = 0; i < sizeof(links) / sizeof(links[0]); i++) {
		if (symlink(links[i].target, links[i].link) != 0) {
			log_errno("symlink %s", links[i].link);
			return op_fail(e, "EMOUNT", errno, "symlink %s", links[i].link);
		}
	}
	return 0;
}

static int mount_system_fs(struct op_error *e)
{
	const unsigned long nosuid = MS_NOSUID | MS_NODEV | MS_NOEXEC;

	if (do_mount("proc", "/proc", "proc", nosuid, NULL, e) != 0 ||
	    do_mount("sysfs", "/sys", "sysfs", nosuid | MS_RDONLY, NULL, e) != 0 ||
	    do_mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=0755,size=65536k",
		     e) != 0 ||
	    make_dev_nodes(e) != 0 ||
	    do_mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
		     "newinstance,ptmxmode=0666,mode=0620", e) != 0 ||
	    do_mount("shm", "/dev/shm", "tmpfs", nosuid, "mode=1777", e) != 0)
		return -1;
	/* optional, read-only: lets programs read their limits; no cgroups, no failure */
	if (mount("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid | MS_RDONLY, NULL) != 0 &&
	    errno != ENOENT && errno != ENODEV)
		log_errno("mount cgroup2 in the container (ignored)");
	return 0;
}

static int mount_requested(const struct start_req *req, const int *share_fds,
			   struct op_error *e)
{
	for (size_t i = 0; i < req->nmounts; i++) {
		const struct mount_spec *m = &req->mounts[i];
		unsigned long ro = m->readonly ? MS_RDONLY : 0;
		int rc;

		if (m->kind == MOUNT_9P)
			rc = mkdir_p(m->destination, e) != 0
				     ? -1
				     : shares_attach(share_fds[i], m->destination, m->readonly, e);
		else
			rc = do_mount("tmpfs", m->destination, "tmpfs", MS_NOSUID | MS_NODEV | ro,
				      "mode=1777", e);
		if (rc != 0) {
			char detail[sizeof(e->message)];

			snprintf(detail, sizeof(detail), "%s", e->message);
			snprintf(e->message, sizeof(e->message), "mounts[%zu]: %.180s", i, detail);
			return -1;
		}
	}
	return 0;
}

/* The clone()d child, PID 1 of the new PID namespace. Never returns. */
static __attribute__((noreturn)) void container_child(const struct start_req *req,
						       struct spawn_fds *f)
{
	struct op_error e;
	int share_fds[MAX_MOUNTS];

	if (shares_clone(req, share_fds, &e) != 0 || assemble_rootfs(req, &e) != 0 ||
	    net_bind_files(SCRATCH_DIR, SCRATCH_DIR "/root", req->hostname, &e) != 0 ||
	    enter_rootfs(&e) != 0 || mount_system_fs(&e) != 0 ||
	    mount_requested(req, share_fds, &e) != 0)
		spawn_report_failure(f->report[1], &e);
	if (sethostname(req->hostname, strlen(req->hostname)) != 0) {
		log_errno("sethostname %s", req->hostname);
		op_fail(&e, "ESPAWN", errno, "hostname: sethostname");
		spawn_report_failure(f->report[1], &e);
	}
	spawn_process_and_shim(&req->proc, f);
}

int container_start(const struct start_req *req, struct spawn_fds *f, pid_t *reaper, pid_t *pid,
		    struct op_error *e)
{
	const long flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC | SIGCHLD;
	long child;

	if (layers_ensure(req->layers, req->nlayers, req->wait_ms, e) != 0 ||
	    shares_ensure(req, e) != 0)
		return -1;
	/* fork() semantics: no new stack, the child continues here */
	child = syscall(SYS_clone, flags, 0, 0, 0, 0);
	if (child < 0) {
		log_errno("clone container %s", req->container);
		return op_fail(e, "ESPAWN", errno, "clone");
	}
	if (child == 0)
		container_child(req, f);
	spawn_fds_close_child_side(f);
	*reaper = (pid_t)child;
	if (spawn_await(f->report[0], *reaper, pid, e) != 0) {
		kill(*reaper, SIGKILL);
		return -1;
	}
	return 0;
}

static int join_namespaces(pid_t reaper, int report_fd)
{
	static const char *const names[] = {"ipc", "uts", "pid", "mnt"};
	int fds[4];
	struct op_error e;

	for (size_t i = 0; i < 4; i++) {
		char path[64];

		snprintf(path, sizeof(path), "/proc/%d/ns/%s", (int)reaper, names[i]);
		fds[i] = open(path, O_RDONLY | O_CLOEXEC);
		if (fds[i] < 0) {
			log_errno("open %s", path);
			op_fail(&e, "ENOCONT", errno, "container namespace %s", names[i]);
			spawn_report_failure(report_fd, &e);
		}
	}
	for (size_t i = 0; i < 4; i++) {
		if (setns(fds[i], 0) != 0) {
			log_errno("setns %s of pid %d", names[i], (int)reaper);
			op_fail(&e, "ESPAWN", errno, "join the container's %s namespace", names[i]);
			spawn_report_failure(report_fd, &e);
		}
		close(fds[i]);
	}
	return 0;
}

int container_exec(pid_t reaper, const struct proc_spec *p, struct spawn_fds *f, pid_t *shim,
		   pid_t *pid, struct op_error *e)
{
	pid_t child = fork();

	if (child < 0) {
		log_errno("fork");
		return op_fail(e, "ESPAWN", errno, "fork");
	}
	if (child == 0) {
		join_namespaces(reaper, f->report[1]);
		spawn_process_and_shim(p, f);
	}
	spawn_fds_close_child_side(f);
	*shim = child;
	if (spawn_await(f->report[0], child, pid, e) != 0) {
		kill(child, SIGKILL);
		return -1;
	}
	return 0;
}
