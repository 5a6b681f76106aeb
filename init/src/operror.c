#include "operror.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int op_fail(struct op_error *e, const char *code, int err_no, const char *fmt, ...)
{
	va_list ap;
	int n;

	snprintf(e->code, sizeof(e->code), "%s", code);
	va_start(ap, fmt);
	n = vsnprintf(e->message, sizeof(e->message), fmt, ap);
	va_end(ap);
	if (err_no > 0 && n >= 0 && (size_t)n < sizeof(e->message))
		snprintf(e->message + n, sizeof(e->message) - (size_t)n, ": %s", strerror(err_no));
	e->err_no = err_no;
	return -1;
}
