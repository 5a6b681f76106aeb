/* The tmpfs of a container's writable layer (and of its tmpfs mounts): bounded by the START's
 * limits.scratch. */
#ifndef HYPERVM_SCRATCH_H
#define HYPERVM_SCRATCH_H

#include <stddef.h>
#include <stdint.h>

#include "operror.h"

/* A tmpfs's options: `base`, and its size when bounded (bytes > 0). */
void tmpfs_options(char *buf, size_t size, const char *base, uint64_t bytes);

/* Resize the tmpfs whose root is scratch_fd (an O_PATH fd; the mount may be detached from
 * every tree, as a prepared container's is after pivot_root): fspick + fsconfig. */
int scratch_resize(int scratch_fd, uint64_t bytes, struct op_error *e);

#endif
