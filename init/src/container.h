/* Containers: the rootfs (overlay of layer disks + private tmpfs upper), new mount/PID/UTS/IPC
 * namespaces (the network namespace is shared), pivot_root, /proc /sys /dev and the requested
 * mounts; and joining a running container's namespaces for EXEC. */
#ifndef HYPERVM_CONTAINER_H
#define HYPERVM_CONTAINER_H

#include <sys/types.h>

#include "exec.h"
#include "operror.h"
#include "parse.h"

/* Where each container's private tmpfs (upper, work, root) is mounted, in its own mount
 * namespace: one path serves every container. */
#define SCRATCH_DIR "/run/hypervm/scratch"

/* Create the container and start its main process under a reaper. On success *reaper is the
 * reaper's pid and *pid the process's (both as init sees them); f holds init's pipe ends. */
int container_start(const struct start_req *req, struct spawn_fds *f, pid_t *reaper, pid_t *pid,
		    struct op_error *e);

/* Start a process in the namespaces of the container whose reaper is `reaper`. */
int container_exec(pid_t reaper, const struct proc_spec *p, struct spawn_fds *f, pid_t *shim,
		   pid_t *pid, struct op_error *e);

#endif
