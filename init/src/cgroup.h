/* Per-container cgroups (v2): /sys/fs/cgroup/ct-<container> with memory.max, pids.max and
 * memory.oom.group from the START's limits; how many processes the OOM killer ended in it. */
#ifndef HYPERVM_CGROUP_H
#define HYPERVM_CGROUP_H

#include <stdint.h>
#include <sys/types.h>

#include "operror.h"
#include "parse.h"

/* Make the container's cgroup (a leftover of the same name is removed first) and set its
 * limits. Returns an fd of its cgroup.procs (O_CLOEXEC) for cgroup_join / cgroup_attach, or -1
 * with e set. Without cgroup v2 in the guest kernel: -1 and e set when limits were asked for,
 * else -2 (the container runs without a cgroup). */
int cgroup_create(const char *container, const struct limits *l, struct op_error *e);

/* Move `pid` (0: the caller) into the cgroup of procs_fd. */
int cgroup_attach(int procs_fd, pid_t pid, struct op_error *e);

/* In a process about to join a running container: into its cgroup, if it has one. */
int cgroup_join_existing(const char *container, struct op_error *e);

/* In a new container's first process: into the cgroup of procs_fd (closed; -1: no cgroup) and
 * a cgroup namespace rooted there. */
int cgroup_enter(int procs_fd, struct op_error *e);

/* A cgroup namespace rooted at the caller's cgroup; with remount, /sys/fs/cgroup (if mounted)
 * is mounted again (read-only) to show it. */
int cgroup_unshare_ns(int remount, struct op_error *e);

/* The `oom_kill` count of the container's memory.events (0 when unknown). */
unsigned long cgroup_oom_kills(const char *container);

/* Remove the container's cgroup once its processes are gone (logged when it cannot). */
void cgroup_remove(const char *container);

#endif
