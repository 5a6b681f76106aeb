#define _GNU_SOURCE
#include "layers.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "parse.h"
#include "sysfs.h"

#define MAX_MOUNTED 256

static char mounted[MAX_MOUNTED][MAX_SERIAL_LEN + 1];
static size_t nmounted;

static int is_mounted(const char *serial)
{
	for (size_t i = 0; i < nmounted; i++)
		if (strcmp(mounted[i], serial) == 0)
			return 1;
	return 0;
}

/* VPD page 0x80 (unit serial number): a 4-byte header, then the serial, maybe space-padded. */
static int read_vpd_serial(const char *block, char *buf, size_t size)
{
	char path[300];
	unsigned char raw[64];
	ssize_t n;
	size_t len;
	int fd;

	snprintf(path, sizeof(path), "/sys/block/%s/device/vpd_pg80", block);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	n = read(fd, raw, sizeof(raw));
	close(fd);
	if (n < 4 || raw[1] != 0x80)
		return -1;
	len = ((size_t)raw[2] << 8) | raw[3];
	if (len > (size_t)n - 4)
		len = (size_t)n - 4;
	while (len > 0 && (raw[4 + len - 1] == ' ' || raw[4 + len - 1] == '\0'))
		len--;
	if (len == 0 || len >= size)
		return -1;
	memcpy(buf, raw + 4, len);
	buf[len] = '\0';
	return 0;
}

/* The serial of a virtio-blk disk, or of a SCSI disk (hot-added to a pool VM). */
static int read_serial(const char *block, char *buf, size_t size)
{
	char path[300];

	snprintf(path, sizeof(path), "/sys/block/%s/serial", block);
	if (sysfs_read(path, buf, size) == 0)
		return 0;
	return read_vpd_serial(block, buf, size);
}

/* /dev/<name> of the block device whose serial is `serial`. */
static int find_device(const char *serial, char *dev, size_t size)
{
	DIR *dir = opendir("/sys/block");
	struct dirent *de;
	int rc = -1;

	if (dir == NULL) {
		log_errno("opendir /sys/block");
		return -1;
	}
	while (rc != 0 && (de = readdir(dir)) != NULL) {
		char found[64];

		if (de->d_name[0] == '.' || read_serial(de->d_name, found, sizeof(found)) != 0)
			continue;
		if (strcmp(found, serial) == 0) {
			snprintf(dev, size, "/dev/%s", de->d_name);
			rc = 0;
		}
	}
	closedir(dir);
	return rc;
}

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* /dev/<name> of the virtio-blk disk at PCI address `pci` (parse.c checked its shape): the
 * one entry of /sys/bus/pci/devices/<pci>/virtio<N>/block. Sysfs' own links, no request to
 * the device (its serial is a GET_ID round trip to QEMU, first-time kernel code under TCG).
 * The /sys/block entries' links read instead (.../<pci>/virtio<N>/block/<name>) were as fast:
 * DEVELOPERS.md, layerslot. */
static int find_by_pci(const char *pci, char *dev, size_t size)
{
	char path[128], virtio[16];
	DIR *dir;
	struct dirent *de;
	int found = 0;

	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s", pci);
	if ((dir = opendir(path)) == NULL)
		return -1;
	while (!found && (de = readdir(dir)) != NULL)
		found = strncmp(de->d_name, "virtio", 6) == 0 && de->d_name[6] >= '0' &&
			de->d_name[6] <= '9' && strlen(de->d_name) < 16;
	if (found) {
		memcpy(virtio, de->d_name, strlen(de->d_name) + 1); /* < 16 bytes, checked */
		snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/%s/block", pci, virtio);
	}
	closedir(dir);
	if (!found || (dir = opendir(path)) == NULL)
		return -1;
	found = 0;
	while (!found && (de = readdir(dir)) != NULL)
		found = de->d_name[0] != '.' && valid_name(de->d_name, 32);
	if (found)
		snprintf(dev, size, "/dev/%s", de->d_name);
	closedir(dir);
	return found ? 0 : -1;
}

/* The layer's disk: at its PCI address when the host gave one (a cold VM's virtio-blk disk):
 * 1; else (none, or none there: the host's own bug, or an older kernel's sysfs) by serial: 0;
 * -1 when neither finds it. */
static int locate(const char *serial, const char *pci, char *dev, size_t size)
{
	if (pci != NULL && find_by_pci(pci, dev, size) == 0)
		return 1;
	return find_device(serial, dev, size);
}

/* locate, polling every millisecond until `deadline`, until the device also opens: a
 * hot-added disk (a pool VM's, a snapshot clone's) is in /sys/block a moment before its node
 * is in /dev (ENOENT) and before it can be opened (ENXIO until the kernel's probe, which may
 * run on another vCPU, has added it), so that the mount that follows sees a ready disk.
 * 0 with *fdp open (or -1 when the open failed otherwise: the mount reports it) and *by_pci
 * (found at its address), -1 when the deadline passed first. */
