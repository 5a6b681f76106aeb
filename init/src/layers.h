/* Read-only layer disks: found at the PCI address the host gave (a cold VM's virtio-blk disk),
 * else by serial (virtio-blk, or a hot-added SCSI disk's VPD page 0x80), mounted once under
 * LAYERS_DIR/<serial>. */
#ifndef HYPERVM_LAYERS_H
#define HYPERVM_LAYERS_H

#include <stddef.h>

#include "operror.h"

#define LAYERS_DIR "/run/hypervm/layers"

/* Make sure every layer is mounted, waiting up to wait_ms for disks that are still being
 * hot-added; pci[i]: layer i's PCI address, or NULL (found by serial; as when the address
 * has no virtio-blk disk). ENODEV when a serial has no disk by then, EMOUNT when neither erofs
 * nor ext4 mounts it. */
int layers_ensure(const char *const *serials, const char *const *pci, size_t n, unsigned wait_ms,
		  struct op_error *e);

/* Unmount every layer (at power-off). */
void layers_unmount_all(void);

#endif
