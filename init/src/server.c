#define _GNU_SOURCE
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "boot.h"
#include "cgroup.h"
#include "cpus.h"
#include "container.h"
#include "entropy.h"
#include "exec.h"
#include "log.h"
#include "message.h"
#include "net.h"
#include "parse.h"
#include "proc.h"
#include "relay.h"
#include "signals.h"
#include "stamp.h"

/* How long a START waits for the reaper of an ended container of the same name (name_taken):
 * its PID namespace's teardown, milliseconds normally; past this, EEXIST as before 0.7.6. */
#define REAPER_WAIT_MS 5000

void server_send_ready(struct server *s)
{
	char *json = msg_ready(s->kernel_release);

	if (channel_send_json(s->ch, MSG_READY, 0, json) == 0)
		log_msg("READY sent");
	free(json);
}

static void reply_ok(struct server *s, uint32_t id, char *json)
{
	channel_send_json(s->ch, MSG_OK, id, json);
	free(json);
}

static int reply_error(struct server *s, uint32_t id, const struct op_error *e)
{
	log_msg("request %u failed: %s %s", id, e->code, e->message);
	channel_send_error(s->ch, id, e->code, e->message, e->err_no);
	return -1;
}

static void set_nonblocking(int fd)
{
	if (fd >= 0)
		fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

/* Take init's pipe ends over into a new process entry. */
static struct process *register_process(uint32_t handle, pid_t pid, pid_t shim, int is_main,
					struct spawn_fds *f)
{
	struct process *p = proc_new(handle);

	if (p == NULL) {
		log_msg("out of memory registering process %u", handle);
		kill(shim, SIGKILL);
		spawn_fds_close_all(f);
		return NULL;
	}
	p->pid = pid;
	p->shim_pid = shim;
	p->is_main = is_main;
	p->out_fd = f->out[0];
	p->err_fd = f->err[0];
	p->in_fd = f->in[1];
	p->status_fd = f->status[0];
	p->pty_fd = f->pty;
	f->out[0] = f->err[0] = f->in[1] = f->status[0] = f->pty = -1;
	set_nonblocking(p->out_fd);
	set_nonblocking(p->err_fd);
	set_nonblocking(p->in_fd);
	set_nonblocking(p->status_fd);
	spawn_fds_close_all(f);
	return p;
}

static int check_new_handle(uint32_t handle, struct op_error *e)
{
	if (proc_find(handle) != NULL)
		return op_fail(e, "EEXIST", 0, "handle: %u is in use", handle);
	if (proc_count() >= MAX_PROCESSES)
		return op_fail(e, "ESPAWN", 0, "too many processes (%d)", MAX_PROCESSES);
	return 0;
}

/* 1 when a container of this name runs. One whose main process has ended (its EXIT may have
 * gone out: since 0.7.6 it goes before the reaper's end) frees the name once its reaper is
 * gone: wait for that, bounded (REAPER_WAIT_MS), as the host had found it gone before. */
static int name_taken(const char *name)
{
	struct container *c = container_find(name);

	if (c != NULL && c->main_ended) {
		log_msg("container %s: its START waits for the ended container's reaper", name);
		if (signals_await_reaper(c->reaper_pid, REAPER_WAIT_MS) != 0)
			log_msg("container %s: its reaper did not end in %d ms", name,
				REAPER_WAIT_MS);
	}
	return container_find(name) != NULL;
}

static int handle_prepare(struct server *s, uint32_t id, const struct prepare_req *req)
{
	struct op_error e;

	if (container_prepare(req, &e) != 0)
		return reply_error(s, id, &e);
	log_msg("container prepared");
	reply_ok(s, id, strdup("{}"));
	return 0;
}

static int handle_start(struct server *s, uint32_t id, const struct start_req *req,
			const uint8_t *payload, size_t len)
{
	struct op_error e;
	struct spawn_fds f;
	pid_t reaper, pid;
	int rc = 1, took_prepared = 0, ahead = 1, cgroup_fd;
	char cgroup[CGROUP_NAME_MAX];
	struct container *c;

	if (name_taken(req->container)) {
		op_fail(&e, "EEXIST", 0, "container: %s is already running", req->container);
		return reply_error(s, id, &e);
	}
	if (check_new_handle(req->handle, &e) != 0 ||
	    spawn_fds_open(&f, req->proc.stdin_pipe, req->proc.tty, &e) != 0)
		return reply_error(s, id, &e);
	stamp(STAMP_START_CHECKED);
	cgroup[0] = '\0';
	if (container_prepared_fits(req, len)) {
		rc = container_start_prepared(req, payload, len, cgroup, &f, &reaper, &pid, &e);
		took_prepared = rc == 0;
	}
	if (rc == 1) {
		cgroup_fd = cgroup_create(&req->limits, cgroup, &ahead, &e);
		stamp(STAMP_CGROUP);
		rc = cgroup_fd == -1 ? -1 : container_start(req, cgroup_fd, &f, &reaper, &pid, &e);
		if (cgroup_fd >= 0)
			close(cgroup_fd);
	}
	if (rc != 0) {
		spawn_fds_close_all(&f);
		cgroup_release(cgroup);
		return reply_error(s, id, &e);
	}
	if (register_process(req->handle, pid, reaper, 1, &f) == NULL ||
	    (c = container_add(req->container, reaper, req->handle)) == NULL) {
		op_fail(&e, "ESPAWN", ENOMEM, "out of memory");
		return reply_error(s, id, &e);
	}
	snprintf(c->cgroup, sizeof(c->cgroup), "%s", cgroup);
	/* the reply first: under TCG each console line costs ~1 ms, which the host need not
	 * wait for (the process runs already) */
	reply_ok(s, id, msg_pid(pid));
	stamp(STAMP_START_OK);
	c->mounts_fd = container_hold_mounts(reaper);
	log_msg("container %s started%s: process %u is pid %d, cgroup %s%s", req->container,
		took_prepared ? " (prepared)" : "", req->handle, (int)pid,
		cgroup[0] != '\0' ? cgroup : "none",
		cgroup[0] != '\0' && !ahead ? " (made at its START)" : "");
	return 0;
}

static int handle_exec(struct server *s, uint32_t id, const struct exec_req *req)
{
	struct container *c = container_find(req->container);
	struct op_error e;
	struct spawn_fds f;
	pid_t shim, pid;

	if (c == NULL || c->main_ended) { /* ended: its namespaces are going (ending.h) */
		op_fail(&e, "ENOCONT", 0, "container: no running container named %s",
			req->container);
		return reply_error(s, id, &e);
	}
	if (check_new_handle(req->handle, &e) != 0 ||
	    spawn_fds_open(&f, req->proc.stdin_pipe, req->proc.tty, &e) != 0)
		return reply_error(s, id, &e);
	if (container_exec(c->cgroup, c->reaper_pid, &req->proc, &f, &shim, &pid, &e) != 0) {
		spawn_fds_close_all(&f);
		return reply_error(s, id, &e);
	}
	if (register_process(req->handle, pid, shim, 0, &f) == NULL) {
		op_fail(&e, "ESPAWN", ENOMEM, "out of memory");
		return reply_error(s, id, &e);
	}
	reply_ok(s, id, msg_pid(pid));
	return 0;
}

static int handle_signal(struct server *s, uint32_t id, const struct signal_req *req)
{
	struct process *p = proc_find(req->handle);
	struct op_error e;
	pid_t target;

	if (p == NULL || p->exited) {
		op_fail(&e, "ESRCH", 0, "handle: no running process %u", req->handle);
		return reply_error(s, id, &e);
	}
	/* The reaper forwards what it can catch; SIGKILL and SIGSTOP go straight to the process. */
	target = (p->is_main && req->signo != SIGKILL && req->signo != SIGSTOP) ? p->shim_pid
										 : p->pid;
	if (kill(target, req->signo) != 0) {
		log_errno("kill %d with signal %d", (int)target, req->signo);
		op_fail(&e, errno == ESRCH ? "ESRCH" : "EINVAL", errno, "signal %d to process %u",
			req->signo, req->handle);
		return reply_error(s, id, &e);
	}
	reply_ok(s, id, strdup("{}"));
	return 0;
}

static int handle_resize(struct server *s, uint32_t id, const struct resize_req *req)
{
	struct process *p = proc_find(req->handle);
	struct winsize size = {.ws_row = req->rows, .ws_col = req->cols};
	struct op_error e;

	if (p == NULL || p->exited) {
		op_fail(&e, "ESRCH", 0, "handle: no running process %u", req->handle);
		return reply_error(s, id, &e);
	}
	if (p->pty_fd < 0 || ioctl(p->pty_fd, TIOCSWINSZ, &size) != 0) {
		op_fail(&e, "EINVAL", p->pty_fd < 0 ? 0 : errno, "handle: process %u has no terminal",
			req->handle);
		return reply_error(s, id, &e);
	}
	reply_ok(s, id, strdup("{}"));
	return 0;
}

static int handle_network(struct server *s, uint32_t id, const struct network_req *req)
{
	struct op_error e;

	if (net_configure(req, &e) != 0)
		return reply_error(s, id, &e);
	stamp(STAMP_NETWORK_DONE);
	reply_ok(s, id, strdup("{}"));
	stamp(STAMP_NETWORK_OK);
	return 0;
}

static int handle_reseed(struct server *s, uint32_t id, const struct reseed_req *req)
{
	struct op_error e;

	char reply[32];
	unsigned online = 0;

	if (entropy_reseed(req->seed, req->len, &e) != 0)
		return reply_error(s, id, &e);
	if (req->cpus == 0) {
		reply_ok(s, id, strdup("{}"));
		return 0;
	}
	if (cpus_online(req->cpus, &online, &e) != 0)
		return reply_error(s, id, &e);
	snprintf(reply, sizeof(reply), "{\"cpus\": %u}", online);
	reply_ok(s, id, strdup(reply));
	return 0;
}

static void dispatch(struct server *s, const struct request *r, const uint8_t *payload,
		     size_t len)
{
	switch (r->type) {
	case MSG_START:
		handle_start(s, r->id, &r->u.start, payload, len);
		break;
	case MSG_PREPARE:
		handle_prepare(s, r->id, &r->u.prepare);
		break;
	case MSG_EXEC:
		handle_exec(s, r->id, &r->u.exec);
		break;
	case MSG_SIGNAL:
		handle_signal(s, r->id, &r->u.signal);
		break;
	case MSG_NETWORK:
		handle_network(s, r->id, &r->u.network);
		break;
	case MSG_RESIZE:
		handle_resize(s, r->id, &r->u.resize);
		break;
	case MSG_RESEED:
		handle_reseed(s, r->id, &r->u.reseed);
		break;
	case MSG_POWEROFF:
		reply_ok(s, r->id, strdup("{}"));
		power_off();
	case MSG_PING:
		reply_ok(s, r->id, strdup("{}"));
		break;
	}
}

void server_on_frame(void *ctx, const struct frame_header *h, const uint8_t *payload)
{
	struct server *s = ctx;
	struct request req;
	struct req_error err;

	if (h->type == MSG_START || h->type == MSG_NETWORK)
		stamp(h->type == MSG_START ? STAMP_START_RECV : STAMP_NETWORK_RECV);
	if (h->type == MSG_STDIN) {
		relay_stdin_frame(h->id, payload, h->length);
		return;
	}
	if (request_parse(h->type, h->id, payload, h->length, &req, &err) != 0) {
		log_msg("frame type 0x%x id %u refused: %s %s", h->type, h->id, err.code,
			err.message);
		channel_send_error(s->ch, h->id, err.code, err.message, 0);
		return;
	}
	dispatch(s, &req, payload, h->length);
	request_free(&req);
}
