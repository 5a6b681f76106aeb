#define _GNU_SOURCE
#include "boot.h"
#include "sysfs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "container.h"
#include "layers.h"
#include "shares.h"
#include "log.h"

#define NEW_ROOT "/.hypervm-root"

static int mount_at(const char *src, const char *dst, const char *type, unsigned long flags,
		    const char *data)
{
	if (mkdir(dst, 0755) != 0 && errno != EEXIST) {
		log_errno("mkdir %s", dst);
		return -1;
	}
	if (mount(src, dst, type, flags, data) != 0 && errno != EBUSY) {
		log_errno("mount %s on %s", type, dst);
		return -1;
	}
	return 0;
}

int boot_console(void)
{
	int fd;

	mount_at("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	fd = open("/dev/console", O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (fd < 0)
		fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return -1;
	for (int i = 0; i < 3; i++)
		if (fd != i)
			dup2(fd, i);
	if (fd > 2)
		close(fd);
	return 0;
}

int boot_open_self(void)
{
	int fd;

	if (mount_at("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
		return -1;
	fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		log_errno("open /proc/self/exe");
	return fd;
}

static int load_module(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0) {
		log_errno("open module %s", path);
		return -1;
	}
	if (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST) {
		log_errno("load module %s", path);
		close(fd);
		return -1;
	}
	close(fd);
	return 0;
}

/* Each non-comment line of the order file as a path (absolute, or relative to MODULES_DIR);
 * calls fn for each until it returns non-zero. */
static int for_each_listed(int (*fn)(const char *path, void *arg), void *arg)
{
	FILE *f = fopen(MODULES_ORDER, "re");
	char line[512];
	int rc = 0;

	if (f == NULL)
		return 0;
	while (rc == 0 && fgets(line, sizeof(line), f) != NULL) {
		char path[600];
		size_t len = strcspn(line, "\r\n");

		line[len] = '\0';
		if (len == 0 || line[0] == '#')
			continue;
		if (line[0] == '/')
			snprintf(path, sizeof(path), "%s", line);
		else
			snprintf(path, sizeof(path), "%s/%s", MODULES_DIR, line);
		rc = fn(path, arg);
	}
	fclose(f);
	return rc;
}

struct load_stats {
	int listed;
	int failed;
};

static int load_one_listed(const char *path, void *arg)
{
	struct load_stats *stats = arg;

	stats->listed++;
	if (load_module(path) != 0)
		stats->failed++;
	return 0;
}

static int same_path(const char *path, void *arg) { return strcmp(path, (const char *)arg) == 0; }

/* Any .ko the order file does not list, after the listed ones. */
static void load_rest(const char *dir, int depth, struct load_stats *stats)
{
	DIR *d;
	struct dirent *de;

	if (depth > 8 || (d = opendir(dir)) == NULL)
		return;
	while ((de = readdir(d)) != NULL) {
		char path[600];
		size_t len = strlen(de->d_name);

		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		if (de->d_type == DT_DIR)
			load_rest(path, depth + 1, stats);
		else if (len > 3 && strcmp(de->d_name + len - 3, ".ko") == 0 &&
			 !for_each_listed(same_path, path) && load_module(path) != 0)
			stats->failed++;
	}
	closedir(d);
}

int boot_load_modules(void)
{
	struct load_stats stats = {0, 0};
	struct stat st;

	if (stat(MODULES_DIR, &st) != 0)
		return 0; /* the HyperKernel has everything built in */
	for_each_listed(load_one_listed, &stats);
	load_rest(MODULES_DIR, 0, &stats);
	log_msg("kernel modules: %d listed, %d failed", stats.listed, stats.failed);
	return stats.failed;
}

int boot_switch_root(void)
{
	umount2("/proc", MNT_DETACH);
	umount2("/dev", MNT_DETACH);
	if (mount_at("tmpfs", NEW_ROOT, "tmpfs", 0, "mode=0755") != 0)
		return -1;
	if (chdir(NEW_ROOT) != 0 || mount(".", "/", NULL, MS_MOVE, NULL) != 0 || chroot(".") != 0 ||
	    chdir("/") != 0) {
		log_errno("switch to a tmpfs root");
		return -1;
	}
	return 0;
}

int boot_mount_system(void)
{
	const unsigned long secure = MS_NOSUID | MS_NODEV | MS_NOEXEC;
	int rc = 0;

	rc |= mount_at("proc", "/proc", "proc", secure, NULL);
	rc |= mount_at("sysfs", "/sys", "sysfs", secure, NULL);
	rc |= mount_at("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	rc |= mount_at("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "mode=0620");
	rc |= mount_at("shm", "/dev/shm", "tmpfs", secure, "mode=1777");
	rc |= mount_at("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
	rc |= mount_at("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	/* optional: kernels without cgroups simply have no cgroup2 */
	if (mount("cgroup2", "/sys/fs/cgroup", "cgroup2", secure, NULL) != 0 && errno != ENOENT &&
	    errno != ENODEV)
		log_errno("mount cgroup2 (ignored)");
	if (rc != 0)
		return -1;
	if (mkdir("/run/hypervm", 0755) != 0 || mkdir(LAYERS_DIR, 0755) != 0 ||
	    mkdir(SCRATCH_DIR, 0755) != 0) {
		log_errno("mkdir /run/hypervm");
		return -1;
	}
	return 0;
}

int boot_loopback_up(void)
{
	struct ifreq ifr;
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	int rc = -1;

	if (fd < 0) {
		log_errno("socket for lo");
		return -1;
	}
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "lo");
	if (ioctl(fd, SIOCGIFFLAGS, &ifr) != 0) {
		log_errno("get flags of lo");
	} else {
		ifr.ifr_flags |= IFF_UP;
		rc = ioctl(fd, SIOCSIFFLAGS, &ifr);
		if (rc != 0)
			log_errno("bring lo up");
	}
	close(fd);
	return rc;
}

/* Free page reporting (virtio-balloon): Linux 6.1 reports only free blocks of pageblock_order
 * (order 10 without hugetlb, 4 MiB), and in a 128 MiB guest the zone never has the 32 such
 * blocks above the low watermark that reporting wants, so nothing is ever reported; the
 * page_reporting.page_reporting_order= boot parameter is overwritten when the driver registers.
 * The module parameter is writable at run time: 5 (128 KiB) returns nearly all freed memory.
 * `hypervm.page_reporting_order=N` on the kernel command line sets another order. */
#define PAGE_REPORTING_ORDER_PATH "/sys/module/page_reporting/parameters/page_reporting_order"
void boot_page_reporting(void)
{
	char cmdline[4096], value[8] = "5";
	const char *key = "hypervm.page_reporting_order=";
	char *at;

	if (sysfs_read("/proc/cmdline", cmdline, sizeof(cmdline)) == 0 &&
	    (at = strstr(cmdline, key)) != NULL) {
		snprintf(value, sizeof(value), "%.*s", (int)strcspn(at + strlen(key), " "),
			 at + strlen(key));
	}
	/* ENOENT: no CONFIG_PAGE_REPORTING */
	if (sysfs_write(PAGE_REPORTING_ORDER_PATH, value) != 0 && errno != ENOENT)
		log_errno("set page_reporting_order (ignored)");
}

/* A snapshot's template (`hypervm.spares=offline` on its kernel command line) boots its spare
 * present CPUs online and takes them offline before READY: their per-CPU threads, pools and
 * sched set-up are then in the snapshot, and a clone of 2 vCPUs onlines its second with less
 * to do than a CPU never up (the kernel's maxcpus=1: measured ~25 ms more under TCG). */
void boot_offline_spares(void)
{
	char cmdline[4096], path[64];
	unsigned n, count = 0;

	if (sysfs_read("/proc/cmdline", cmdline, sizeof(cmdline)) != 0 ||
	    strstr(cmdline, "hypervm.spares=offline") == NULL)
		return;
	for (n = 1; n < 64; n++) {
		snprintf(path, sizeof(path), "/sys/devices/system/cpu/cpu%u/online", n);
		if (sysfs_write(path, "0") == 0)
			count++;
		else if (errno == ENOENT)
			break;
		else
			log_errno("take a spare CPU offline");
	}
	log_msg("%u spare CPUs offline", count);
}

void boot_raise_fd_limit(void)
{
	/* 4 pipe ends per process: the default 1024 would cap init far below MAX_PROCESSES */
	struct rlimit lim = {.rlim_cur = 65536, .rlim_max = 65536};

	if (setrlimit(RLIMIT_NOFILE, &lim) != 0)
		log_errno("raise RLIMIT_NOFILE");
}

int boot_open_proc(void)
{
	int fd = open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0)
		log_errno("open /proc");
	return fd;
}

void power_off(void)
{
	const struct timespec tick = {0, 10 * 1000 * 1000};

	log_msg("powering off");
	kill(-1, SIGKILL);
	/* reap what dies within a second; the rest dies with the VM */
	for (int i = 0; i < 100; i++) {
		while (waitpid(-1, NULL, WNOHANG) > 0)
			;
		if (waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD)
			break;
		nanosleep(&tick, NULL);
	}
	sync();
	shares_unmount_all();
	layers_unmount_all();
	sync();
	reboot(RB_POWER_OFF);
	log_errno("reboot(RB_POWER_OFF)");
	reboot(RB_HALT_SYSTEM);
	for (;;)
		pause();
}
