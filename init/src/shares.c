#define _GNU_SOURCE
#include "shares.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "log.h"

/* No cache= option: uncached 9p, so what a process wrote is on the host once its write()
 * returned, and the host may end the VM without a power-off (executor.vm VM.discard). */
#define NINEP_OPTIONS "trans=virtio,version=9p2000.L,msize=262144"
#define MAX_SHARES 64

#ifndef OPEN_TREE_CLONE
#define OPEN_TREE_CLONE 1
#endif
#ifndef OPEN_TREE_CLOEXEC
#define OPEN_TREE_CLOEXEC O_CLOEXEC
#endif
#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#endif

static char mounted[MAX_SHARES][MAX_TAG_LEN + 1];
static size_t nmounted;

static int is_mounted(const char *tag)
{
	for (size_t i = 0; i < nmounted; i++)
		if (strcmp(mounted[i], tag) == 0)
			return 1;
	return 0;
}

static int mount_share(const char *tag, struct op_error *e)
{
	char target[sizeof(SHARES_DIR) + MAX_TAG_LEN + 2];

	if (nmounted >= MAX_SHARES)
		return op_fail(e, "EMOUNT", 0, "more than %d distinct 9p tags", MAX_SHARES);
	snprintf(target, sizeof(target), "%s/%s", SHARES_DIR, tag);
	if ((mkdir(SHARES_DIR, 0755) != 0 && errno != EEXIST) ||
	    (mkdir(target, 0755) != 0 && errno != EEXIST)) {
		log_errno("mkdir %s", target);
		return op_fail(e, "EMOUNT", errno, "mkdir %s", target);
	}
	if (mount(tag, target, "9p", 0, NINEP_OPTIONS) != 0) {
		log_errno("mount 9p tag %s on %s", tag, target);
		return op_fail(e, "EMOUNT", errno, "mount 9p tag %.64s", tag);
	}
	snprintf(mounted[nmounted++], sizeof(mounted[0]), "%s", tag);
	log_msg("9p tag %s mounted at %s", tag, target);
	return 0;
}

int shares_ensure(const struct start_req *req, struct op_error *e)
{
	for (size_t i = 0; i < req->nmounts; i++) {
		const struct mount_spec *m = &req->mounts[i];

		if (m->kind != MOUNT_9P || is_mounted(m->source))
			continue;
		if (mount_share(m->source, e) != 0) {
			char detail[sizeof(e->message)];

			snprintf(detail, sizeof(detail), "%s", e->message);
			snprintf(e->message, sizeof(e->message), "mounts[%zu]: %.180s", i, detail);
			return -1;
		}
	}
	return 0;
}

int shares_clone(const struct start_req *req, int *fds, struct op_error *e)
{
	return shares_clone_from(SHARES_DIR, req, fds, e);
}

int shares_clone_from(const char *base, const struct start_req *req, int *fds,
		      struct op_error *e)
{
	for (size_t i = 0; i < req->nmounts; i++)
		fds[i] = -1;
	for (size_t i = 0; i < req->nmounts; i++) {
		const struct mount_spec *m = &req->mounts[i];
		char path[sizeof(SHARES_DIR) + MAX_TAG_LEN + MAX_PATH_LEN + 3];

		if (m->kind != MOUNT_9P)
			continue;
		snprintf(path, sizeof(path), "%s/%s%s%s", base, m->source,
			 m->subdir ? "/" : "", m->subdir ? m->subdir : "");
		fds[i] = (int)syscall(SYS_open_tree, AT_FDCWD, path,
				      OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_SYMLINK_NOFOLLOW);
		if (fds[i] < 0) {
			log_errno("open_tree %s", path);
			return op_fail(e, "EMOUNT", errno, "mounts[%zu]: %.64s%s%.64s is not there", i,
				       m->source, m->subdir ? "/" : "", m->subdir ? m->subdir : "");
		}
	}
	return 0;
}

int shares_attach(int fd, const char *destination, int readonly, struct op_error *e)
{
	if (syscall(SYS_move_mount, fd, "", AT_FDCWD, destination, MOVE_MOUNT_F_EMPTY_PATH) != 0) {
		log_errno("move_mount on %s", destination);
		return op_fail(e, "EMOUNT", errno, "mount 9p on %.100s", destination);
	}
	close(fd);
	if (readonly && mount(NULL, destination, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY, NULL) != 0) {
		log_errno("remount %s read-only", destination);
		return op_fail(e, "EMOUNT", errno, "remount %.100s read-only", destination);
	}
	return 0;
}

void shares_unmount_all(void)
{
	for (size_t i = 0; i < nmounted; i++) {
		char target[sizeof(SHARES_DIR) + MAX_TAG_LEN + 2];

		snprintf(target, sizeof(target), "%s/%.255s", SHARES_DIR, mounted[i]);
		umount2(target, MNT_DETACH);
	}
	nmounted = 0;
}
