#define _GNU_SOURCE
#include "container.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <unistd.h>

#include "cgroup.h"
#include "confine.h"
#include "layers.h"
#include "log.h"
#include "net.h"
#include "procmask.h"
#include "scratch.h"
#include "shares.h"
#include "stamp.h"

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

/* The /etc files' seed layer (net_seed_layer), on the container's tmpfs. */
#define SEED_DIR SCRATCH_DIR "/seed"

/* lowerdir=[<seed>:]<top>:...:<bottom>, the image's relative to LAYERS_DIR (keeps the option
 * short). */
static int overlay_options(const struct start_req *req, int seeded, char *buf, size_t size)
{
	size_t off = (size_t)snprintf(buf, size, "lowerdir=%s", seeded ? SEED_DIR ":" : "");

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

/* The container's root at SCRATCH_DIR/root: 0, or 2 when its /etc files are in place already
 * (net_seed_layer with `hostname`), -1 on failure. */
static int assemble_rootfs(const struct start_req *req, const char *hostname,
			   struct op_error *e)
{
	const char *root = SCRATCH_DIR "/root";
	char opts[4096], scratch[64];
	int seeded;

	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) {
		log_errno("make / private");
		return op_fail(e, "EMOUNT", errno, "make / private");
	}
	tmpfs_options(scratch, sizeof(scratch), "mode=0755", req->limits.scratch);
	if (do_mount("tmpfs", SCRATCH_DIR, "tmpfs", MS_NOSUID | MS_NODEV, scratch, e) != 0 ||
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
	seeded = req->readonly ? 0 : net_seed_layer(SEED_DIR, LAYERS_DIR, req->layers,
						    req->nlayers, hostname, e);
	if (seeded < 0)
		return -1;
	if (overlay_options(req, seeded, opts, sizeof(opts)) != 0)
		return op_fail(e, "EMOUNT", 0, "rootfs.layers: overlay options too long");
	if (chdir(LAYERS_DIR) != 0) {
		log_errno("chdir %s", LAYERS_DIR);
		return op_fail(e, "EMOUNT", errno, "chdir %s", LAYERS_DIR);
	}
	if (do_mount("overlay", root, "overlay", req->readonly ? MS_RDONLY : 0, opts, e) != 0)
		return -1;
	return seeded == 2 ? 2 : 0;
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
	    do_mount("shm", "/dev/shm", "tmpfs", nosuid, "mode=1777,size=65536k", e) != 0 ||
	    procmask_apply(e) != 0)
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
		else {
			char opts[64];

			tmpfs_options(opts, sizeof(opts), "mode=1777", req->limits.scratch);
			rc = do_mount("tmpfs", m->destination, "tmpfs", MS_NOSUID | MS_NODEV | ro,
				      opts, e);
		}
		if (rc != 0) {
			char detail[sizeof(e->message)];

			snprintf(detail, sizeof(detail), "%s", e->message);
			snprintf(e->message, sizeof(e->message), "mounts[%zu]: %.180s", i, detail);
			return -1;
		}
	}
	return 0;
}

#define CONTAINER_NS (CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC)

/* The clone()d child, PID 1 of the new PID namespace. Never returns. */
static __attribute__((noreturn)) void container_child(const struct start_req *req, int cgroup_fd,
						       struct spawn_fds *f)
{
	struct op_error e;
	int share_fds[MAX_MOUNTS], rootfs = -1;

