#include "frame.h"

#include <string.h>

static void put_u32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static void put_u16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static uint32_t get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint16_t get_u16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

void frame_header_encode(uint8_t out[FRAME_HEADER_SIZE], const struct frame_header *h)
{
	put_u32(out, h->length);
	put_u16(out + 4, h->type);
	put_u16(out + 6, h->flags);
	put_u32(out + 8, h->id);
}

void frame_header_decode(const uint8_t in[FRAME_HEADER_SIZE], struct frame_header *h)
{
	h->length = get_u32(in);
	h->type = get_u16(in + 4);
	h->flags = get_u16(in + 6);
	h->id = get_u32(in + 8);
}

int frame_header_valid(const struct frame_header *h)
{
	return (h->length <= FRAME_MAX_PAYLOAD && h->flags == 0) ? 0 : -1;
}

void frame_reader_init(struct frame_reader *r, uint8_t *payload_buf)
{
	memset(r, 0, sizeof(*r));
	r->payload = payload_buf;
}

void frame_reader_reset(struct frame_reader *r)
{
	frame_reader_init(r, r->payload);
}

enum frame_status frame_reader_feed(struct frame_reader *r, const uint8_t *data, size_t len,
				    size_t *consumed)
{
	size_t used = 0;

	*consumed = 0;
	if (r->broken)
		return FRAME_EPROTO;
	if (r->head_have == FRAME_HEADER_SIZE && r->payload_have == r->header.length) {
		/* the previous call returned a complete frame: start the next one */
		r->head_have = 0;
		r->payload_have = 0;
	}
	if (r->head_have < FRAME_HEADER_SIZE) {
		size_t want = FRAME_HEADER_SIZE - r->head_have;
		size_t take = len < want ? len : want;

		if (take > 0)
			memcpy(r->head + r->head_have, data, take);
		r->head_have += take;
		used += take;
		if (r->head_have < FRAME_HEADER_SIZE) {
			*consumed = used;
			return FRAME_NEED_MORE;
		}
		frame_header_decode(r->head, &r->header);
		if (frame_header_valid(&r->header) != 0) {
			r->broken = 1;
			*consumed = used;
			return FRAME_EPROTO;
		}
		r->payload_have = 0;
	}
	size_t want = r->header.length - r->payload_have;
	size_t avail = len - used;
	size_t take = avail < want ? avail : want;

	if (take > 0)
		memcpy(r->payload + r->payload_have, data + used, take);
	r->payload_have += take;
	used += take;
	*consumed = used;
	return r->payload_have == r->header.length ? FRAME_COMPLETE : FRAME_NEED_MORE;
}
