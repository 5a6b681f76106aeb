/* JSON payloads init sends (READY, OK, ERROR, EXIT). Pure; results are malloc'ed strings
 * (free with free()), NULL only when out of memory. */
#ifndef HYPERVM_MESSAGE_H
#define HYPERVM_MESSAGE_H

#define INIT_VERSION "0.7.6"

char *msg_ready(const char *kernel_release);
/* err_no <= 0 leaves the optional "errno" member out. */
char *msg_error(const char *code, const char *message, int err_no);
char *msg_pid(int pid);
/* wait_status as returned by waitpid(); oom_killed adds "reason": "oom". */
char *msg_exit(int wait_status, int oom_killed);

#endif