	if (cgroup_fd >= 0)
		close(cgroup_fd);
	if ((cgroup_fd >= 0 && cgroup_unshare_ns(&e) != 0) ||
	    shares_clone(req, share_fds, &e) != 0 ||
	    (rootfs = assemble_rootfs(req, req->hostname, &e)) < 0 || (stamp(STAMP_ROOTFS), 0) ||
	    (rootfs != 2 &&
	     net_bind_files(SCRATCH_DIR, SCRATCH_DIR "/root", req->hostname, &e) != 0) ||
	    enter_rootfs(&e) != 0 || (stamp(STAMP_ENTERED), 0) || mount_system_fs(&e) != 0 ||
	    mount_requested(req, share_fds, &e) != 0)
		spawn_report_failure(f->report[1], &e);
	if (sethostname(req->hostname, strlen(req->hostname)) != 0) {
		log_errno("sethostname %s", req->hostname);
		op_fail(&e, "ESPAWN", errno, "hostname: sethostname");
		spawn_report_failure(f->report[1], &e);
	}
	stamp(STAMP_MOUNTED);
	spawn_process_and_shim(&req->proc, f);
}

int container_start(const struct start_req *req, int cgroup_fd, struct spawn_fds *f,
		    pid_t *reaper, pid_t *pid, struct op_error *e)
{
	long child;

	if (layers_ensure(req->layers, req->pci, req->nlayers, req->wait_ms, e) != 0 ||
	    shares_ensure(req, e) != 0)
		return -1;
	stamp(STAMP_LAYERS);
	child = cgroup_clone(CONTAINER_NS, cgroup_fd);
	if (child < 0) {
		log_errno("clone container %s", req->container);
		return op_fail(e, "ESPAWN", errno, "clone");
	}
	if (child == 0)
		container_child(req, cgroup_fd, f);
	stamp(STAMP_CLONED);
	spawn_fds_close_child_side(f);
	*reaper = (pid_t)child;
	if (spawn_await(f->report[0], *reaper, req->proc.early_reply, pid, e) != 0) {
		kill(*reaper, SIGKILL);
		return -1;
	}
	stamp(STAMP_AWAITED);
	return 0;
}

/* --- a container prepared ahead of its START (PREPARE) --------------------------------------
 *
 * The prepared child does everything of a START that does not depend on the START's contents:
 * rootfs, namespaces, /etc files (rewritten by init at START), /proc /sys /dev, and it carries
 * a bind of each 9p tag at CARRIED_DIR inside its root. Then it waits on a socketpair for the
 * START's payload and spawn descriptors, makes the requested mounts from the carried tags,
 * unmounts them, and goes on like any container. No process of the container runs before it
 * has dropped the carried tags. */

#define CARRIED_DIR "/.hypervm-shares" /* no longer than SHARES_DIR */
#define PREPARED_MAX_PAYLOAD (128u * 1024u)
#define PREPARED_FDS 5
#define PREPARED_TIMEOUT_MS 30000

static struct {
	pid_t pid; /* 0: none */
	int sock;  /* init's end of the socketpair */
	char layers[MAX_LAYERS][MAX_SERIAL_LEN + 1];
	size_t nlayers;
	int readonly;
	char tags[MAX_MOUNTS][MAX_TAG_LEN + 1];
	size_t ntags;
	int net_files; /* /etc files were bound (NETWORK had been configured) */
	char cgroup[CGROUP_NAME_MAX]; /* born in it; "": none */
} prepared = {.sock = -1};

/* release_cgroup: the prepared container is gone, not handed to a START */
static void drop_prepared(int release_cgroup)
{
	if (prepared.sock >= 0)
		close(prepared.sock); /* EOF: a waiting child exits */
	prepared.sock = -1;
	prepared.pid = 0;
	if (release_cgroup)
		cgroup_release(prepared.cgroup);
	prepared.cgroup[0] = '\0';
}

/* In the prepared child: the START's 9p mounts as clones of the carried tags, the rest as
 * usual, then the carried tags unmounted. (The child's copy of `prepared` predates it being
 * filled: the tags come from the PREPARE request.) */
static int prepared_mounts(const struct start_req *req, const struct prepare_req *prep,
			   struct op_error *e)
{
	int fds[MAX_MOUNTS];
	int rc;

