/* Requests of PROTOCOL.md: JSON payload -> validated structs. Pure: no I/O, no logging.
 * Every field is checked (type, range, syntax); an error names the field and what is wrong. */
#ifndef HYPERVM_PARSE_H
#define HYPERVM_PARSE_H

#include <stddef.h>
#include <stdint.h>

#include "../third_party/cjson/cJSON.h"
#include "frame.h"

#define MAX_NAME_LEN 64
#define MAX_SERIAL_LEN 20 /* virtio-blk serials are at most 20 bytes */
#define PCI_ADDR_LEN 12   /* "dddd:bb:ss.f", as /sys/bus/pci/devices names it */
#define MAX_TAG_LEN 255
#define MAX_PATH_LEN 4095
#define MAX_LAYERS 64     /* keeps overlayfs' lowerdir option below one page */
#define MAX_LAYER_WAIT_MS 60000
#define MAX_MOUNTS 64
#define MAX_GIDS 64
#define MAX_STRINGS 65536 /* args or env entries */
#define MAX_SIGNAL 64
#define MAX_IFACES 4
#define MAX_NAMESERVERS 3 /* the resolver reads at most 3 (MAXNS) */
#define MAX_SEARCH 6
#define MAX_HOSTS 32
#define MAX_HOST_NAMES 8
#define MAX_DNS_NAME_LEN 253
#define MAX_LIMIT_BYTES (1ULL << 50) /* 1 PiB: exact in a JSON number (a double) */
#define MIN_MEMORY_LIMIT (4ULL << 20)
#define MIN_SCRATCH_LIMIT (1ULL << 20)
#define MAX_PIDS_LIMIT 4194304 /* the kernel's PID_MAX_LIMIT */

struct proc_spec {
	char **args; /* NULL-terminated; strings point into the request's JSON tree */
	size_t nargs;
	char **env; /* NULL-terminated, possibly empty */
	size_t nenv;
	const char *cwd;
	uint32_t uid;
	uint32_t gid;
	uint32_t gids[MAX_GIDS];
	size_t ngids;
	int stdin_pipe;
	int tty; /* a pseudo-terminal for stdin/stdout/stderr (PROTOCOL.md, Terminals) */
	int no_new_privs; /* 1/0 when given; -1: init decides (set for uid 0) */
	int early_reply;  /* START `early_reply`: OK once only the execve is left (PROTOCOL.md) */
};

/* START's optional limits; 0 everywhere means "not limited". */
struct limits {
	uint64_t memory;  /* memory.max of the container's cgroup, bytes */
	uint32_t pids;    /* pids.max */
	uint64_t scratch; /* size of the writable layer's tmpfs, bytes */
};

enum mount_kind { MOUNT_9P, MOUNT_TMPFS };

struct mount_spec {
	enum mount_kind kind;
	const char *source; /* 9p mount tag; NULL for tmpfs */
	const char *subdir; /* 9p: relative directory inside the tag to mount; NULL: the whole tag */
	const char *destination;
	int readonly;
};

struct start_req {
	const char *container;
	uint32_t handle;
	const char *layers[MAX_LAYERS];
	const char *pci[MAX_LAYERS]; /* rootfs.pci: each layer disk's PCI address, or NULL */
	size_t nlayers;
	int readonly;
	uint32_t wait_ms; /* how long to wait for hot-added layer disks to appear */
	struct mount_spec mounts[MAX_MOUNTS];
	size_t nmounts;
	const char *hostname;
	struct limits limits;
	struct proc_spec proc;
};

/* PREPARE: a container made ahead of its START (rootfs, namespaces, system mounts), carrying
 * the given 9p tags for the START's mounts. */
struct prepare_req {
	struct start_req rootfs; /* only layers, pci, nlayers, readonly, wait_ms, limits.scratch */
	const char *shares[MAX_MOUNTS];
	size_t nshares;
};

struct exec_req {
	const char *container;
	uint32_t handle;
	struct proc_spec proc;
};

struct signal_req {
	uint32_t handle;
	int signo;
};

struct resize_req {
	uint32_t handle;
	unsigned short rows, cols;
};

struct iface_spec {
	uint8_t mac[6];   /* the interface is found by its MAC address */
	uint32_t address; /* IPv4, network byte order */
	uint32_t prefix;  /* 0..32 */
	uint32_t gateway; /* default route via it; 0: no default route */
	uint32_t mtu;     /* 0: keep the driver's */
};

struct host_entry {
	const char *address; /* IPv4 or IPv6, checked */
	const char *names[MAX_HOST_NAMES];
	size_t nnames;
};

/* RESEED: fresh host entropy for the kernel's RNG (a VM restored from a snapshot). */
#define RESEED_MIN_BYTES 32
#define RESEED_MAX_BYTES 512

struct reseed_req {
	unsigned char seed[RESEED_MAX_BYTES];
	size_t len;
	uint32_t cpus; /* vCPUs to bring online first (hot-plugged into a clone); 0: none asked */
};

struct network_req {
	struct iface_spec ifaces[MAX_IFACES];
	size_t nifaces;
	const char *nameservers[MAX_NAMESERVERS];
	size_t nnameservers;
	const char *search[MAX_SEARCH];
	size_t nsearch;
	struct host_entry hosts[MAX_HOSTS];
	size_t nhosts;
};

struct request {
	uint16_t type;
	uint32_t id;
	cJSON *json; /* owns every string the structs point to */
	union {
		struct start_req start;
		struct exec_req exec;
		struct signal_req signal;
		struct resize_req resize;
		struct network_req network;
		struct prepare_req prepare;
		struct reseed_req reseed;
	} u;
};

struct req_error {
	const char *code; /* "EINVAL", "ETYPE" */
	char message[256];
};

/* 1 when type is a request (START..PING) this init serves. */
int request_type_known(uint16_t type);

/* Parse and validate a request payload. 0 on success (free with request_free), -1 with err set. */
int request_parse(uint16_t type, uint32_t id, const uint8_t *payload, size_t len,
		  struct request *out, struct req_error *err);
void request_free(struct request *r);

/* [A-Za-z0-9_.-]{1,max}: container names, hostnames, layer serials. */
int valid_name(const char *s, size_t max);

/* A PCI address as sysfs names a device: "dddd:bb:ss.f", lowercase hex (rootfs.pci). */
int valid_pci_addr(const char *s);

#endif
