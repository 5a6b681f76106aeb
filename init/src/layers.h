/* Read-only layer disks: found by virtio serial, mounted once under LAYERS_DIR/<serial>. */
#ifndef HYPERVM_LAYERS_H
#define HYPERVM_LAYERS_H

#include <stddef.h>

#include "operror.h"

#define LAYERS_DIR "/run/hypervm/layers"

/* Make sure every layer is mounted; ENODEV when a serial has no disk, EMOUNT when neither
 * erofs nor ext4 mounts it. */
int layers_ensure(const char *const *serials, size_t n, struct op_error *e);

/* Unmount every layer (at power-off). */
void layers_unmount_all(void);

#endif
