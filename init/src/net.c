#define _GNU_SOURCE
#include "net.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "log.h"
#include "sysfs.h"

#define NET_FILE_MAX 16384
#define NET_FILES 3

static const char *const file_names[NET_FILES] = {"hosts", "resolv.conf", "hostname"};

/* Rendered by net_configure, copied into each container started afterwards. */
static char hosts_text[NET_FILE_MAX];
static char resolv_text[NET_FILE_MAX];
static int configured;

/* The name of the interface whose address is mac, by ioctls on fd over the interface indexes
 * (the kernel numbers them from 1; a run of misses ends the scan): ~0.2 ms under TCG where the
 * sysfs scan below takes ~1.5 ms of a cold VM's NETWORK (issue 17). -1: not found. */
#define IFINDEX_MAX 4096
#define IFINDEX_MISSES 64

static int find_iface_by_index(int fd, const uint8_t mac[6], char name[IF_NAMESIZE])
{
	for (int idx = 1, misses = 0; idx < IFINDEX_MAX && misses < IFINDEX_MISSES; idx++) {
		struct ifreq ifr;

		memset(&ifr, 0, sizeof(ifr));
		ifr.ifr_ifindex = idx;
		if (ioctl(fd, SIOCGIFNAME, &ifr) != 0) {
			misses++;
			continue;
		}
		misses = 0;
		if (ioctl(fd, SIOCGIFHWADDR, &ifr) == 0 &&
		    memcmp(ifr.ifr_hwaddr.sa_data, mac, 6) == 0) {
			snprintf(name, IF_NAMESIZE, "%s", ifr.ifr_name);
			return 0;
		}
	}
	return -1;
}

/* The same from /sys/class/net/<name>/address: every interface, whatever its index. */
static int find_iface(const uint8_t mac[6], char name[IF_NAMESIZE])
{
	char want[18];
	DIR *d = opendir("/sys/class/net");
	struct dirent *de;
	int rc = -1;

	if (d == NULL) {
		log_errno("opendir /sys/class/net");
		return -1;
	}
	snprintf(want, sizeof(want), "%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2],
		 mac[3], mac[4], mac[5]);
	while (rc != 0 && (de = readdir(d)) != NULL) {
		char path[300], have[32];

		if (de->d_name[0] == '.' || strlen(de->d_name) >= IF_NAMESIZE)
			continue;
		snprintf(path, sizeof(path), "/sys/class/net/%s/address", de->d_name);
		if (sysfs_read(path, have, sizeof(have)) == 0 && strcmp(have, want) == 0) {
			snprintf(name, IF_NAMESIZE, "%s", de->d_name);
			rc = 0;
		}
	}
	closedir(d);
	return rc;
}

static void set_sin(struct sockaddr *sa, uint32_t addr)
{
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = addr};

	memcpy(sa, &sin, sizeof(sin));
}

static int iface_ioctl(int fd, unsigned long req, struct ifreq *ifr, const char *what,
		       struct op_error *e)
{
	if (ioctl(fd, req, ifr) != 0) {
		log_errno("%s of %s", what, ifr->ifr_name);
		return op_fail(e, "ENET", errno, "%s of %s", what, ifr->ifr_name);
	}
	return 0;
}

static int add_default_route(int fd, const char *ifname, uint32_t gateway, struct op_error *e)
{
	struct rtentry rt;
	char dev[IF_NAMESIZE];

	memset(&rt, 0, sizeof(rt));
	snprintf(dev, sizeof(dev), "%s", ifname);
	set_sin(&rt.rt_dst, 0);
	set_sin(&rt.rt_genmask, 0);
	set_sin(&rt.rt_gateway, gateway);
	rt.rt_flags = RTF_UP | RTF_GATEWAY;
	rt.rt_dev = dev;
	if (ioctl(fd, SIOCADDRT, &rt) != 0 && errno != EEXIST) {
		log_errno("add the default route via %s", ifname);
		return op_fail(e, "ENET", errno, "default route via %s", ifname);
	}
	return 0;
}

/* No IPv6 on the host's NIC: QEMU's user network runs with ipv6=off (executor/network.py), so
 * nothing answers there, and with IPv6 on the interface the idle guest kept sending router
 * solicitations (every 4 s, backing off to an hour), neighbour and MLD packets for its link-local
 * address: an idle 128 MiB VM's QEMU held ~0.5 MiB more (translations of that code path, slirp's
 * heap; issue 18). Written before the interface comes up, so no link-local address is made.
 * Loopback keeps ::1 and [::] sockets still serve IPv4. No IPv6 in the kernel: nothing to do. */
static void disable_ipv6(const char *ifname)
{
	char path[96];

	snprintf(path, sizeof(path), "/proc/sys/net/ipv6/conf/%s/disable_ipv6", ifname);
	if (sysfs_write(path, "1") != 0 && errno != ENOENT)
		log_errno("%s: cannot turn IPv6 off", ifname);
}