static int await_device(const char *serial, const char *pci, unsigned wait_ms, char *dev,
			size_t size, int *fdp, int *by_pci)
{
	const struct timespec tick = {0, 1000000};
	long long deadline = -1;
	int fd = -1;

	while ((*by_pci = locate(serial, pci, dev, size)) < 0 ||
	       ((fd = open(dev, O_RDONLY | O_CLOEXEC)) < 0 && (errno == ENXIO || errno == ENOENT))) {
		/* the clock starts at the first miss: a cold VM's disk is there at once, and its
		 * first clock_gettime would be musl's vDSO lookup, code run for nothing else */
		if (deadline < 0)
			deadline = now_ms() + wait_ms;
		if (now_ms() >= deadline)
			return -1;
		nanosleep(&tick, NULL);
	}
	*fdp = fd;
	return 0;
}

/* A layer disk's read-ahead, set when init mounts it (the kernel's default is 128 KiB). A
 * layer holds programs, libraries and static files, which are mostly mapped: each first fault
 * in a file reads this much around it (the kernel's read-around, bounded by the file). A cold
 * run of the 2 MB static busybox `true` read its layer in 24 requests, now 11 (1.53 -> 1.91
 * MiB read), each a wait on QEMU's block layer and a pass through the guest's fault and
 * read-ahead paths under TCG: its OK -> EXIT ~12 ms shorter; 2 MiB gains nothing more, 512 KiB
 * half (DEVELOPERS.md, coldstart). The writable layer (tmpfs) and 9p volumes are not block
 * devices: unchanged. */
#define LAYER_READAHEAD_KB 1024

static void set_readahead(int fd, const char *dev)
{
	if (ioctl(fd, BLKRASET, (unsigned long)LAYER_READAHEAD_KB * 2) != 0) /* 512-byte sectors */
		log_errno("set the read-ahead of %s (ignored)", dev);
}

/* Mount `dev` read-only as erofs, else ext4; 0, or -1 with errno (*erofs_errno: erofs's). */
static int mount_ro(const char *dev, const char *target, int *erofs_errno)
{
	if (mount(dev, target, "erofs", MS_RDONLY, NULL) == 0)
		return 0;
	*erofs_errno = errno;
	/* noload: never replay an ext4 journal on a read-only layer */
	return mount(dev, target, "ext4", MS_RDONLY, "noload");
}

static int mount_layer(const char *serial, const char *pci, unsigned wait_ms,
		       struct op_error *e)
{
	char dev[300], target[128];
	int erofs_errno = 0, fd, by_pci;

	if (await_device(serial, pci, wait_ms, dev, sizeof(dev), &fd, &by_pci) != 0) {
		log_msg("no block device with serial %s", serial);
		return op_fail(e, "ENODEV", 0, "rootfs.layers: no block device with serial %s",
			       serial);
	}
	if (fd >= 0) {
		set_readahead(fd, dev);
		close(fd);
	}
	snprintf(target, sizeof(target), "%s/%s", LAYERS_DIR, serial);
	if (mkdir(target, 0755) != 0 && errno != EEXIST) {
		log_errno("mkdir %s", target);
		return op_fail(e, "EMOUNT", errno, "mkdir %s", target);
	}
	if (mount_ro(dev, target, &erofs_errno) != 0) {
		const int ext4_errno = errno;

		log_msg("mount %s (serial %s) on %s: erofs: %s; ext4: %s", dev, serial, target,
			strerror(erofs_errno), strerror(ext4_errno));
		return op_fail(e, "EMOUNT", ext4_errno, "layer %s (%s) is neither erofs nor ext4",
			       serial, dev);
	}
	log_msg("layer %s (%s%s%s) mounted at %s", serial, dev, by_pci ? " at " : ", by serial",
		by_pci ? pci : "", target);
	return 0;
}

int layers_ensure(const char *const *serials, const char *const *pci, size_t n, unsigned wait_ms,
		  struct op_error *e)
{
	for (size_t i = 0; i < n; i++) {
		if (is_mounted(serials[i]))
			continue;
		if (nmounted >= MAX_MOUNTED)
			return op_fail(e, "EMOUNT", 0, "more than %d distinct layers", MAX_MOUNTED);
		if (mount_layer(serials[i], pci[i], wait_ms, e) != 0)
			return -1;
		snprintf(mounted[nmounted++], sizeof(mounted[0]), "%s", serials[i]);
	}
	return 0;
}

void layers_unmount_all(void)
{
	for (size_t i = 0; i < nmounted; i++) {
		char target[128];

		snprintf(target, sizeof(target), "%s/%.20s", LAYERS_DIR, mounted[i]);
		umount2(target, MNT_DETACH);
	}
	nmounted = 0;
}
