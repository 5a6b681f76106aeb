/* The virtio-serial channel to the host: find and open the port, track whether the host side
 * is connected, read frames, write frames. PROTOCOL.md "Transport", "Framing", "Errors". */
#ifndef HYPERVM_CHANNEL_H
#define HYPERVM_CHANNEL_H

#include <stddef.h>
#include <stdint.h>

#include "frame.h"

#define CHANNEL_PORT_NAME "org.hypervm.channel.0"

enum channel_state {
	CH_DISCONNECTED, /* host side closed: writes would be lost, wait for a connection */
	CH_CONNECTED,    /* READY sent, frames flow */
	CH_DISCARDING,   /* after EPROTO: drop input until the host disconnects */
};

struct channel {
	int fd;
	enum channel_state state;
	struct frame_reader reader;
};

typedef void (*frame_handler)(void *ctx, const struct frame_header *h, const uint8_t *payload);

/* Find the port in /sys/class/virtio-ports and open it (non-blocking); 0 or -1. */
int channel_open(struct channel *ch);

/* 1 when the host side of the port is connected (poll does not report POLLHUP). */
int channel_host_connected(const struct channel *ch);

/* Start a new session: reset the reader, mark connected (the caller then sends READY). */
void channel_begin_session(struct channel *ch);

/* Read what is available and call handler for every complete frame. Detects a disconnect
 * (state becomes CH_DISCONNECTED) and framing errors (sends ERROR EPROTO, state becomes
 * CH_DISCARDING). revents are the poll() events seen for the fd. */
void channel_on_readable(struct channel *ch, short revents, frame_handler handler, void *ctx);

/* Send one frame; dropped (-1) unless connected. len must not exceed FRAME_MAX_PAYLOAD. */
int channel_send(struct channel *ch, uint16_t type, uint32_t id, const void *payload, size_t len);

/* Send a JSON payload (a NUL-terminated string; NULL means out of memory: sends nothing). */
int channel_send_json(struct channel *ch, uint16_t type, uint32_t id, const char *json);

/* ERROR reply {"code", "message", "errno"?}. */
int channel_send_error(struct channel *ch, uint32_t id, const char *code, const char *message,
		       int err_no);

#endif
