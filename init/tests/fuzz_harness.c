/* Host-side harness for init's pure parsers (frame reader, request parser, reply builders).
 * Built with ASan + UBSan by `make -C init fuzz-harness`; used by tests/unit/test_init_*.py.
 *
 *   fuzz-harness --random N [--seed S]   N generated inputs (random, framed, mutated JSON)
 *   fuzz-harness --classify              read a byte stream on stdin, print one line per frame
 *   fuzz-harness FILE...                 feed each file as a byte stream
 *
 * Any crash or sanitizer report makes the exit status non-zero; broken invariants abort(). */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/frame.h"
#include "../src/message.h"
#include "../src/parse.h"

static uint64_t rng_state;
static unsigned long n_frames, n_parsed, n_refused, n_eproto;

static uint32_t rnd(void)
{
	/* xorshift64* */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return (uint32_t)((rng_state * 2685821657736338717ULL) >> 32);
}

static uint32_t below(uint32_t n) { return n == 0 ? 0 : rnd() % n; }

static void check(int cond, const char *what)
{
	if (!cond) {
		fprintf(stderr, "invariant broken: %s\n", what);
		abort();
	}
}

static void check_proc(const struct proc_spec *p)
{
	check(p->nargs > 0 && p->args[0] != NULL && p->args[0][0] != '\0', "args[0] non-empty");
	check(p->args[p->nargs] == NULL, "args NULL-terminated");
	check(p->env != NULL && p->env[p->nenv] == NULL, "env NULL-terminated");
	for (size_t i = 0; i < p->nenv; i++)
		check(strchr(p->env[i], '=') != NULL && p->env[i][0] != '=', "env KEY=VALUE");
	check(p->cwd != NULL && p->cwd[0] == '/', "cwd absolute");
	check(p->ngids <= MAX_GIDS, "gids bounded");
	check(p->no_new_privs >= -1 && p->no_new_privs <= 1, "no_new_privs");
}

static void check_request(const struct request *r)
{
	switch (r->type) {
	case MSG_START: {
		const struct start_req *s = &r->u.start;
		check(valid_name(s->container, MAX_NAME_LEN), "container name");
		check(s->handle != 0, "handle non-zero");
		check(s->nlayers > 0 && s->nlayers <= MAX_LAYERS, "layers count");
		for (size_t i = 0; i < s->nlayers; i++)
			check(valid_name(s->layers[i], MAX_SERIAL_LEN) &&
				  (s->pci[i] == NULL || valid_pci_addr(s->pci[i])), "layer serial, address");
		for (size_t i = s->nlayers; i < MAX_LAYERS; i++)
			check(s->pci[i] == NULL, "no address beyond the layers");
		check(s->nmounts <= MAX_MOUNTS, "mounts count");
		for (size_t i = 0; i < s->nmounts; i++)
			check(s->mounts[i].destination[0] == '/' &&
				  (s->mounts[i].kind == MOUNT_TMPFS || s->mounts[i].source != NULL),
			      "mount fields");
		check(s->hostname != NULL && valid_name(s->hostname, MAX_NAME_LEN), "hostname");
		check((s->limits.memory == 0 || s->limits.memory >= MIN_MEMORY_LIMIT) &&
			  s->limits.memory <= MAX_LIMIT_BYTES, "memory limit");
		check(s->limits.pids != 1 && s->limits.pids <= MAX_PIDS_LIMIT, "pids limit");
		check((s->limits.scratch == 0 || s->limits.scratch >= MIN_SCRATCH_LIMIT) &&
			  s->limits.scratch <= MAX_LIMIT_BYTES, "scratch limit");
		check_proc(&s->proc);
		break;
	}
	case MSG_PREPARE: {
		const struct prepare_req *p = &r->u.prepare;
		check(p->rootfs.nlayers > 0 && p->rootfs.nlayers <= MAX_LAYERS, "layers count");
		for (size_t i = 0; i < p->rootfs.nlayers; i++)
			check(valid_name(p->rootfs.layers[i], MAX_SERIAL_LEN), "layer serial");
		check(p->nshares <= MAX_MOUNTS, "shares count");
		for (size_t i = 0; i < p->nshares; i++)
			check(p->shares[i] != NULL && p->shares[i][0] != '\0', "share tag");
		break;
	}
	case MSG_EXEC:
		check(valid_name(r->u.exec.container, MAX_NAME_LEN), "container name");
		check(r->u.exec.handle != 0, "handle non-zero");
		check_proc(&r->u.exec.proc);
		break;
	case MSG_SIGNAL:
		check(r->u.signal.handle != 0, "handle non-zero");
		check(r->u.signal.signo >= 1 && r->u.signal.signo <= MAX_SIGNAL, "signal range");
		break;
	default:
		break;
	}
}

