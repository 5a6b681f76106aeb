#ifndef HYPERVM_SYSFS_H
#define HYPERVM_SYSFS_H

#include <stddef.h>

/* Read a small sysfs attribute into buf (NUL-terminated), without trailing newlines, spaces
 * or NULs. Returns 0, or -1 when the file cannot be opened or read. */
int sysfs_read(const char *path, char *buf, size_t size);

#endif
