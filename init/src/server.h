/* Request dispatch: one frame from the host in, exactly one reply out for every request. */
#ifndef HYPERVM_SERVER_H
#define HYPERVM_SERVER_H

#include <stdint.h>

#include "channel.h"

struct server {
	struct channel *ch;
	char kernel_release[65];
};

/* Send READY (at the start of every host session). */
void server_send_ready(struct server *s);

/* frame_handler for channel_on_readable(); ctx is a struct server. */
void server_on_frame(void *ctx, const struct frame_header *h, const uint8_t *payload);

#endif
