/* Bringing hot-plugged vCPUs online (see cpus.h). */
#include "cpus.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "sysfs.h"

#define WAIT_MS 5000
#define POLL_MS 2

/* Is CPU n online (cpu0 has no "online" file: always)? -1 when it is not present. */
static int is_online(unsigned n)
{
	char path[64], buf[8];

	snprintf(path, sizeof(path), "/sys/devices/system/cpu/cpu%u/online", n);
	if (sysfs_read(path, buf, sizeof(buf)) != 0)
		return n == 0 ? 1 : -1;
	return strcmp(buf, "1") == 0;
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

static int online_all(unsigned wanted, unsigned *online, struct op_error *e)
{
	struct timespec pause = {0, POLL_MS * 1000000L};
	unsigned waited = 0, n, count = 0;

	for (;;) {
		count = 0;
		for (n = 0; n < CPUS_MAX; n++) {
			int state = is_online(n);

			if (state == 0 && bring_up(n) != 0 && (state = is_online(n)) != 1)
				return op_fail(e, "EIO", errno, "cpu%u does not come online: %s", n,
					       strerror(errno));
			if (state != -1)
				count++;
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
