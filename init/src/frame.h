/* Frame codec of PROTOCOL.md: 12-byte big-endian header + payload. Pure: no I/O. */
#ifndef HYPERVM_FRAME_H
#define HYPERVM_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define PROTOCOL_VERSION 1
#define FRAME_HEADER_SIZE 12
#define FRAME_MAX_PAYLOAD (1024u * 1024u)

enum msg_type {
	MSG_READY = 0x01,
	MSG_OK = 0x02,
	MSG_ERROR = 0x03,
	MSG_START = 0x10,
	MSG_EXEC = 0x11,
	MSG_SIGNAL = 0x12,
	MSG_POWEROFF = 0x13,
	MSG_PING = 0x14,
	MSG_NETWORK = 0x15,
	MSG_PREPARE = 0x16,
	MSG_RESIZE = 0x17,
	MSG_RESEED = 0x18,
	MSG_STDIN = 0x20,
	MSG_STDOUT = 0x21,
	MSG_STDERR = 0x22,
	MSG_EXIT = 0x23,
};

struct frame_header {
	uint32_t length;
	uint16_t type;
	uint16_t flags;
	uint32_t id;
};

void frame_header_encode(uint8_t out[FRAME_HEADER_SIZE], const struct frame_header *h);
void frame_header_decode(const uint8_t in[FRAME_HEADER_SIZE], struct frame_header *h);

/* 0 when the header may be followed (length within the maximum, flags zero), else -1. */
int frame_header_valid(const struct frame_header *h);

enum frame_status {
	FRAME_NEED_MORE = 0, /* all input consumed, no complete frame yet */
	FRAME_COMPLETE = 1,  /* reader->header and reader->payload hold one frame */
	FRAME_EPROTO = -1,   /* bad header: the stream cannot be trusted any more */
};

/* Incremental reader. The payload buffer is owned by the caller and holds FRAME_MAX_PAYLOAD. */
struct frame_reader {
	uint8_t head[FRAME_HEADER_SIZE];
	size_t head_have;
	struct frame_header header;
	uint8_t *payload;
	size_t payload_have;
	int broken;
};

void frame_reader_init(struct frame_reader *r, uint8_t *payload_buf);
void frame_reader_reset(struct frame_reader *r);

/* Consume bytes from data[0..len); *consumed tells how many. On FRAME_COMPLETE the frame stays
 * valid until the next call. Once FRAME_EPROTO is returned every call returns it again until
 * frame_reader_reset(). */
enum frame_status frame_reader_feed(struct frame_reader *r, const uint8_t *data, size_t len,
				    size_t *consumed);

#endif
