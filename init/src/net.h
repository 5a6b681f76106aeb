/* The VM's network (NETWORK request): interface addresses and default route, and the files a
 * container sees in /etc (hosts, resolv.conf, hostname), each a private copy per container. */
#ifndef HYPERVM_NET_H
#define HYPERVM_NET_H

#include "operror.h"
#include "parse.h"

/* Configure every interface of req (found by MAC), then remember the resolver and hosts
 * settings for containers started from now on. ENET when an interface is missing or refuses. */
int net_configure(const struct network_req *req, struct op_error *e);

/* In a new container, before pivot_root: write hosts, resolv.conf and hostname into scratch
 * (the container's private tmpfs) and bind each over <root>/etc/<name>, resolved inside root
 * (symlinks in the image cannot point out of it) and created when missing. Does nothing until a
 * NETWORK request has succeeded; a read-only rootfs without the file keeps its /etc (logged). */
int net_bind_files(const char *scratch, const char *root, const char *hostname,
		   struct op_error *e);

/* Before a writable overlay rootfs is mounted: make `dir` (on the container's tmpfs) a layer
 * holding an etc directory (the image's /etc's mode and owner) with hosts, resolv.conf and hostname, to be the topmost
 * lower layer, as Docker's init layer: no file is then created in the overlay, which would copy
 * the image's /etc up first. With `hostname` the files hold the container's settings (nothing
 * to bind: returns 2); without, they are empty targets for net_bind_files (returns 1). 0: not
 * wanted (no NETWORK yet, or the topmost of `layers` (bottom first, under layers_dir) has an
 * etc that is not a directory, which the seed's would hide); -1: failed (e set). */
int net_seed_layer(const char *dir, const char *layers_dir, const char *const *layers,
		   size_t nlayers, const char *hostname, struct op_error *e);

/* 1 once a NETWORK request has succeeded (containers get the /etc files). */
int net_configured(void);

/* From init, into a prepared container whose root is root_fd (/proc/<pid>/root): rewrite its
 * /etc files (bound by net_bind_files) with the current settings and `hostname`, resolved
 * inside that root. */
int net_write_files(int root_fd, const char *hostname, struct op_error *e);

#endif
