#define _GNU_SOURCE
#include "scratch.h"

#include <errno.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "log.h"

/* fsconfig(2) commands (musl has no <linux/mount.h>) */
#define FSPICK_CLOEXEC 0x1
#define FSPICK_EMPTY_PATH 0x8
#define FSCONFIG_SET_STRING 1
#define FSCONFIG_CMD_RECONFIGURE 7

void tmpfs_options(char *buf, size_t size, const char *base, uint64_t bytes)
{
	if (bytes > 0)
		snprintf(buf, size, "%s,size=%llu", base, (unsigned long long)bytes);
	else
		snprintf(buf, size, "%s", base);
}

int scratch_resize(int scratch_fd, uint64_t bytes, struct op_error *e)
{
	char size[32];
	/* mount -o remount wants an attached mount; fspick takes any mount's root */
	int fs = (int)syscall(SYS_fspick, scratch_fd, "", FSPICK_EMPTY_PATH | FSPICK_CLOEXEC);

	snprintf(size, sizeof(size), "%llu", (unsigned long long)bytes);
	if (fs < 0 || syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, "size", size, 0) != 0 ||
	    syscall(SYS_fsconfig, fs, FSCONFIG_CMD_RECONFIGURE, NULL, NULL, 0) != 0) {
		log_errno("resize the writable layer to %s bytes", size);
		if (fs >= 0)
			close(fs);
		return op_fail(e, "EMOUNT", errno, "limits.scratch: resize the writable layer");
	}
	close(fs);
	return 0;
}
