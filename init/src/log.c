#define _GNU_SOURCE
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int log_fd = 2;

void log_set_fd(int fd) { log_fd = fd; }

/* The line "<prefix><fmt…>[: suffix]\n" in line (of cap bytes); its length. */
static size_t log_vformat(char *line, size_t cap, const char *suffix, const char *fmt,
			  va_list ap)
{
	int n = snprintf(line, cap, "%s", LOG_PREFIX);
	int m = vsnprintf(line + n, cap - (size_t)n, fmt, ap);
	size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);

	if (len > cap - 2)
		len = cap - 2;
	if (suffix != NULL) {
		int k = snprintf(line + len, cap - len, ": %s", suffix);
		if (k > 0)
			len += (size_t)k;
		if (len > cap - 2)
			len = cap - 2;
	}
	line[len++] = '\n';
	return len;
}

static void log_vwrite(const char *suffix, const char *fmt, va_list ap)
{
	char line[1024];
	size_t len = log_vformat(line, sizeof(line), suffix, fmt, ap);

	/* One write per line so concurrent writers (shims) do not interleave within a line. */
	ssize_t rc = write(log_fd, line, len);
	(void)rc;
}

/* Lines of log_later() not written yet, and the process they are of (a child forked meanwhile
 * inherits a copy: it never writes it, so no line is logged twice). */
static char later[2048];
static size_t nlater;
static pid_t later_pid;

void log_later(const char *fmt, ...)
{
	int saved = errno;
	char line[1024];
	va_list ap;

	va_start(ap, fmt);
	size_t len = log_vformat(line, sizeof(line), NULL, fmt, ap);
	va_end(ap);
	if (nlater > 0 && later_pid != getpid())
		nlater = 0; /* the parent's copy */
	if (nlater + len > sizeof(later))
		log_flush();
	if (len > sizeof(later)) {
		ssize_t rc = write(log_fd, line, len);
		(void)rc;
	} else {
		memcpy(later + nlater, line, len);
		nlater += len;
		later_pid = getpid();
	}
	errno = saved;
}

void log_flush(void)
{
	int saved = errno;

	if (nlater > 0 && later_pid == getpid()) {
		ssize_t rc = write(log_fd, later, nlater);
		(void)rc;
	}
	nlater = 0;
	errno = saved;
}

void log_msg(const char *fmt, ...)
{
	int saved = errno;
	va_list ap;

	va_start(ap, fmt);
	log_vwrite(NULL, fmt, ap);
	va_end(ap);
	errno = saved;
}

void log_errno(const char *fmt, ...)
{
	int saved = errno;
	va_list ap;

	va_start(ap, fmt);
	log_vwrite(strerror(saved), fmt, ap);
	va_end(ap);
	errno = saved;
}
