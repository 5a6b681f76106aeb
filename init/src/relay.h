/* Stdio relay between processes and the channel: stdout/stderr pipes -> STDOUT/STDERR frames,
 * STDIN frames -> stdin pipes (queued, non-blocking), and EXIT frames once a process has ended
 * (its status read from its shim's status pipe, polled here too: ending.h) and both its output
 * pipes reached EOF. */
#ifndef HYPERVM_RELAY_H
#define HYPERVM_RELAY_H

#include <poll.h>
#include <stddef.h>
#include <stdint.h>

#include "channel.h"
#include "proc.h"

/* Above this many queued stdin bytes init stops reading the channel (back-pressure). */
#define STDIN_BACKLOG_MAX (4u * 1024u * 1024u)

enum relay_stream { RELAY_STDOUT, RELAY_STDERR, RELAY_STDIN, RELAY_STATUS };

/* Poll entries per process at most (relay_poll_fds). */
#define RELAY_FDS_PER_PROCESS 4

struct relay_slot {
	struct process *proc;
	enum relay_stream stream;
};

/* Append poll entries for the process pipes; output pipes only when `relay_output` (status
 * pipes always). Returns the number added (at most `room`). */
size_t relay_poll_fds(struct pollfd *pfds, struct relay_slot *slots, size_t room,
		      int relay_output);

/* Handle one polled pipe. */
void relay_on_event(struct channel *ch, const struct relay_slot *slot, short revents);

/* A STDIN frame from the host. */
void relay_stdin_frame(uint32_t handle, const uint8_t *data, size_t len);

/* Send EXIT for every process that has ended and whose output is drained; frees them. How
 * many were sent. */
size_t relay_flush_exits(struct channel *ch);

#endif
