#define _GNU_SOURCE
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int log_fd = 2;

void log_set_fd(int fd) { log_fd = fd; }

static void log_vwrite(const char *suffix, const char *fmt, va_list ap)
{
	char line[1024];
	int n = snprintf(line, sizeof(line), "%s", LOG_PREFIX);
	int m = vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
	size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);

	if (len > sizeof(line) - 2)
		len = sizeof(line) - 2;
	if (suffix != NULL) {
		int k = snprintf(line + len, sizeof(line) - len, ": %s", suffix);
		if (k > 0)
			len += (size_t)k;
		if (len > sizeof(line) - 2)
			len = sizeof(line) - 2;
	}
	line[len++] = '\n';
	/* One write per line so concurrent writers (shims) do not interleave within a line. */
	ssize_t rc = write(log_fd, line, len);
	(void)rc;
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