/* One complete frame: parse it like init does; print a line when classify. */
static void on_frame(const struct frame_header *h, const uint8_t *payload, int classify)
{
	struct request req;
	struct req_error err;

	n_frames++;
	check(h->length <= FRAME_MAX_PAYLOAD && h->flags == 0, "complete frame header valid");
	if (h->type == MSG_STDIN) {
		if (classify)
			printf("FRAME type=0x%x id=%u STDIN %u\n", h->type, h->id, h->length);
		return;
	}
	if (request_parse(h->type, h->id, payload, h->length, &req, &err) != 0) {
		char *json = msg_error(err.code, err.message, 0);
		check(json != NULL, "error reply built");
		if (classify)
			printf("FRAME type=0x%x id=%u ERROR %s %s\n", h->type, h->id, err.code,
			       err.message);
		free(json);
		n_refused++;
		return;
	}
	check_request(&req);
	if (classify)
		printf("FRAME type=0x%x id=%u OK\n", h->type, h->id);
	request_free(&req);
	n_parsed++;
}

/* Feed a byte stream in chunks of random size, as reads from the port would deliver it. */
static void feed_stream(const uint8_t *data, size_t len, int classify)
{
	static uint8_t payload[FRAME_MAX_PAYLOAD];
	struct frame_reader r;
	size_t off = 0;

	frame_reader_init(&r, payload);
	while (off < len) {
		size_t chunk = classify ? len - off : 1 + below((uint32_t)(len - off));
		size_t used = 0;

		while (chunk > 0) {
			enum frame_status st = frame_reader_feed(&r, data + off, chunk, &used);

			check(used <= chunk, "consumed within input");
			off += used;
			chunk -= used;
			if (st == FRAME_EPROTO) {
				n_eproto++;
				if (classify)
					printf("EPROTO length=%u type=0x%x flags=0x%x\n",
					       r.header.length, r.header.type, r.header.flags);
				return; /* init discards the rest until the host reconnects */
			}
			if (st == FRAME_COMPLETE)
				on_frame(&r.header, r.payload, classify);
			else
				check(chunk == 0, "NEED_MORE consumes everything");
		}
	}
}

static const char *const seeds[] = {
    "{\"container\":\"web\",\"handle\":1,\"rootfs\":{\"layers\":[\"layer0\",\"layer1\"],"
    "\"readonly\":false},\"mounts\":[{\"type\":\"9p\",\"source\":\"sandbox\",\"destination\":"
    "\"/mnt/sandbox\",\"readonly\":false},{\"type\":\"tmpfs\",\"destination\":\"/tmp\"}],"
    "\"hostname\":\"web\",\"process\":{\"args\":[\"/bin/sh\",\"-c\",\"echo hi\"],\"env\":"
    "[\"PATH=/usr/bin:/bin\",\"K=V\"],\"cwd\":\"/\",\"uid\":0,\"gid\":0,\"additional_gids\":"
    "[1,2],\"stdin\":true}}",
    "{\"container\":\"web\",\"handle\":7,\"process\":{\"args\":[\"ls\",\"-l\"]}}",
    "{\"handle\":1,\"signal\":15}",
    "{}",
    "{\"interfaces\":[{\"mac\":\"52:54:00:12:34:56\",\"address\":\"10.0.2.15\",\"prefix\":24,"
    "\"gateway\":\"10.0.2.2\",\"mtu\":1500}],\"nameservers\":[\"10.0.2.3\"],\"search\":"
    "[\"example.org\"],\"hosts\":[{\"address\":\"::1\",\"names\":[\"localhost\"]}]}",
    "{\"rootfs\":{\"layers\":[\"l0\",\"l1\"],\"readonly\":false,\"wait_ms\":100},"
    "\"shares\":[\"pool\"]}",
};

static const uint16_t types[] = {MSG_START, MSG_EXEC, MSG_SIGNAL, MSG_POWEROFF, MSG_PING,
				 MSG_NETWORK, MSG_PREPARE, MSG_STDIN, MSG_READY, MSG_EXIT, 0x7777};

static const char *const tokens[] = {
    "{", "}", "[", "]", ",", ":", "\"", "null", "true", "false", "0", "-1", "4294967295",
    "4294967296", "1e309", "-0", "0.5", "\"\\u0000\"", "\"..\"", "\"/\"", "\"a=b\"", "\"=x\"",
    "\"\\ud800\"", "[[[[[[[[", "{\"args\":[]}", "\"layers\"", "\"process\"", "65",
};

