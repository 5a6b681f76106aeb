/* Logging to the console: every line is prefixed "hypervm-init: " so the host finds it in the
 * serial console log. Functions never fail: logging must not be a reason for PID 1 to die. */
#ifndef HYPERVM_LOG_H
#define HYPERVM_LOG_H

#define LOG_PREFIX "hypervm-init: "

/* Route log lines to fd (default: 2). */
void log_set_fd(int fd);

/* One log line; printf-style, newline appended. */
void log_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* One log line ending in ": strerror(errno)"; errno is preserved. */
void log_errno(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
