#define _GNU_SOURCE
#include "parse.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpus.h"

static int fail(struct req_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(struct req_error *err, const char *fmt, ...)
{
	va_list ap;

	err->code = "EINVAL";
	va_start(ap, fmt);
	vsnprintf(err->message, sizeof(err->message), fmt, ap);
	va_end(ap);
	return -1;
}

int valid_name(const char *s, size_t max)
{
	size_t n = 0;

	for (; s[n] != '\0'; n++) {
		char c = s[n];
		int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
			 c == '_' || c == '.' || c == '-';
		if (!ok || n >= max)
			return 0;
	}
	return n > 0 && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

/* "dddd:bb:ss.f" in lowercase hex, a slot 00..1f and a function 0..7: the name of a PCI
 * device in sysfs, so nothing else of a path can be spelled with it. */
int valid_pci_addr(const char *s)
{
	static const char shape[] = "xxxx:xx:xx.x";

	if (strlen(s) != PCI_ADDR_LEN)
		return 0;
	for (size_t i = 0; i < PCI_ADDR_LEN; i++) {
		const char c = s[i];

		if (shape[i] != 'x' ? c != shape[i] : !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
			return 0;
	}
	return s[8] <= '1' && s[11] <= '7';
}

static int valid_abs_path(const char *s) { return s[0] == '/' && strlen(s) <= MAX_PATH_LEN; }

/* Printable ASCII without space or comma: safe as a mount source. */
/* A relative path inside a 9p export: no leading '/', no empty, "." or ".." component. */
static int valid_subdir(const char *s)
{
	const char *p = s;

	if (*s == '\0' || *s == '/' || strlen(s) > MAX_PATH_LEN)
		return 0;
	while (*p != '\0') {
		size_t len = strcspn(p, "/");

		if (len == 0 || (len == 1 && p[0] == '.') || (len == 2 && p[0] == '.' && p[1] == '.'))
			return 0;
		p += len;
		if (*p == '/')
			p++;
		if (*p == '\0' && p[-1] == '/')
			return 0;
	}
	return 1;
}

static int valid_tag(const char *s)
{
	size_t n = 0;

	for (; s[n] != '\0'; n++)
		if (s[n] <= ' ' || s[n] > '~' || s[n] == ',' || n >= MAX_TAG_LEN)
			return 0;
	return n > 0;
}

/* Optional member: NULL when absent or JSON null. */
static cJSON *member(const cJSON *obj, const char *name)
{
	cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, name);
	return cJSON_IsNull(item) ? NULL : item;
}

static int get_string(const cJSON *obj, const char *where, const char *name, int required,
		      const char **out, struct req_error *err)
{
	cJSON *item = member(obj, name);

	if (item == NULL) {
		if (required)
			return fail(err, "%s%s: required string is missing", where, name);
		*out = NULL;
		return 0;
	}
	if (!cJSON_IsString(item) || item->valuestring == NULL)
		return fail(err, "%s%s: must be a string", where, name);
	*out = item->valuestring;
	return 0;
}

static int get_bool(const cJSON *obj, const char *where, const char *name, int *out,
		    struct req_error *err)
{
	cJSON *item = member(obj, name);

	*out = 0;
	if (item == NULL)
		return 0;
	if (!cJSON_IsBool(item))
		return fail(err, "%s%s: must be true or false", where, name);
	*out = cJSON_IsTrue(item);
	return 0;
}

static int number_to_u32(const cJSON *item, uint32_t max, uint32_t *out)
{
	double d;

	if (!cJSON_IsNumber(item))
		return -1;
	d = item->valuedouble;
	if (!(d >= 0 && d <= (double)max))
		return -1;
	if ((double)(uint32_t)d != d)
		return -1;
	*out = (uint32_t)d;
	return 0;
}

static int get_u32(const cJSON *obj, const char *where, const char *name, int required,
		   uint32_t max, uint32_t *out, struct req_error *err)
{
	cJSON *item = member(obj, name);

	if (item == NULL) {
		if (required)
			return fail(err, "%s%s: required integer is missing", where, name);
		*out = 0;
		return 0;
	}
	if (number_to_u32(item, max, out) != 0)
		return fail(err, "%s%s: must be an integer between 0 and %u", where, name, max);
	return 0;
}

static int get_u64(const cJSON *obj, const char *where, const char *name, uint64_t min,
		   uint64_t max, uint64_t *out, struct req_error *err)
{
	cJSON *item = member(obj, name);
	double d;

	*out = 0;
	if (item == NULL)
		return 0;
	d = cJSON_IsNumber(item) ? item->valuedouble : -1;
	if (!(d == 0 || (d >= (double)min && d <= (double)max)) || (double)(uint64_t)d != d)
		return fail(err, "%s%s: must be 0 (no limit) or an integer between %llu and %llu",
			    where, name, (unsigned long long)min, (unsigned long long)max);
	*out = (uint64_t)d;
	return 0;
}

/* "limits": {"memory": bytes, "pids": n, "scratch": bytes}; `scratch_only` for PREPARE */
static int parse_limits(const cJSON *root, struct limits *l, int scratch_only,
			struct req_error *err)
{
	cJSON *limits = member(root, "limits");
	uint64_t pids;

	memset(l, 0, sizeof(*l));
	if (limits == NULL)
		return 0;
	if (!cJSON_IsObject(limits))
		return fail(err, "limits: must be an object");
	if (get_u64(limits, "limits.", "scratch", MIN_SCRATCH_LIMIT, MAX_LIMIT_BYTES, &l->scratch,
		    err) != 0)
		return -1;
	if (scratch_only)
		return 0;
	if (get_u64(limits, "limits.", "memory", MIN_MEMORY_LIMIT, MAX_LIMIT_BYTES, &l->memory,
		    err) != 0 ||
	    get_u64(limits, "limits.", "pids", 2, MAX_PIDS_LIMIT, &pids, err) != 0)
		return -1;
	l->pids = (uint32_t)pids;
	return 0;
}

static int get_handle(const cJSON *obj, uint32_t *out, struct req_error *err)
{
	if (get_u32(obj, "", "handle", 1, UINT32_MAX, out, err) != 0)
		return -1;
	if (*out == 0)
		return fail(err, "handle: must be non-zero");
	return 0;
}

static int get_container(const cJSON *obj, const char **out, struct req_error *err)
{
	if (get_string(obj, "", "container", 1, out, err) != 0)
		return -1;
	if (!valid_name(*out, MAX_NAME_LEN))
		return fail(err, "container: must match [A-Za-z0-9_.-]{1,64}");
	return 0;
}

/* A JSON array of strings -> malloc'ed NULL-terminated vector (strings stay in the tree). */
static int get_string_vector(const cJSON *obj, const char *name, int required, char ***out,
			     size_t *count, struct req_error *err)
{
	cJSON *arr = member(obj, name);
	cJSON *item;
	size_t n = 0;

	*out = NULL;
	*count = 0;
	if (arr == NULL) {
		if (required)
			return fail(err, "process.%s: required array is missing", name);
		arr = NULL;
	} else if (!cJSON_IsArray(arr)) {
		return fail(err, "process.%s: must be an array of strings", name);
	}
	if (arr != NULL) {
		cJSON_ArrayForEach(item, arr)
		{
			if (!cJSON_IsString(item) || item->valuestring == NULL)
				return fail(err, "process.%s[%zu]: must be a string", name, n);
			if (++n > MAX_STRINGS)
				return fail(err, "process.%s: more than %d entries", name,
					    MAX_STRINGS);
		}
	}
	char **vec = calloc(n + 1, sizeof(char *));
	if (vec == NULL)
		return fail(err, "process.%s: out of memory", name);
	n = 0;
	if (arr != NULL)
		cJSON_ArrayForEach(item, arr) vec[n++] = item->valuestring;
	*out = vec;
	*count = n;
	return 0;
}

static int parse_process(const cJSON *root, struct proc_spec *p, struct req_error *err)
{
	cJSON *proc = member(root, "process");
	cJSON *gids;

	memset(p, 0, sizeof(*p));
	if (proc == NULL)
		return fail(err, "process: required object is missing");
	if (!cJSON_IsObject(proc))
		return fail(err, "process: must be an object");
	if (get_string_vector(proc, "args", 1, &p->args, &p->nargs, err) != 0)
		return -1;
	if (p->nargs == 0 || p->args[0][0] == '\0')
		return fail(err, "process.args: must be a non-empty array whose first entry is "
				 "the command");
	if (get_string_vector(proc, "env", 0, &p->env, &p->nenv, err) != 0)
		return -1;
	for (size_t i = 0; i < p->nenv; i++) {
		const char *eq = strchr(p->env[i], '=');
		if (eq == NULL || eq == p->env[i])
			return fail(err, "process.env[%zu]: must be KEY=VALUE", i);
	}
	if (get_string(proc, "process.", "cwd", 0, &p->cwd, err) != 0)
		return -1;
	if (p->cwd == NULL)
		p->cwd = "/";
	else if (!valid_abs_path(p->cwd))
		return fail(err, "process.cwd: must be an absolute path");
	if (get_u32(proc, "process.", "uid", 0, UINT32_MAX - 1, &p->uid, err) != 0 ||
	    get_u32(proc, "process.", "gid", 0, UINT32_MAX - 1, &p->gid, err) != 0 ||
	    get_bool(proc, "process.", "stdin", &p->stdin_pipe, err) != 0 ||
	    get_bool(proc, "process.", "tty", &p->tty, err) != 0 ||
	    get_bool(proc, "process.", "no_new_privs", &p->no_new_privs, err) != 0)
		return -1;
	if (member(proc, "no_new_privs") == NULL)
		p->no_new_privs = -1;
	gids = member(proc, "additional_gids");
	if (gids != NULL) {
		cJSON *item;

		if (!cJSON_IsArray(gids))
			return fail(err, "process.additional_gids: must be an array of integers");
		cJSON_ArrayForEach(item, gids)
		{
			if (p->ngids >= MAX_GIDS)
				return fail(err, "process.additional_gids: more than %d entries",
					    MAX_GIDS);
			if (number_to_u32(item, UINT32_MAX - 1, &p->gids[p->ngids]) != 0)
				return fail(err, "process.additional_gids[%zu]: must be an integer "
						 "between 0 and %u", p->ngids, UINT32_MAX - 1);
			p->ngids++;
		}
	}
	return 0;
}

/* Optional "pci": the PCI address of each layer's disk, as many as layers; null: none. */
static int parse_pci(const cJSON *rootfs, struct start_req *s, struct req_error *err)
{
	cJSON *pci = member(rootfs, "pci"), *item;
	size_t i = 0;

	if (pci == NULL)
		return 0;
	if (!cJSON_IsArray(pci) || (size_t)cJSON_GetArraySize(pci) != s->nlayers)
		return fail(err, "rootfs.pci: must be an array of as many PCI addresses as layers");
	cJSON_ArrayForEach(item, pci)
	{
		if (cJSON_IsNull(item)) {
			s->pci[i++] = NULL;
			continue;
		}
		if (!cJSON_IsString(item) || item->valuestring == NULL ||
		    !valid_pci_addr(item->valuestring))
			return fail(err, "rootfs.pci[%zu]: must be null or a PCI address "
					 "dddd:bb:ss.f (lowercase hex)", i);
		s->pci[i++] = item->valuestring;
	}
	return 0;
}

static int parse_rootfs(const cJSON *root, struct start_req *s, struct req_error *err)
{
	cJSON *rootfs = member(root, "rootfs");
	cJSON *layers, *item;

	if (rootfs == NULL)
		return fail(err, "rootfs: required object is missing");
	if (!cJSON_IsObject(rootfs))
		return fail(err, "rootfs: must be an object");
	layers = member(rootfs, "layers");
	if (layers == NULL || !cJSON_IsArray(layers))
		return fail(err, "rootfs.layers: must be a non-empty array of block device serials");
	cJSON_ArrayForEach(item, layers)
	{
		if (s->nlayers >= MAX_LAYERS)
			return fail(err, "rootfs.layers: more than %d layers", MAX_LAYERS);
		if (!cJSON_IsString(item) || item->valuestring == NULL ||
		    !valid_name(item->valuestring, MAX_SERIAL_LEN))
			return fail(err, "rootfs.layers[%zu]: must be a serial matching "
					 "[A-Za-z0-9_.-]{1,20}", s->nlayers);
		s->layers[s->nlayers++] = item->valuestring;
	}
	if (s->nlayers == 0)
		return fail(err, "rootfs.layers: must name at least one layer");
	if (parse_pci(rootfs, s, err) != 0 ||
	    get_u32(rootfs, "rootfs.", "wait_ms", 0, MAX_LAYER_WAIT_MS, &s->wait_ms, err) != 0)
		return -1;
	return get_bool(rootfs, "rootfs.", "readonly", &s->readonly, err);
}

static int parse_mount(const cJSON *item, size_t i, struct mount_spec *m, struct req_error *err)
{
	const char *type;
	char where[32];

	snprintf(where, sizeof(where), "mounts[%zu].", i);
	if (!cJSON_IsObject(item))
		return fail(err, "mounts[%zu]: must be an object", i);
	if (get_string(item, where, "type", 1, &type, err) != 0 ||
	    get_string(item, where, "destination", 1, &m->destination, err) != 0 ||
	    get_bool(item, where, "readonly", &m->readonly, err) != 0)
		return -1;
	if (!valid_abs_path(m->destination))
		return fail(err, "mounts[%zu].destination: must be an absolute path", i);
	if (strcmp(type, "tmpfs") == 0) {
		m->kind = MOUNT_TMPFS;
		m->source = NULL;
		m->subdir = NULL;
		return 0;
	}
	if (strcmp(type, "9p") != 0)
		return fail(err, "mounts[%zu].type: must be \"9p\" or \"tmpfs\"", i);
	m->kind = MOUNT_9P;
	if (get_string(item, where, "source", 1, &m->source, err) != 0 ||
	    get_string(item, where, "subdir", 0, &m->subdir, err) != 0)
		return -1;
	if (!valid_tag(m->source))
		return fail(err, "mounts[%zu].source: must be a 9p mount tag (printable, no space "
				 "or comma, at most %d bytes)", i, MAX_TAG_LEN);
	if (m->subdir != NULL && !valid_subdir(m->subdir))
		return fail(err, "mounts[%zu].subdir: must be a relative path without \"..\" "
				 "components, at most %d bytes", i, MAX_PATH_LEN);
	return 0;
}

static int parse_start(const cJSON *root, struct start_req *s, struct req_error *err)
{
	cJSON *mounts, *item;

	if (get_container(root, &s->container, err) != 0 || get_handle(root, &s->handle, err) != 0 ||
	    parse_rootfs(root, s, err) != 0)
		return -1;
	mounts = member(root, "mounts");
	if (mounts != NULL) {
		if (!cJSON_IsArray(mounts))
			return fail(err, "mounts: must be an array");
		cJSON_ArrayForEach(item, mounts)
		{
			if (s->nmounts >= MAX_MOUNTS)
				return fail(err, "mounts: more than %d mounts", MAX_MOUNTS);
			if (parse_mount(item, s->nmounts, &s->mounts[s->nmounts], err) != 0)
				return -1;
			s->nmounts++;
		}
	}
	if (get_string(root, "", "hostname", 0, &s->hostname, err) != 0)
		return -1;
	if (s->hostname == NULL)
		s->hostname = s->container;
	else if (!valid_name(s->hostname, MAX_NAME_LEN))
		return fail(err, "hostname: must match [A-Za-z0-9_.-]{1,64}");
	if (parse_limits(root, &s->limits, 0, err) != 0 || parse_process(root, &s->proc, err) != 0)
		return -1;
	return get_bool(root, "", "early_reply", &s->proc.early_reply, err);
}

static int parse_prepare(const cJSON *root, struct prepare_req *p, struct req_error *err)
{
	cJSON *shares = member(root, "shares"), *item;

	if (parse_rootfs(root, &p->rootfs, err) != 0 ||
	    parse_limits(root, &p->rootfs.limits, 1, err) != 0)
		return -1;
	if (shares == NULL)
		return 0;
	if (!cJSON_IsArray(shares))
		return fail(err, "shares: must be an array of 9p mount tags");
	cJSON_ArrayForEach(item, shares)
	{
		if (p->nshares >= MAX_MOUNTS)
			return fail(err, "shares: more than %d tags", MAX_MOUNTS);
		if (!cJSON_IsString(item) || item->valuestring == NULL || !valid_tag(item->valuestring))
			return fail(err, "shares[%zu]: must be a 9p mount tag (printable, no space or "
					 "comma, at most %d bytes)", p->nshares, MAX_TAG_LEN);
		for (size_t i = 0; i < p->nshares; i++)
			if (strcmp(p->shares[i], item->valuestring) == 0)
				return fail(err, "shares[%zu]: %s is listed twice", p->nshares,
					    item->valuestring);
		p->shares[p->nshares++] = item->valuestring;
	}
	return 0;
}

static int parse_exec(const cJSON *root, struct exec_req *e, struct req_error *err)
{
	if (get_container(root, &e->container, err) != 0 || get_handle(root, &e->handle, err) != 0)
		return -1;
	return parse_process(root, &e->proc, err);
}

static int parse_signal(const cJSON *root, struct signal_req *s, struct req_error *err)
{
	uint32_t signo;

	if (get_handle(root, &s->handle, err) != 0)
		return -1;
	if (get_u32(root, "", "signal", 1, UINT32_MAX, &signo, err) != 0 || signo < 1 ||
	    signo > MAX_SIGNAL)
		return fail(err, "signal: must be a signal number between 1 and %d", MAX_SIGNAL);
	s->signo = (int)signo;
	return 0;
}

static int parse_resize(const cJSON *root, struct resize_req *r, struct req_error *err)
{
	uint32_t rows, cols;

	if (get_handle(root, &r->handle, err) != 0 ||
	    get_u32(root, "", "rows", 1, 65535, &rows, err) != 0 ||
	    get_u32(root, "", "cols", 1, 65535, &cols, err) != 0)
		return -1;
	if (rows == 0 || cols == 0)
		return fail(err, "rows, cols: must be between 1 and 65535");
	r->rows = (unsigned short)rows;
	r->cols = (unsigned short)cols;
	return 0;
}

/* --- RESEED --------------------------------------------------------------------------- */

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* "seed": lower-case hex of RESEED_MIN_BYTES..RESEED_MAX_BYTES bytes; "cpus": 0..CPUS_MAX. */
static int parse_reseed(const cJSON *root, struct reseed_req *r, struct req_error *err)
{
	const char *seed;
	size_t n, i;

	if (get_string(root, "", "seed", 1, &seed, err) != 0)
		return -1;
	n = strlen(seed);
	if (n % 2 != 0 || n < 2 * RESEED_MIN_BYTES || n > 2 * RESEED_MAX_BYTES)
		return fail(err, "seed: must be the hex of %d..%d bytes", RESEED_MIN_BYTES,
			    RESEED_MAX_BYTES);
	for (i = 0; i < n / 2; i++) {
		int hi = hex_digit(seed[2 * i]), lo = hex_digit(seed[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return fail(err, "seed: not lower-case hex");
		r->seed[i] = (unsigned char)(hi << 4 | lo);
	}
	r->len = n / 2;
	/* optional (init 0.6.0): the clone's vCPU count, hot-plugged by the host before RESEED */
	if (get_u32(root, "", "cpus", 0, CPUS_MAX, &r->cpus, err) != 0)
		return -1;
	return 0;
}

/* --- NETWORK --------------------------------------------------------------------------- */

/* A DNS name or label list: [A-Za-z0-9_.-], at most MAX_DNS_NAME_LEN bytes. */
static int valid_dns_name(const char *s) { return valid_name(s, MAX_DNS_NAME_LEN); }

static int valid_ip(const char *s)
{
	unsigned char buf[16];

	return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

static int get_ipv4(const cJSON *obj, const char *where, const char *name, int required,
		    uint32_t *out, struct req_error *err)
{
	const char *text;

	*out = 0;
	if (get_string(obj, where, name, required, &text, err) != 0)
		return -1;
	if (text != NULL && inet_pton(AF_INET, text, out) != 1)
		return fail(err, "%s%s: must be an IPv4 address", where, name);
	return 0;
}

static int hex_either_case(char c) { return hex_digit(c >= 'A' && c <= 'F' ? c | 0x20 : c); }

/* "xx:xx:xx:xx:xx:xx", two hex digits each (either case). Not sscanf: its scanner (vfscanf,
 * __intscan, ~0.4k instructions) is code a cold VM's NETWORK would run for this alone, each
 * instruction translated by TCG the first time. */
static int parse_mac(const char *text, uint8_t mac[6])
{
	for (int i = 0; i < 6; i++) {
		const char *at = text + 3 * i;
		int hi = hex_either_case(at[0]), lo = hi < 0 ? -1 : hex_either_case(at[1]);

		if (lo < 0 || at[2] != (i < 5 ? ':' : '\0'))
			return -1;
		mac[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

static int parse_iface(const cJSON *item, size_t i, struct iface_spec *f, struct req_error *err)
{
	const char *mac;
	char where[32];

	snprintf(where, sizeof(where), "interfaces[%zu].", i);
	if (!cJSON_IsObject(item))
		return fail(err, "interfaces[%zu]: must be an object", i);
	if (get_string(item, where, "mac", 1, &mac, err) != 0)
		return -1;
	if (parse_mac(mac, f->mac) != 0)
		return fail(err, "%smac: must be a MAC address like 52:54:00:12:34:56", where);
	if (get_ipv4(item, where, "address", 1, &f->address, err) != 0 ||
	    get_u32(item, where, "prefix", 1, 32, &f->prefix, err) != 0 ||
	    get_ipv4(item, where, "gateway", 0, &f->gateway, err) != 0 ||
	    get_u32(item, where, "mtu", 0, 65535, &f->mtu, err) != 0)
		return -1;
	if (f->mtu != 0 && f->mtu < 68)
		return fail(err, "%smtu: must be at least 68", where);
	return 0;
}

/* An optional array of at most max strings, each checked by valid(). */
static int get_checked_strings(const cJSON *obj, const char *name, size_t max,
			       int (*valid)(const char *), const char **out, size_t *count,
			       struct req_error *err)
{
	cJSON *arr = member(obj, name), *item;

	*count = 0;
	if (arr == NULL)
		return 0;
	if (!cJSON_IsArray(arr))
		return fail(err, "%s: must be an array of strings", name);
	cJSON_ArrayForEach(item, arr)
	{
		if (*count >= max)
			return fail(err, "%s: more than %zu entries", name, max);
		if (!cJSON_IsString(item) || item->valuestring == NULL || !valid(item->valuestring))
			return fail(err, "%s[%zu]: invalid entry", name, *count);
		out[(*count)++] = item->valuestring;
	}
	return 0;
}

static int parse_host_entry(const cJSON *item, size_t i, struct host_entry *h,
			    struct req_error *err)
{
	char where[32];

	snprintf(where, sizeof(where), "hosts[%zu].", i);
	if (!cJSON_IsObject(item))
		return fail(err, "hosts[%zu]: must be an object", i);
	if (get_string(item, where, "address", 1, &h->address, err) != 0)
		return -1;
	if (!valid_ip(h->address))
		return fail(err, "%saddress: must be an IPv4 or IPv6 address", where);
	if (get_checked_strings(item, "names", MAX_HOST_NAMES, valid_dns_name, h->names,
				&h->nnames, err) != 0) {
		char detail[sizeof(err->message)];

		snprintf(detail, sizeof(detail), "%s", err->message);
		return fail(err, "%s%.200s", where, detail);
	}
	if (h->nnames == 0)
		return fail(err, "%snames: must name at least one host", where);
	return 0;
}

static int parse_network(const cJSON *root, struct network_req *n, struct req_error *err)
{
	cJSON *arr, *item;

	arr = member(root, "interfaces");
	if (arr != NULL && !cJSON_IsArray(arr))
		return fail(err, "interfaces: must be an array");
	if (arr != NULL) {
		cJSON_ArrayForEach(item, arr)
		{
			if (n->nifaces >= MAX_IFACES)
				return fail(err, "interfaces: more than %d entries", MAX_IFACES);
			if (parse_iface(item, n->nifaces, &n->ifaces[n->nifaces], err) != 0)
				return -1;
			n->nifaces++;
		}
	}
	if (get_checked_strings(root, "nameservers", MAX_NAMESERVERS, valid_ip, n->nameservers,
				&n->nnameservers, err) != 0 ||
	    get_checked_strings(root, "search", MAX_SEARCH, valid_dns_name, n->search,
				&n->nsearch, err) != 0)
		return -1;
	arr = member(root, "hosts");
	if (arr != NULL && !cJSON_IsArray(arr))
		return fail(err, "hosts: must be an array");
	if (arr != NULL) {
		cJSON_ArrayForEach(item, arr)
		{
			if (n->nhosts >= MAX_HOSTS)
				return fail(err, "hosts: more than %d entries", MAX_HOSTS);
			if (parse_host_entry(item, n->nhosts, &n->hosts[n->nhosts], err) != 0)
				return -1;
			n->nhosts++;
		}
	}
	return 0;
}

int request_type_known(uint16_t type)
{
	return type == MSG_START || type == MSG_EXEC || type == MSG_SIGNAL ||
	       type == MSG_POWEROFF || type == MSG_PING || type == MSG_NETWORK ||
	       type == MSG_PREPARE || type == MSG_RESIZE || type == MSG_RESEED;
}

int request_parse(uint16_t type, uint32_t id, const uint8_t *payload, size_t len,
		  struct request *out, struct req_error *err)
{
	int rc;

	memset(out, 0, sizeof(*out));
	out->type = type;
	out->id = id;
	if (!request_type_known(type)) {
		err->code = "ETYPE";
		snprintf(err->message, sizeof(err->message), "unknown request type 0x%x", type);
		return -1;
	}
	if (id == 0)
		return fail(err, "id: a request id must be non-zero");
	out->json = cJSON_ParseWithLength((const char *)payload, len);
	if (out->json == NULL)
		return fail(err, "payload: not valid JSON");
	if (!cJSON_IsObject(out->json)) {
		request_free(out);
		return fail(err, "payload: must be a JSON object");
	}
	switch (type) {
	case MSG_START:
		rc = parse_start(out->json, &out->u.start, err);
		break;
	case MSG_EXEC:
		rc = parse_exec(out->json, &out->u.exec, err);
		break;
	case MSG_SIGNAL:
		rc = parse_signal(out->json, &out->u.signal, err);
		break;
	case MSG_RESIZE:
		rc = parse_resize(out->json, &out->u.resize, err);
		break;
	case MSG_NETWORK:
		rc = parse_network(out->json, &out->u.network, err);
		break;
	case MSG_PREPARE:
		rc = parse_prepare(out->json, &out->u.prepare, err);
		break;
	case MSG_RESEED:
		rc = parse_reseed(out->json, &out->u.reseed, err);
		break;
	default: /* POWEROFF, PING: no fields */
		rc = 0;
	}
	if (rc != 0)
		request_free(out);
	return rc;
}

static void proc_spec_free(struct proc_spec *p)
{
	free(p->args);
	free(p->env);
	p->args = p->env = NULL;
}

void request_free(struct request *r)
{
	if (r->type == MSG_START)
		proc_spec_free(&r->u.start.proc);
	else if (r->type == MSG_EXEC)
		proc_spec_free(&r->u.exec.proc);
	cJSON_Delete(r->json);
	r->json = NULL;
}
