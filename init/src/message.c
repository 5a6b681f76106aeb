#include "message.h"

#include <sys/wait.h>

#include "../third_party/cjson/cJSON.h"
#include "frame.h"

static char *print_and_free(cJSON *obj)
{
	char *out = obj != NULL ? cJSON_PrintUnformatted(obj) : NULL;

	cJSON_Delete(obj);
	return out;
}

char *msg_ready(const char *kernel_release)
{
	cJSON *obj = cJSON_CreateObject();

	cJSON_AddNumberToObject(obj, "version", PROTOCOL_VERSION);
	cJSON_AddStringToObject(obj, "kernel", kernel_release);
	cJSON_AddStringToObject(obj, "init", INIT_VERSION);
	return print_and_free(obj);
}

char *msg_error(const char *code, const char *message, int err_no)
{
	cJSON *obj = cJSON_CreateObject();

	cJSON_AddStringToObject(obj, "code", code);
	cJSON_AddStringToObject(obj, "message", message);
	if (err_no > 0)
		cJSON_AddNumberToObject(obj, "errno", err_no);
	return print_and_free(obj);
}

char *msg_pid(int pid)
{
	cJSON *obj = cJSON_CreateObject();

	cJSON_AddNumberToObject(obj, "pid", pid);
	return print_and_free(obj);
}

char *msg_exit(int wait_status, int oom_killed)
{
	cJSON *obj = cJSON_CreateObject();

	if (WIFSIGNALED(wait_status)) {
		cJSON_AddNullToObject(obj, "status");
		cJSON_AddNumberToObject(obj, "signal", WTERMSIG(wait_status));
	} else {
		cJSON_AddNumberToObject(obj, "status", WEXITSTATUS(wait_status));
		cJSON_AddNullToObject(obj, "signal");
	}
	if (oom_killed)
		cJSON_AddStringToObject(obj, "reason", "oom");
	return print_and_free(obj);
}
