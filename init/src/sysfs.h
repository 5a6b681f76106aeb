#ifndef HYPERVM_SYSFS_H
#define HYPERVM_SYSFS_H

#include <stddef.h>

/* Read a small sysfs attribute into buf (NUL-terminated), without trailing newlines, spaces
 * or NULs. Returns 0, or -1 when the file cannot be opened or read. */
int sysfs_read(const char *path, char *buf, size_t size);

/* Write value into an existing sysfs, procfs or cgroup attribute, whole. Returns 0, or -1 with
 * errno set (EIO for a short write) when it cannot be opened or written. */
int sysfs_write(const char *path, const char *value);

#endif