	if (shares_clone_from(CARRIED_DIR, req, fds, e) != 0)
		return -1;
	rc = mount_requested(req, fds, e);
	for (size_t i = 0; i < prep->nshares; i++) {
		char path[sizeof(CARRIED_DIR) + MAX_TAG_LEN + 2];

		snprintf(path, sizeof(path), "%s/%s", CARRIED_DIR, prep->shares[i]);
		if (umount2(path, MNT_DETACH) != 0 || rmdir(path) != 0) {
			log_errno("drop the carried tag %s", path);
			return op_fail(e, "EMOUNT", errno, "unmount the carried 9p tag");
		}
	}
	if (prep->nshares > 0 && rmdir(CARRIED_DIR) != 0 && errno != ENOENT)
		log_errno("rmdir %s", CARRIED_DIR);
	return rc;
}

/* In the process forked ahead in the prepared container: wait for the START, then finish it,
 * handing the reaper (over `shim_sock`) what it needs to be the shim. Never returns. */
static __attribute__((noreturn)) void prepared_wait(const struct prepare_req *prep, int sock,
						    int scratch_fd, int shim_sock)
{
	uint32_t mask = 0;
	char *payload = malloc(PREPARED_MAX_PAYLOAD);
	char control[CMSG_SPACE(sizeof(int) * PREPARED_FDS)];
	struct iovec iov[2] = {{&mask, sizeof(mask)}, {payload, PREPARED_MAX_PAYLOAD}};
	struct msghdr msg = {.msg_iov = iov, .msg_iovlen = 2, .msg_control = control,
			     .msg_controllen = sizeof(control)};
	int got[PREPARED_FDS], ngot = 0, next = 0;
	struct spawn_fds f;
	int *child_ends[PREPARED_FDS] = {&f.out[1], &f.err[1], &f.in[0], &f.report[1], &f.status[1]};
	struct request r;
	struct req_error rerr;
	struct op_error e;
	ssize_t n;

	if (payload == NULL)
		_exit(1);
	log_msg("prepared container: process %d waits for its START", (int)spawn_pid_in_init_view());
	spawn_warm_default_path(); /* the START's PATH search walks these, usually */
	/* the bounding set is every START's: off the START's clock (a failure: dropped then) */
	if (confine_drop_bounding_set() != 0)
		log_errno("drop the prepared process's bounding set (again at its START)");
	do
		n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < (ssize_t)sizeof(mask))
		_exit(0); /* init dropped the prepared container */
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			ngot = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
			memcpy(got, CMSG_DATA(c), sizeof(int) * (size_t)ngot);
		}
	close(sock);
	memset(&f, 0xff, sizeof(f)); /* every end -1 */
	for (int i = 0; i < PREPARED_FDS; i++)
		if ((mask & (1u << i)) && next < ngot)
			*child_ends[i] = got[next++];
	if (f.report[1] < 0)
		_exit(1);
	if (request_parse(MSG_START, 1, (const uint8_t *)payload, (size_t)n - sizeof(mask), &r,
			  &rerr) != 0) {
		op_fail(&e, "EINVAL", 0, "%s", rerr.message);
		spawn_report_failure(f.report[1], &e);
	}
	stamp(STAMP_RECEIVED);
	if ((r.u.start.limits.scratch > 0 &&
	     scratch_resize(scratch_fd, r.u.start.limits.scratch, &e) != 0) ||
	    prepared_mounts(&r.u.start, prep, &e) != 0)
		spawn_report_failure(f.report[1], &e);
	close(scratch_fd);
	if (sethostname(r.u.start.hostname, strlen(r.u.start.hostname)) != 0) {
		log_errno("sethostname %s", r.u.start.hostname);
		op_fail(&e, "ESPAWN", errno, "hostname: sethostname");
		spawn_report_failure(f.report[1], &e);
	}
	stamp(STAMP_MOUNTED);
	spawn_forked_process(&r.u.start.proc, &f, shim_sock);
}

/* The clone()d child of PREPARE, PID 1 of the new PID namespace, born in its cgroup (if
 * in_cgroup). Once prepared it forks the process-to-be, which waits for the START
 * (prepared_wait), and waits to become its shim: the fork is off the START's clock. Never
 * returns. */