static int configure_iface(int fd, size_t i, const struct iface_spec *f, struct op_error *e)
{
	struct ifreq ifr;
	uint32_t mask = f->prefix == 0 ? 0 : htonl(~0u << (32 - f->prefix));

	memset(&ifr, 0, sizeof(ifr));
	if (find_iface_by_index(fd, f->mac, ifr.ifr_name) != 0 &&
	    find_iface(f->mac, ifr.ifr_name) != 0)
		return op_fail(e, "ENET", 0, "interfaces[%zu].mac: no such interface", i);
	if (f->mtu != 0) {
		ifr.ifr_mtu = (int)f->mtu;
		if (iface_ioctl(fd, SIOCSIFMTU, &ifr, "set the MTU", e) != 0)
			return -1;
	}
	set_sin(&ifr.ifr_addr, f->address);
	if (iface_ioctl(fd, SIOCSIFADDR, &ifr, "set the address", e) != 0)
		return -1;
	set_sin(&ifr.ifr_netmask, mask);
	if (iface_ioctl(fd, SIOCSIFNETMASK, &ifr, "set the netmask", e) != 0 ||
	    iface_ioctl(fd, SIOCGIFFLAGS, &ifr, "get the flags", e) != 0)
		return -1;
	disable_ipv6(ifr.ifr_name);
	ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
	if (iface_ioctl(fd, SIOCSIFFLAGS, &ifr, "bring up", e) != 0)
		return -1;
	if (f->gateway != 0 && add_default_route(fd, ifr.ifr_name, f->gateway, e) != 0)
		return -1;
	log_msg("%s: %s/%u", ifr.ifr_name, inet_ntoa((struct in_addr){.s_addr = f->address}),
		f->prefix);
	return 0;
}

/* Append to buf (NUL-terminated, size NET_FILE_MAX); -1 when it does not fit. */
static int append(char *buf, const char *a, const char *b)
{
	size_t len = strlen(buf);
	int n = snprintf(buf + len, NET_FILE_MAX - len, "%s%s", a, b);

	return (n < 0 || (size_t)n >= NET_FILE_MAX - len) ? -1 : 0;
}

static int render_files(const struct network_req *req)
{
	int rc = 0;

	hosts_text[0] = resolv_text[0] = '\0';
	for (size_t i = 0; i < req->nhosts; i++) {
		rc |= append(hosts_text, req->hosts[i].address, "");
		for (size_t j = 0; j < req->hosts[i].nnames; j++)
			rc |= append(hosts_text, j == 0 ? "\t" : " ", req->hosts[i].names[j]);
		rc |= append(hosts_text, "\n", "");
	}
	for (size_t i = 0; i < req->nnameservers; i++)
		rc |= append(resolv_text, "nameserver ", req->nameservers[i]) |
		      append(resolv_text, "\n", "");
	if (req->nsearch > 0) {
		rc |= append(resolv_text, "search", "");
		for (size_t i = 0; i < req->nsearch; i++)
			rc |= append(resolv_text, " ", req->search[i]);
		rc |= append(resolv_text, "\n", "");
	}
	return rc;
}

int net_configure(const struct network_req *req, struct op_error *e)
{
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	if (fd < 0) {
		log_errno("socket for interface configuration");
		return op_fail(e, "ENET", errno, "socket");
	}
	for (size_t i = 0; i < req->nifaces; i++) {
		if (configure_iface(fd, i, &req->ifaces[i], e) != 0) {
			close(fd);
			return -1;
		}
	}
	close(fd);
	if (render_files(req) != 0)
		return op_fail(e, "EINVAL", 0, "hosts: the files exceed %d bytes", NET_FILE_MAX);
	configured = 1;
	return 0;
}

/* Write text to fd (opened for `what`, or -1 when the open failed) and close it. */
static int write_text(int fd, const char *text, const char *what, struct op_error *e)
{
	size_t len = strlen(text);

	if (fd < 0 || write(fd, text, len) != (ssize_t)len) {
		log_errno("write %s", what);
		if (fd >= 0)
			close(fd);
		return op_fail(e, "ESPAWN", errno, "write %s", what);
	}
	close(fd);
	return 0;
}

static int write_file(const char *path, const char *text, struct op_error *e)
{
	return write_text(open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644), text, path, e);
}

/* openat2(2) without <linux/openat2.h> (musl ships no kernel headers) */
struct open_how_v0 {
	uint64_t flags;
	uint64_t mode;
	uint64_t resolve;
};
#define RESOLVE_IN_ROOT_FLAG 0x10

static int open_in_root(int root_fd, const char *path, int flags, mode_t mode)
{
	struct open_how_v0 how = {.flags = (uint64_t)(flags | O_CLOEXEC),
				  .mode = (flags & O_CREAT) ? mode : 0,
				  .resolve = RESOLVE_IN_ROOT_FLAG};

	return (int)syscall(SYS_openat2, root_fd, path, &how, sizeof(how));
}

