#define _GNU_SOURCE
#include "procmask.h"

#include <errno.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

/* Docker's masked paths: kernel state a container has no business reading. A file gets
 * /dev/null bound over it, a directory an empty read-only tmpfs; a path the kernel lacks is
 * skipped. */
static int mask_paths(struct op_error *e)
{
	static const char *const masked[] = {
	    "/proc/asound",   "/proc/acpi",        "/proc/kcore",       "/proc/keys",
	    "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
	    "/proc/scsi",     "/sys/firmware",     "/sys/devices/virtual/powercap"};

	for (size_t i = 0; i < sizeof(masked) / sizeof(masked[0]); i++) {
		struct stat st;
		int rc;

		if (lstat(masked[i], &st) != 0)
			continue;
		if (S_ISDIR(st.st_mode))
			rc = mount("tmpfs", masked[i], "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
				   "mode=0555");
		else
			rc = mount("/dev/null", masked[i], NULL, MS_BIND, NULL);
		if (rc != 0) {
			log_errno("mask %s", masked[i]);
			return op_fail(e, "EMOUNT", errno, "mask %s", masked[i]);
		}
	}
	return 0;
}

/* Docker's read-only paths: what a container could change for the whole VM through /proc. */
static int readonly_paths(struct op_error *e)
{
	static const char *const paths[] = {"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
					    "/proc/sysrq-trigger"};
	const unsigned long ro = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC;

	for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
		if (access(paths[i], F_OK) != 0)
			continue;
		if (mount(paths[i], paths[i], NULL, MS_BIND | MS_REC, NULL) != 0 ||
		    mount(NULL, paths[i], NULL, ro, NULL) != 0) {
			log_errno("make %s read-only", paths[i]);
			return op_fail(e, "EMOUNT", errno, "make %s read-only", paths[i]);
		}
	}
	return 0;
}

int procmask_apply(struct op_error *e)
{
	return mask_paths(e) != 0 || readonly_paths(e) != 0 ? -1 : 0;
}