static __attribute__((noreturn)) void prepared_child(const struct prepare_req *req, int sock,
						      int in_cgroup)
{
	const char *root = SCRATCH_DIR "/root";
	struct op_error e;
	int scratch_fd, shim[2];
	pid_t child;

	memset(&e, 0, sizeof(e));
	if ((in_cgroup && cgroup_unshare_ns(&e) != 0) || assemble_rootfs(&req->rootfs, NULL, &e) != 0)
		goto fail;
	scratch_fd = open(SCRATCH_DIR, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (scratch_fd < 0) {
		log_errno("open %s", SCRATCH_DIR);
		op_fail(&e, "EMOUNT", errno, "open the writable layer");
		goto fail;
	}
	for (size_t i = 0; i < req->nshares; i++) {
		char carried[sizeof(SCRATCH_DIR) + sizeof(CARRIED_DIR) + MAX_TAG_LEN + 8];
		char source[sizeof(SHARES_DIR) + MAX_TAG_LEN + 2];

		snprintf(carried, sizeof(carried), "%s%s/%s", root, CARRIED_DIR, req->shares[i]);
		snprintf(source, sizeof(source), "%s/%s", SHARES_DIR, req->shares[i]);
		if (do_mount(source, carried, NULL, MS_BIND | MS_REC, NULL, &e) != 0)
			goto fail;
	}
	if (net_bind_files(SCRATCH_DIR, root, "localhost", &e) != 0 || enter_rootfs(&e) != 0 ||
	    mount_system_fs(&e) != 0)
		goto fail;
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, shim) != 0 ||
	    (child = fork()) < 0) {
		log_errno("fork the prepared container's process");
		op_fail(&e, "ESPAWN", errno, "fork");
		goto fail;
	}
	if (child == 0) {
		close(shim[0]);
		prepared_wait(req, sock, scratch_fd, shim[1]);
	}
	close(shim[1]);
	close(scratch_fd);
	memset(&e, 0, sizeof(e)); /* an empty code: prepared */
	if (write(sock, &e, sizeof(e)) != (ssize_t)sizeof(e))
		_exit(1); /* the PID namespace's end kills the forked process */
	close(sock); /* the START goes to the forked process */
	spawn_forked_shim(child, shim[0]);
fail:
	if (write(sock, &e, sizeof(e)) < 0)
		log_errno("report the prepare failure");
	_exit(1);
}

