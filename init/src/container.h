/* Containers: the rootfs (overlay of layer disks + private tmpfs upper), new mount/PID/UTS/IPC
 * namespaces (the network namespace is shared), pivot_root, /proc /sys /dev and the requested
 * mounts; and joining a running container's namespaces for EXEC. */
#ifndef HYPERVM_CONTAINER_H
#define HYPERVM_CONTAINER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "cgroup.h"
#include "exec.h"
#include "operror.h"
#include "parse.h"

/* Where each container's private tmpfs (upper, work, root) is mounted, in its own mount
 * namespace: one path serves every container. */
#define SCRATCH_DIR "/run/hypervm/scratch"

/* Create the container and start its main process under a reaper, born in the cgroup of
 * cgroup_fd (cgroup_create; < 0: none) with a cgroup namespace rooted there. On success
 * *reaper is the reaper's pid and *pid the process's (both as init sees them); f holds init's
 * pipe ends. */
int container_start(const struct start_req *req, int cgroup_fd, struct spawn_fds *f,
		    pid_t *reaper, pid_t *pid, struct op_error *e);

/* PREPARE: make a container ahead of its START (at most one per VM); EEXIST when one is. */
int container_prepare(const struct prepare_req *req, struct op_error *e);

/* 1 when the prepared container can take this START: the same layers (in order) and readonly
 * flag, 9p mounts only of the tags it carries, and /etc files if NETWORK has been configured. */
int container_prepared_fits(const struct start_req *req, size_t payload_len);

/* container_start with the prepared container, which is used up: it was born in a cgroup of
 * its own at PREPARE, whose name goes into `cgroup`, and gets the START's limits. 0 or -1 like
 * container_start, 1 when the prepared container turned out unusable (dropped; start the
 * usual way). */
int container_start_prepared(const struct start_req *req, const uint8_t *payload, size_t len,
			     char cgroup[CGROUP_NAME_MAX], struct spawn_fds *f, pid_t *reaper,
			     pid_t *pid, struct op_error *e);

/* SIGCHLD: the prepared container's child ended before its START. */
void container_prepared_exited(pid_t pid);

/* An fd of the mount namespace of the container whose reaper is `reaper` (-1 when it cannot be
 * opened): while init holds it, the reaper's exit does not tear the container's mounts down. */
int container_hold_mounts(pid_t reaper);

/* Start a process in the namespaces of the container whose reaper is `reaper`, and in its
 * cgroup (its name; "": none). */
int container_exec(const char *cgroup, pid_t reaper, const struct proc_spec *p,
		   struct spawn_fds *f, pid_t *shim, pid_t *pid, struct op_error *e);

#endif
