#define _GNU_SOURCE
#include "stamp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "log.h"

#define STAMP_ENV "hypervm_stamps"

static const char *const names[STAMP_POINTS] = {
	"network_recv", "network_done", "network_ok", "start_recv", "start_checked", "cgroup",
	"layers",	"cloned",	"prep_files", "handed",	    "received",	     "rootfs",
	"entered",	"mounted",	"forked",     "confined",   "resolved",	     "awaited",
	"start_ok",	"shim",		"spare",      "status",	    "stdout_eof",    "stderr_eof",
	"exit_sent"};
_Static_assert(sizeof(names) / sizeof(names[0]) == STAMP_POINTS, "a name per stamp point");

/* MAP_SHARED: the reaper and the process (fork()s of init, before their execve) write into
 * init's page. NULL: stamps are off. */
static volatile unsigned long long *page;

void stamp_setup(void)
{
	const char *on = getenv(STAMP_ENV);
	void *p;

	if (on == NULL || strcmp(on, "1") != 0)
		return;
	p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		log_errno("map the stamps' page (stamps off)");
		return;
	}
	page = p;
	log_msg("debug stamps on");
}

void stamp(enum stamp_point point)
{
	struct timespec ts;

	if (page == NULL || point >= STAMP_POINTS)
		return;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	page[point] = (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

void stamp_format(const unsigned long long ns[STAMP_POINTS], char *buf, unsigned long size)
{
	unsigned long long t0 = 0;
	size_t off;

	for (int i = 0; i < STAMP_POINTS; i++)
		if (ns[i] != 0 && (t0 == 0 || ns[i] < t0))
			t0 = ns[i];
	off = (size_t)snprintf(buf, size, "stamps t0=%llu.%06llu", t0 / 1000000000ull,
			       t0 % 1000000000ull / 1000ull);
	for (int i = 0; i < STAMP_POINTS && off < size; i++) {
		unsigned long long d;

		if (ns[i] == 0)
			continue;
		d = (ns[i] - t0) / 10000ull; /* hundredths of a ms */
		off += (size_t)snprintf(buf + off, size - off, " %s=%llu.%02llu", names[i],
					d / 100ull, d % 100ull);
	}
}

void stamp_report(void)
{
	unsigned long long ns[STAMP_POINTS];
	char line[1024];

	if (page == NULL || page[STAMP_EXIT_SENT] == 0)
		return;
	for (int i = 0; i < STAMP_POINTS; i++) {
		ns[i] = page[i];
		page[i] = 0;
	}
	stamp_format(ns, line, sizeof(line));
	log_msg("%s", line);
}
