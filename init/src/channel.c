#define _GNU_SOURCE
#include "channel.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "message.h"
#include "sysfs.h"

#define PORTS_DIR "/sys/class/virtio-ports"
#define READ_CHUNK (64 * 1024)

static uint8_t payload_buf[FRAME_MAX_PAYLOAD];

/* The /dev name of the port called CHANNEL_PORT_NAME, e.g. "vport1p1". */
static int find_port(char *dev, size_t size)
{
	DIR *dir = opendir(PORTS_DIR);
	struct dirent *de;
	int found = -1;

	if (dir == NULL)
		return -1;
	while (found != 0 && (de = readdir(dir)) != NULL) {
		char path[512], name[128];

		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s/name", PORTS_DIR, de->d_name);
		if (sysfs_read(path, name, sizeof(name)) == 0 &&
		    strcmp(name, CHANNEL_PORT_NAME) == 0) {
			snprintf(dev, size, "/dev/%s", de->d_name);
			found = 0;
		}
	}
	closedir(dir);
	return found;
}

int channel_open(struct channel *ch)
{
	char dev[300];
	const struct timespec pause = {0, 10 * 1000 * 1000};

	memset(ch, 0, sizeof(*ch));
	ch->fd = -1;
	ch->state = CH_DISCONNECTED;
	frame_reader_init(&ch->reader, payload_buf);
	/* The port is probed before init runs; retry briefly in case its driver is a module. */
	for (int i = 0; i < 500; i++) {
		if (find_port(dev, sizeof(dev)) == 0)
			break;
		if (i == 499) {
			log_msg("no virtio-serial port named %s in %s", CHANNEL_PORT_NAME, PORTS_DIR);
			return -1;
		}
		nanosleep(&pause, NULL);
	}
	ch->fd = open(dev, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
	if (ch->fd < 0) {
		log_errno("open %s", dev);
		return -1;
	}
	log_msg("channel %s is %s", CHANNEL_PORT_NAME, dev);
	return 0;
}

int channel_host_connected(const struct channel *ch)
{
	struct pollfd pfd = {.fd = ch->fd, .events = POLLOUT};

	if (poll(&pfd, 1, 0) < 0)
		return 0;
	return (pfd.revents & POLLHUP) == 0;
}

void channel_begin_session(struct channel *ch)
{
	frame_reader_reset(&ch->reader);
	ch->state = CH_CONNECTED;
}

static void mark_disconnected(struct channel *ch)
{
	if (ch->state != CH_DISCONNECTED)
		log_msg("host disconnected from the channel");
	ch->state = CH_DISCONNECTED;
	frame_reader_reset(&ch->reader);
}

/* Write all of buf, waiting for room; -1 (and disconnected) when the host goes away. */
static int write_all(struct channel *ch, const uint8_t *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(ch->fd, buf, len);

		if (n > 0) {
			buf += n;
			len -= (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno != EAGAIN) {
			log_errno("write to channel");
			mark_disconnected(ch);
			return -1;
		}
		struct pollfd pfd = {.fd = ch->fd, .events = POLLOUT};
		if (poll(&pfd, 1, -1) < 0 && errno != EINTR) {
			log_errno("poll channel for writing");
			return -1;
		}
		if (pfd.revents & POLLHUP) {
			mark_disconnected(ch);
			return -1;
		}
	}
	return 0;
}

int channel_send(struct channel *ch, uint16_t type, uint32_t id, const void *payload, size_t len)
{
	uint8_t head[FRAME_HEADER_SIZE];
	struct frame_header h = {.length = (uint32_t)len, .type = type, .flags = 0, .id = id};

	if (ch->state != CH_CONNECTED)
		return -1;
	if (len > FRAME_MAX_PAYLOAD) {
		log_msg("refusing to send a frame of %zu bytes (maximum %u)", len,
			FRAME_MAX_PAYLOAD);
		return -1;
	}
	frame_header_encode(head, &h);
	if (write_all(ch, head, sizeof(head)) != 0)
		return -1;
	return len > 0 ? write_all(ch, payload, len) : 0;
}

int channel_send_json(struct channel *ch, uint16_t type, uint32_t id, const char *json)
{
	if (json == NULL) {
		log_msg("out of memory building a reply");
		return -1;
	}
	return channel_send(ch, type, id, json, strlen(json));
}

int channel_send_error(struct channel *ch, uint32_t id, const char *code, const char *message,
		       int err_no)
{
	char *json = msg_error(code, message, err_no);
	int rc = channel_send_json(ch, MSG_ERROR, id, json);

	free(json);
	return rc;
}

static void on_eproto(struct channel *ch)
{
	const struct frame_header *h = &ch->reader.header;
	char text[160];

	snprintf(text, sizeof(text),
		 "bad frame header (length %u, type 0x%x, flags 0x%x): stream out of sync",
		 h->length, h->type, h->flags);
	log_msg("protocol error: %s; discarding input until the host reconnects", text);
	channel_send_error(ch, 0, "EPROTO", text, 0);
	ch->state = CH_DISCARDING;
}

void channel_on_readable(struct channel *ch, short revents, frame_handler handler, void *ctx)
{
	static uint8_t buf[READ_CHUNK];
	ssize_t n = read(ch->fd, buf, sizeof(buf));
	size_t off = 0;

	if (n == 0 || (n < 0 && errno == EAGAIN && (revents & POLLHUP))) {
		mark_disconnected(ch);
		return;
	}
	if (n < 0) {
		if (errno != EAGAIN && errno != EINTR)
			log_errno("read from channel");
		return;
	}
	while (off < (size_t)n && ch->state == CH_CONNECTED) {
		size_t used;
		enum frame_status st =
		    frame_reader_feed(&ch->reader, buf + off, (size_t)n - off, &used);

		off += used;
		if (st == FRAME_EPROTO) {
			on_eproto(ch);
		} else if (st == FRAME_COMPLETE) {
			handler(ctx, &ch->reader.header, ch->reader.payload);
		}
	}
}
