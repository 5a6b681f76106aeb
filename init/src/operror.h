/* The outcome of a failed operation, as it goes into an ERROR reply. */
#ifndef HYPERVM_OPERROR_H
#define HYPERVM_OPERROR_H

struct op_error {
	char code[12];     /* PROTOCOL.md error code, e.g. "EMOUNT" */
	char message[200]; /* names the field or object and the cause */
	int err_no;        /* errno of the failing call, 0 when none */
};

/* Fill e and return -1, so failure sites can `return op_fail(...)`. */
int op_fail(struct op_error *e, const char *code, int err_no, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
