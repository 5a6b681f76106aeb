#define _GNU_SOURCE
#include "layers.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
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

static int read_serial(const char *block, char *buf, size_t size)
{
	char path[300];

	snprintf(path, sizeof(path), "/sys/block/%s/serial", block);
	return sysfs_read(path, buf, size);
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

static int mount_layer(const char *serial, struct op_error *e)
{
	char dev[300], target[128];

	if (find_device(serial, dev, sizeof(dev)) != 0) {
		log_msg("no block device with serial %s", serial);
		return op_fail(e, "ENODEV", 0, "rootfs.layers: no block device with serial %s",
			       serial);
	}
	snprintf(target, sizeof(target), "%s/%s", LAYERS_DIR, serial);
	if (mkdir(target, 0755) != 0 && errno != EEXIST) {
		log_errno("mkdir %s", target);
		return op_fail(e, "EMOUNT", errno, "mkdir %s", target);
	}
	if (mount(dev, target, "erofs", MS_RDONLY, NULL) == 0)
		return 0;
	int erofs_errno = errno;
	/* noload: never replay an ext4 journal on a read-only layer */
	if (mount(dev, target, "ext4", MS_RDONLY, "noload") == 0)
		return 0;
	log_msg("mount %s (serial %s) on %s: erofs: %s; ext4: %s", dev, serial, target,
		strerror(erofs_errno), strerror(errno));
	return op_fail(e, "EMOUNT", errno, "layer %s (%s) is neither erofs nor ext4", serial, dev);
}

int layers_ensure(const char *const *serials, size_t n, struct op_error *e)
{
	for (size_t i = 0; i < n; i++) {
		if (is_mounted(serials[i]))
			continue;
		if (nmounted >= MAX_MOUNTED)
			return op_fail(e, "EMOUNT", 0, "more than %d distinct layers", MAX_MOUNTED);
		if (mount_layer(serials[i], e) != 0)
			return -1;
		snprintf(mounted[nmounted++], sizeof(mounted[0]), "%s", serials[i]);
		log_msg("layer %s mounted at %s/%s", serials[i], LAYERS_DIR, serials[i]);
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
