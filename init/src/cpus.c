/* Bringing hot-plugged vCPUs online (see cpus.h). */
#include "cpus.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "sysfs.h"

#define WAIT_MS 5000
#define POLL_MS 2

/* The CPUs of a sysfs CPU list ("0-1,3", "" for none) as bits of set[]; -1 when it is not one
 * (a number past CPUS_MAX is not ours to online: ignored). */
static int parse_cpulist(const char *list, unsigned char set[CPUS_MAX])
{
	const char *p = list;

	memset(set, 0, CPUS_MAX);
	while (*p != '\0') {
		char *end;
		unsigned long lo = strtoul(p, &end, 10), hi = lo;

		if (end == p || *p < '0' || *p > '9')
			return -1;
		p = end;
		if (*p == '-') {
			const char *q = ++p;

			hi = strtoul(q, &end, 10);
			if (end == q || *q < '0' || *q > '9' || hi < lo)
				return -1;
			p = end;
		}
		for (unsigned long n = lo; n <= hi && n < CPUS_MAX; n++)
			set[n] = 1;
		if (*p == ',')
			p++;
		else if (*p != '\0')
			return -1;
	}
	return 0;
}

/* The CPUs of /sys/devices/system/cpu/<name> ("present", "online"); -1 when unreadable. */
static int read_cpus(const char *name, unsigned char set[CPUS_MAX])
{
	char path[64], buf[512];

	snprintf(path, sizeof(path), "/sys/devices/system/cpu/%s", name);
	if (sysfs_read(path, buf, sizeof(buf)) != 0)
		return -1;
	return parse_cpulist(buf, set);
}

static int bring_up(unsigned n)
{
	char path[64];

	snprintf(path, sizeof(path), "/sys/devices/system/cpu/cpu%u/online", n);
	return sysfs_write(path, "1");
}

/* Expedited RCU grace periods (IPIs, not waiting for every CPU's tick) while CPUs come
 * online: bringing one up waits for several grace periods (sched domains, cpusets). */
static void rcu_expedite(int on)
{
	if (sysfs_write("/sys/kernel/rcu_expedited", on ? "1" : "0") != 0 && errno != ENOENT)
		log_msg("cannot set rcu_expedited: %s", strerror(errno));
}

static int online_all(unsigned wanted, unsigned *online, struct op_error *e);

int cpus_online(unsigned wanted, unsigned *online, struct op_error *e)
{
	int rc;

	rcu_expedite(1);
	rc = online_all(wanted, online, e);
	rcu_expedite(0);
	return rc;
}

static unsigned count_set(const unsigned char set[CPUS_MAX])
{
	unsigned n, count = 0;

	for (n = 0; n < CPUS_MAX; n++)
		count += set[n];
	return count;
}

static int online_all(unsigned wanted, unsigned *online, struct op_error *e)
{
	struct timespec pause = {0, POLL_MS * 1000000L};
	unsigned waited = 0, n, count = 0;
	unsigned char present[CPUS_MAX], up[CPUS_MAX];

	/* Two reads a poll (the present and online masks), not an open per possible CPU: under
	 * TCG 64 path walks every 2 ms took the one vCPU from the kernel's hot-add of the new
	 * ones. A present CPU whose device is not registered yet (ENOENT) is tried again. Only
	 * until `wanted` are online (init 0.7.0): a template's spare present CPUs (booted
	 * offline before READY: boot_offline_spares) stay offline in a clone of fewer vCPUs. */
	for (;;) {
		if (read_cpus("present", present) != 0 || read_cpus("online", up) != 0)
			return op_fail(e, "EIO", errno, "cannot read the CPU masks");
		count = count_set(up);
		for (n = 0; n < CPUS_MAX && count < wanted; n++) {
			if (!present[n] || up[n])
				continue;
			if (bring_up(n) == 0)
				up[n] = 1;
			else if (errno != ENOENT && (read_cpus("online", up) != 0 || !up[n]))
				return op_fail(e, "EIO", errno, "cpu%u does not come online: %s", n,
					       strerror(errno));
			count = count_set(up);
		}
		*online = count;
		if (count >= wanted)
			break;
		if (waited >= WAIT_MS)
			return op_fail(e, "ETIMEDOUT", 0, "%u of %u vCPUs came online", count, wanted);
		nanosleep(&pause, NULL);
		waited += POLL_MS;
	}
	if (wanted > 1)
		log_msg("%u vCPUs online (%u wanted)", count, wanted);
	return 0;
}
