/* vCPUs of a clone of a snapshot (RESEED "cpus"): its template's spare present ones (booted
 * offline, maxcpus=1), and any the host adds (ACPI CPU hotplug) before RESEED, which the
 * kernel registers asynchronously and leaves offline. */
#ifndef HYPERVM_CPUS_H
#define HYPERVM_CPUS_H

#include "operror.h"

/* The highest vCPU count RESEED may ask for (the host's own bound is MAX_CPUS, 64). */
#define CPUS_MAX 64

/* Exactly `wanted` CPUs online: present ones onlined (lowest first) until `wanted` are, waiting
 * up to ~5 s for hot-plugged ones to appear; with more online, the highest offlined (never
 * cpu0; init 0.7.0). Sets *online to the count reached. 0, or -1 with e set (ETIMEDOUT: fewer
 * came; EIO: a CPU refused to come online or to go offline). What the guest is given is the host's bound (QEMU's
 * vCPUs), never this count. */
int cpus_online(unsigned wanted, unsigned *online, struct op_error *e);

#endif
