#define _GNU_SOURCE
#include "relay.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ending.h"
#include "log.h"
#include "message.h"
#include "stamp.h"

#define READ_CHUNK (64 * 1024)

size_t relay_poll_fds(struct pollfd *pfds, struct relay_slot *slots, size_t room,
		      int relay_output)
{
	size_t n = 0;

	for (struct process *p = proc_first(); p != NULL; p = p->next) {
		if (n + RELAY_FDS_PER_PROCESS > room)
			break;
		if (relay_output && p->out_fd >= 0) {
			pfds[n] = (struct pollfd){.fd = p->out_fd, .events = POLLIN};
			slots[n++] = (struct relay_slot){p, RELAY_STDOUT};
		}
		if (relay_output && p->err_fd >= 0) {
			pfds[n] = (struct pollfd){.fd = p->err_fd, .events = POLLIN};
			slots[n++] = (struct relay_slot){p, RELAY_STDERR};
		}
		if (p->in_fd >= 0 && (p->in_queue.len > p->in_queue.off || p->in_close_pending)) {
			pfds[n] = (struct pollfd){.fd = p->in_fd, .events = POLLOUT};
			slots[n++] = (struct relay_slot){p, RELAY_STDIN};
		}
		if (p->status_fd >= 0 && !p->exited) {
			pfds[n] = (struct pollfd){.fd = p->status_fd, .events = POLLIN};
			slots[n++] = (struct relay_slot){p, RELAY_STATUS};
		}
	}
	return n;
}

static void relay_output(struct channel *ch, struct process *p, int *fd, uint16_t type)
{
	static uint8_t buf[READ_CHUNK];
	ssize_t n = read(*fd, buf, sizeof(buf));

	if (n > 0) {
		channel_send(ch, type, p->handle, buf, (size_t)n);
		return;
	}
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n < 0 && errno != EIO) /* EIO: a terminal master whose slave was closed */
		log_errno("read output of process %u", p->handle);
	if (p->is_main)
		stamp(type == MSG_STDOUT ? STAMP_STDOUT_EOF : STAMP_STDERR_EOF);
	close(*fd);
	*fd = -1;
}

/* Write queued stdin; close the pipe when asked to and drained, or when the reader is gone. */
static void relay_input(struct process *p)
{
	struct byte_queue *q = &p->in_queue;

	while (q->len > q->off) {
		ssize_t n = write(p->in_fd, q->data + q->off, q->len - q->off);

		if (n > 0) {
			q->off += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		/* EPIPE: the process closed its stdin; what is left cannot be delivered */
		proc_close_stdin(p);
		return;
	}
	free(q->data);
	memset(q, 0, sizeof(*q));
	if (p->in_close_pending)
		proc_close_stdin(p);
}

void relay_on_event(struct channel *ch, const struct relay_slot *slot, short revents)
{
	struct process *p = slot->proc;

	if (revents == 0)
		return;
	/* the channel may have gone away earlier in this round: keep the bytes in the pipe */
	if ((slot->stream == RELAY_STDOUT || slot->stream == RELAY_STDERR) &&
	    ch->state != CH_CONNECTED)
		return;
	switch (slot->stream) {
	case RELAY_STDOUT:
		relay_output(ch, p, &p->out_fd, MSG_STDOUT);
		break;
	case RELAY_STDERR:
		relay_output(ch, p, &p->err_fd, MSG_STDERR);
		break;
	case RELAY_STDIN:
		if (p->in_fd >= 0)
			relay_input(p);
		break;
	case RELAY_STATUS:
		ending_on_pipe(p);
		break;
	}
}

void relay_stdin_frame(uint32_t handle, const uint8_t *data, size_t len)
{
	struct process *p = proc_find(handle);
	struct byte_queue *q;

	if (p == NULL || p->in_fd < 0 || p->in_close_pending)
		return; /* not a request: nothing to answer; the data has nowhere to go */
	if (len == 0 && p->pty_fd >= 0) { /* a terminal's end of input: its EOF character */
		data = (const uint8_t *)"\x04";
		len = 1;
	} else if (len == 0) {
		p->in_close_pending = 1;
		relay_input(p);
		return;
	}
	q = &p->in_queue;
	if (q->off > 0) { /* compact before growing */
		memmove(q->data, q->data + q->off, q->len - q->off);
		q->len -= q->off;
		q->off = 0;
	}
	uint8_t *grown = realloc(q->data, q->len + len);
	if (grown == NULL) {
		log_msg("out of memory queueing stdin of process %u: dropped %zu bytes", handle,
			len);
		return;
	}
	q->data = grown;
	memcpy(q->data + q->len, data, len);
	q->len += len;
	relay_input(p);
}

size_t relay_flush_exits(struct channel *ch)
{
	struct process *p = proc_first();
	size_t sent = 0;

	while (p != NULL) {
		struct process *next = p->next;

		if (p->exited && p->out_fd < 0 && p->err_fd < 0 && ch->state == CH_CONNECTED) {
			char *json = msg_exit(p->wait_status, p->oom_killed);

			if (channel_send_json(ch, MSG_EXIT, p->handle, json) == 0) {
				if (p->is_main)
					stamp(STAMP_EXIT_SENT);
				proc_remove(p);
				sent++;
			}
			free(json);
		}
		p = next;
	}
	return sent;
}