int container_prepare(const struct prepare_req *req, struct op_error *e)
{
	const struct limits none = {0, 0, 0};
	char cgroup[CGROUP_NAME_MAX];
	int cgroup_fd;
	struct start_req shares;
	struct op_error ce;
	struct pollfd pfd;
	int sv[2], ahead;
	long child;
	ssize_t n;

	if (prepared.pid != 0)
		return op_fail(e, "EEXIST", 0, "a container is prepared already");
	memset(&shares, 0, sizeof(shares));
	for (size_t i = 0; i < req->nshares; i++)
		shares.mounts[shares.nmounts++] = (struct mount_spec){
		    .kind = MOUNT_9P, .source = req->shares[i], .destination = "/"};
	if (layers_ensure(req->rootfs.layers, req->rootfs.pci, req->rootfs.nlayers,
			  req->rootfs.wait_ms, e) != 0 ||
	    shares_ensure(&shares, e) != 0)
		return -1;
	if ((cgroup_fd = cgroup_create(&none, cgroup, &ahead, e)) == -1)
		return -1;
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
		log_errno("socketpair");
		cgroup_release(cgroup);
		return op_fail(e, "ESPAWN", errno, "socketpair");
	}
	child = cgroup_clone(CONTAINER_NS, cgroup_fd);
	if (cgroup_fd >= 0)
		close(cgroup_fd);
	if (child < 0) {
		log_errno("clone the prepared container");
		close(sv[0]);
		close(sv[1]);
		cgroup_release(cgroup);
		return op_fail(e, "ESPAWN", errno, "clone");
	}
	if (child == 0) {
		close(sv[0]);
		prepared_child(req, sv[1], cgroup[0] != '\0');
	}
	close(sv[1]);
	pfd = (struct pollfd){.fd = sv[0], .events = POLLIN};
	while ((n = poll(&pfd, 1, PREPARED_TIMEOUT_MS)) < 0 && errno == EINTR)
		;
	n = n > 0 ? read(sv[0], &ce, sizeof(ce)) : -1;
	if (n != (ssize_t)sizeof(ce) || ce.code[0] != '\0') {
		kill((pid_t)child, SIGKILL);
		close(sv[0]);
		cgroup_release(cgroup);
		if (n != (ssize_t)sizeof(ce))
			return op_fail(e, "ESPAWN", 0, "the prepared container did not come up");
		*e = ce;
		e->code[sizeof(e->code) - 1] = e->message[sizeof(e->message) - 1] = '\0';
		return -1;
	}
	prepared.pid = (pid_t)child;
	prepared.sock = sv[0];
	memcpy(prepared.cgroup, cgroup, sizeof(prepared.cgroup));
	prepared.nlayers = req->rootfs.nlayers;
	for (size_t i = 0; i < req->rootfs.nlayers; i++)
		snprintf(prepared.layers[i], sizeof(prepared.layers[i]), "%s", req->rootfs.layers[i]);
	prepared.readonly = req->rootfs.readonly;
	prepared.ntags = req->nshares;
	for (size_t i = 0; i < req->nshares; i++)
		snprintf(prepared.tags[i], sizeof(prepared.tags[i]), "%s", req->shares[i]);
	prepared.net_files = net_configured();
	return 0;
}

int container_prepared_fits(const struct start_req *req, size_t payload_len)
{
	if (prepared.pid == 0 || payload_len > PREPARED_MAX_PAYLOAD ||
	    req->readonly != prepared.readonly || req->nlayers != prepared.nlayers ||
	    (net_configured() && !prepared.net_files))
		return 0;
	for (size_t i = 0; i < req->nlayers; i++)
		if (strcmp(req->layers[i], prepared.layers[i]) != 0)
			return 0;
	for (size_t i = 0; i < req->nmounts; i++) {
		size_t t = 0;

		if (req->mounts[i].kind != MOUNT_9P)
			continue;
		while (t < prepared.ntags && strcmp(prepared.tags[t], req->mounts[i].source) != 0)
			t++;
		if (t == prepared.ntags)
			return 0;
	}
	return 1;
}