/* Bind source over <root>/etc/<name>; 0 also when the image cannot take it (logged). */
static void bind_into(int root_fd, const char *source, const char *name)
{
	char rel[64], target[64];
	int fd;

	snprintf(rel, sizeof(rel), "etc/%s", name);
	fd = open_in_root(root_fd, rel, O_PATH, 0);
	if (fd < 0 && errno == ENOENT)
		fd = open_in_root(root_fd, rel, O_WRONLY | O_CREAT, 0644);
	if (fd < 0) {
		log_errno("open /etc/%s in the container (kept the image's)", name);
		return;
	}
	snprintf(target, sizeof(target), "/proc/self/fd/%d", fd);
	if (mount(source, target, NULL, MS_BIND, NULL) != 0)
		log_errno("bind %s over /etc/%s (kept the image's)", source, name);
	close(fd);
}

int net_configured(void) { return configured; }

/* The topmost of the image's layers that has etc (layers[0] is the bottom), into st: 1 when it
 * is a directory or no layer has one (st then 0755 root's; the seed's etc merges with it or
 * stands alone), 0 when it is anything else (a symlink, a file, a whiteout), which the seed's
 * would hide. */
static int image_etc_is_dir(const char *layers_dir, const char *const *layers, size_t nlayers,
			    struct stat *st)
{
	for (size_t i = nlayers; i-- > 0;) {
		char path[256];

		snprintf(path, sizeof(path), "%s/%s/etc", layers_dir, layers[i]);
		if (lstat(path, st) == 0)
			return S_ISDIR(st->st_mode);
		if (errno != ENOENT)
			return 0;
	}
	memset(st, 0, sizeof(*st));
	st->st_mode = S_IFDIR | 0755;
	return 1;
}

int net_seed_layer(const char *dir, const char *layers_dir, const char *const *layers,
		   size_t nlayers, const char *hostname, struct op_error *e)
{
	char path[256], hostname_line[MAX_NAME_LEN + 2];
	const char *texts[NET_FILES] = {hosts_text, resolv_text, hostname_line};
	struct stat st;

	if (!configured || !image_etc_is_dir(layers_dir, layers, nlayers, &st))
		return 0;
	snprintf(path, sizeof(path), "%s/etc", dir);
	if (mkdir(dir, 0755) != 0 || mkdir(path, 0700) != 0) {
		log_errno("mkdir %s", path);
		return op_fail(e, "EMOUNT", errno, "mkdir %s", path);
	}
	if (hostname != NULL)
		snprintf(hostname_line, sizeof(hostname_line), "%s\n", hostname);
	for (int i = 0; i < NET_FILES; i++) {
		int fd;

		snprintf(path, sizeof(path), "%s/etc/%s", dir, file_names[i]);
		fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
		if (hostname != NULL) {
			if (write_text(fd, texts[i], path, e) != 0)
				return -1;
		} else if (fd >= 0) {
			close(fd);
		} else {
			log_errno("create %s", path);
			return op_fail(e, "EMOUNT", errno, "create %s", path);
		}
	}
	/* the merged /etc takes the topmost layer's mode and owner: the image's (set last: a
	 * setgid /etc would give the files its group) */
	snprintf(path, sizeof(path), "%s/etc", dir);
	if (chown(path, st.st_uid, st.st_gid) != 0 || chmod(path, st.st_mode & 07777) != 0) {
		log_errno("chown %s", path);
		return op_fail(e, "EMOUNT", errno, "chown %s", path);
	}
	return hostname != NULL ? 2 : 1;
}

int net_write_files(int root_fd, const char *hostname, struct op_error *e)
{
	char hostname_line[MAX_NAME_LEN + 2];
	const char *texts[NET_FILES] = {hosts_text, resolv_text, hostname_line};

	if (!configured)
		return 0;
	snprintf(hostname_line, sizeof(hostname_line), "%s\n", hostname);
	for (int i = 0; i < NET_FILES; i++) {
		char rel[64];

		snprintf(rel, sizeof(rel), "etc/%s", file_names[i]);
		if (write_text(open_in_root(root_fd, rel, O_WRONLY | O_TRUNC | O_CREAT, 0644),
			       texts[i], rel, e) != 0)
			return -1;
	}
	return 0;
}

int net_bind_files(const char *scratch, const char *root, const char *hostname,
		   struct op_error *e)
{
	char hostname_line[MAX_NAME_LEN + 2];
	const char *texts[NET_FILES] = {hosts_text, resolv_text, hostname_line};
	int root_fd;

	if (!configured)
		return 0;
	snprintf(hostname_line, sizeof(hostname_line), "%s\n", hostname);
	root_fd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (root_fd < 0) {
		log_errno("open %s", root);
		return op_fail(e, "ESPAWN", errno, "open the container root");
	}
	for (int i = 0; i < NET_FILES; i++) {
		char path[256];

		snprintf(path, sizeof(path), "%s/%s", scratch, file_names[i]);
		if (write_file(path, texts[i], e) != 0) {
			close(root_fd);
			return -1;
		}
		bind_into(root_fd, path, file_names[i]);
	}
	close(root_fd);
	return 0;
}