static size_t mutate(const char *seed, uint8_t *out, size_t cap)
{
	size_t len = strlen(seed);

	if (len > cap)
		len = cap;
	memcpy(out, seed, len);
	for (uint32_t k = 0, n = 1 + below(8); k < n; k++) {
		uint32_t op = below(5);
		size_t pos = len ? below((uint32_t)len + 1) : 0;

		if (op == 0 && len > 0 && pos < len) { /* flip a bit */
			out[pos] ^= (uint8_t)(1u << below(8));
		} else if (op == 1 && pos < len) { /* truncate */
			len = pos;
		} else if (op == 2) { /* insert a JSON token */
			const char *t = tokens[below(sizeof(tokens) / sizeof(tokens[0]))];
			size_t tl = strlen(t);
			if (len + tl <= cap) {
				memmove(out + pos + tl, out + pos, len - pos);
				memcpy(out + pos, t, tl);
				len += tl;
			}
		} else if (op == 3 && len > 0 && pos < len) { /* delete a span */
			size_t span = 1 + below((uint32_t)(len - pos));
			memmove(out + pos, out + pos + span, len - pos - span);
			len -= span;
		} else if (len > 0) { /* duplicate a span */
			uint8_t copy[256];
			size_t from = below((uint32_t)len), span = 1 + below((uint32_t)(len - from));
			if (span > sizeof(copy))
				span = sizeof(copy);
			if (len + span <= cap) {
				memcpy(copy, out + from, span);
				memmove(out + pos + span, out + pos, len - pos);
				memcpy(out + pos, copy, span);
				len += span;
			}
		}
	}
	return len;
}

static size_t put_frame(uint8_t *buf, uint16_t type, uint32_t id, uint32_t length, uint16_t flags)
{
	struct frame_header h = {.length = length, .type = type, .flags = flags, .id = id};

	frame_header_encode(buf, &h);
	return FRAME_HEADER_SIZE;
}

static void one_random_input(void)
{
	static uint8_t buf[64 * 1024];
	size_t len = 0;
	uint32_t nframes = 1 + below(4);

	for (uint32_t f = 0; f < nframes && len < sizeof(buf) - 8192; f++) {
		uint32_t mode = below(10);
		uint8_t *head = buf + len;
		uint16_t type = types[below(sizeof(types) / sizeof(types[0]))];
		uint32_t id = below(4) == 0 ? 0 : rnd();

		if (mode == 0) { /* raw garbage */
			uint32_t n = below(4096);
			for (uint32_t i = 0; i < n; i++)
				buf[len++] = (uint8_t)rnd();
			continue;
		}
		if (mode == 1) { /* a header that breaks the framing, or a huge length */
			uint32_t length = FRAME_MAX_PAYLOAD + 1 + below(1000);
			len += put_frame(head, type, id, below(2) ? length : 0, (uint16_t)(1 + below(9)));
			continue;
		}
		len += FRAME_HEADER_SIZE;
		size_t plen;
		if (mode == 2) { /* random payload bytes */
			plen = below(2048);
			for (size_t i = 0; i < plen; i++)
				buf[len + i] = (uint8_t)rnd();
		} else { /* mutated valid request */
			const char *seed = seeds[below(sizeof(seeds) / sizeof(seeds[0]))];
			plen = mode == 9 ? strlen(seed) : mutate(seed, buf + len, 4096);
			if (mode == 9)
				memcpy(buf + len, seed, plen);
		}
		put_frame(head, type, id, (uint32_t)plen, 0);
		len += plen;
	}
	feed_stream(buf, len, 0);
}

static int feed_file(const char *path, int classify)
{
	FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
	uint8_t *data = NULL;
	size_t len = 0, cap = 0;

	if (f == NULL) {
		perror(path);
		return -1;
	}
	for (;;) {
		if (len == cap) {
			cap = cap ? cap * 2 : 65536;
			data = realloc(data, cap);
			check(data != NULL, "realloc");
		}
		size_t n = fread(data + len, 1, cap - len, f);
		if (n == 0)
			break;
		len += n;
	}
	if (f != stdin)
		fclose(f);
	feed_stream(data, len, classify);
	free(data);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 3 && strcmp(argv[1], "--random") == 0) {
		unsigned long n = strtoul(argv[2], NULL, 10);
		rng_state = argc >= 5 && strcmp(argv[3], "--seed") == 0
				? strtoull(argv[4], NULL, 10) * 0x9e3779b97f4a7c15ULL + 1
				: 0x9e3779b97f4a7c15ULL;
		for (unsigned long i = 0; i < n; i++)
			one_random_input();
		printf("inputs=%lu frames=%lu parsed=%lu refused=%lu eproto=%lu\n", n, n_frames,
		       n_parsed, n_refused, n_eproto);
		return 0;
	}
	if (argc == 2 && strcmp(argv[1], "--classify") == 0)
		return feed_file("-", 1) == 0 ? 0 : 1;
	if (argc < 2) {
		fprintf(stderr, "usage: %s --random N [--seed S] | --classify | FILE...\n", argv[0]);
		return 2;
	}
	rng_state = 0x9e3779b97f4a7c15ULL;
	for (int i = 1; i < argc; i++)
		if (feed_file(argv[i], 0) != 0)
			return 1;
	printf("frames=%lu parsed=%lu refused=%lu eproto=%lu\n", n_frames, n_parsed, n_refused,
	       n_eproto);
	return 0;
}
