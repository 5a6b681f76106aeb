/* 9p shares: each tag is mounted once for the whole VM under SHARES_DIR/<tag> (a virtio-9p tag
 * can back only one mount at a time); containers get detached clones of it (open_tree) that
 * they attach at their mount points after entering their root. */
#ifndef HYPERVM_SHARES_H
#define HYPERVM_SHARES_H

#include "operror.h"
#include "parse.h"

#define SHARES_DIR "/run/hypervm/shares"

/* Mount every 9p tag `req` uses that is not mounted yet (in init's namespace, before clone). */
int shares_ensure(const struct start_req *req, struct op_error *e);

/* In the container's namespace, before pivot_root: a detached clone of each 9p mount's source
 * (the tag, or its subdir) in fds[i]; -1 for other mounts. */
int shares_clone(const struct start_req *req, int *fds, struct op_error *e);

/* The same from tags mounted under `base` (at most as long as SHARES_DIR): a prepared
 * container's carried tags, after its pivot_root. */
int shares_clone_from(const char *base, const struct start_req *req, int *fds,
		      struct op_error *e);

/* After pivot_root: attach clone `fd` at `destination` (read-only when asked). */
int shares_attach(int fd, const char *destination, int readonly, struct op_error *e);

/* Unmount every share (at power-off). */
void shares_unmount_all(void);

#endif
