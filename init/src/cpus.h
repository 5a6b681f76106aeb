/* vCPUs hot-plugged into a clone of a snapshot (RESEED "cpus"): the host adds them (ACPI CPU
 * hotplug) before RESEED; the kernel registers them asynchronously and leaves them offline. */
#ifndef HYPERVM_CPUS_H
#define HYPERVM_CPUS_H

#include "operror.h"

/* The highest vCPU count RESEED may ask for (the host's own bound is MAX_CPUS, 64). */
#define CPUS_MAX 64

/* Online present CPUs (lowest first) until `wanted` are online (never more), waiting up to ~5 s for hot-plugged ones
 * to appear. Sets *online to the count reached. 0, or -1 with e set (ETIMEDOUT: fewer came;
 * EIO: a CPU refused to come online). What the guest is given is the host's bound (QEMU's
 * vCPUs), never this count. */
int cpus_online(unsigned wanted, unsigned *online, struct op_error *e);

#endif