int container_start_prepared(const struct start_req *req, const uint8_t *payload, size_t len,
			     char cgroup[CGROUP_NAME_MAX], struct spawn_fds *f, pid_t *reaper,
			     pid_t *pid, struct op_error *e)
{
	int ends[PREPARED_FDS] = {f->out[1], f->err[1], f->in[0], f->report[1], f->status[1]};
	int fds[PREPARED_FDS], nfds = 0;
	uint32_t mask = 0;
	char control[CMSG_SPACE(sizeof(int) * PREPARED_FDS)];
	struct iovec iov[2] = {{&mask, sizeof(mask)}, {(void *)payload, len}};
	struct msghdr msg = {.msg_iov = iov, .msg_iovlen = 2, .msg_control = control};
	struct cmsghdr *c;
	char root[32];
	int root_fd;
	ssize_t n;

	snprintf(root, sizeof(root), "/proc/%d/root", (int)prepared.pid);
	root_fd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (root_fd < 0 || net_write_files(root_fd, req->hostname, e) != 0) {
		log_errno("the prepared container %d is unusable", (int)prepared.pid);
		if (root_fd >= 0)
			close(root_fd);
		kill(prepared.pid, SIGKILL);
		drop_prepared(1);
		return 1; /* start it the usual way */
	}
	close(root_fd);
	stamp(STAMP_PREP_FILES);
	/* nothing of the container runs yet: its reaper waits for this START */
	if (cgroup_set_limits(prepared.cgroup, &req->limits, e) != 0) {
		kill(prepared.pid, SIGKILL);
		drop_prepared(1);
		return -1;
	}
	for (int i = 0; i < PREPARED_FDS; i++)
		if (ends[i] >= 0) {
			mask |= 1u << i;
			fds[nfds++] = ends[i];
		}
	memset(control, 0, sizeof(control));
	msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
	c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
	memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
	do
		n = sendmsg(prepared.sock, &msg, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	stamp(STAMP_HANDED);
	*reaper = prepared.pid;
	if (n != (ssize_t)(sizeof(mask) + len)) {
		log_errno("hand the START to the prepared container %d", (int)prepared.pid);
		kill(prepared.pid, SIGKILL);
		drop_prepared(1);
		return 1;
	}
	memcpy(cgroup, prepared.cgroup, CGROUP_NAME_MAX);
	drop_prepared(0);
	spawn_fds_close_child_side(f);
	if (spawn_await(f->report[0], *reaper, req->proc.early_reply, pid, e) != 0) {
		kill(*reaper, SIGKILL);
		return -1;
	}
	stamp(STAMP_AWAITED);
	return 0;
}

void container_prepared_exited(pid_t pid)
{
	if (pid == prepared.pid && pid != 0) {
		log_msg("the prepared container %d ended before its START", (int)pid);
		drop_prepared(1);
	}
}

int container_hold_mounts(pid_t reaper)
{
	char path[64];

	snprintf(path, sizeof(path), "/proc/%d/ns/mnt", (int)reaper);
	return open(path, O_RDONLY | O_CLOEXEC);
}

static int join_namespaces(pid_t reaper, int report_fd)
{
	static const char *const names[] = {"cgroup", "ipc", "uts", "pid", "mnt"};
	int fds[5];
	struct op_error e;

	for (size_t i = 0; i < 5; i++) {
		char path[64];

		snprintf(path, sizeof(path), "/proc/%d/ns/%s", (int)reaper, names[i]);
		fds[i] = open(path, O_RDONLY | O_CLOEXEC);
		if (fds[i] < 0 && i == 0 && errno == ENOENT)
			continue; /* a kernel without cgroups */
		if (fds[i] < 0) {
			log_errno("open %s", path);
			op_fail(&e, "ENOCONT", errno, "container namespace %s", names[i]);
			spawn_report_failure(report_fd, &e);
		}
	}
	for (size_t i = 0; i < 5; i++) {
		if (fds[i] < 0)
			continue;
		if (setns(fds[i], 0) != 0) {
			log_errno("setns %s of pid %d", names[i], (int)reaper);
			op_fail(&e, "ESPAWN", errno, "join the container's %s namespace", names[i]);
			spawn_report_failure(report_fd, &e);
		}
		close(fds[i]);
	}
	return 0;
}

int container_exec(const char *cgroup, pid_t reaper, const struct proc_spec *p,
		   struct spawn_fds *f, pid_t *shim, pid_t *pid, struct op_error *e)
{
	int cgroup_fd = cgroup_open(cgroup, e);
	long child;

	if (cgroup_fd == -1)
		return -1;
	child = cgroup_clone(0, cgroup_fd); /* born in the container's cgroup */
	if (cgroup_fd >= 0)
		close(cgroup_fd);
	if (child < 0) {
		log_errno("fork");
		return op_fail(e, "ESPAWN", errno, "fork");
	}
	if (child == 0) {
		join_namespaces(reaper, f->report[1]);
		spawn_process_and_shim(p, f);
	}
	spawn_fds_close_child_side(f);
	*shim = (pid_t)child;
	if (spawn_await(f->report[0], child, p->early_reply, pid, e) != 0) {
		kill((pid_t)child, SIGKILL);
		return -1;
	}
	return 0;
}
