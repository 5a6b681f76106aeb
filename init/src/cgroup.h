/* Per-container cgroups (v2): /sys/fs/cgroup/ct<N> with memory.max and pids.max from the
 * START's limits and memory.oom.group; how many processes the OOM killer ended in one.
 *
 * Making a memory cgroup is the dearest step of a START (~8 ms under TCG), so init keeps
 * spares made ahead (numbered, not named after a container; never held a process, no limits
 * until a START writes its own), makes the next ones and removes the cgroups of ended
 * containers between requests (cgroup_housekeeping): one as soon as the guest is quiet, up
 * to CGROUP_SPARES once it is idle with no process (a snapshot's template: every clone finds
 * them made, and a group's second START needs no mkdir of its own). Processes
 * are born in their cgroup (clone3 CLONE_INTO_CGROUP): moving one into a memory cgroup waits
 * for an RCU grace period, ~20 ms in an idle TCG guest. */
#ifndef HYPERVM_CGROUP_H
#define HYPERVM_CGROUP_H

#include <stdint.h>
#include <sys/types.h>

#include "operror.h"
#include "parse.h"

#define CGROUP_NAME_MAX 16 /* "ct" and a decimal u32 */
#define CGROUP_SPARES 2    /* the STARTs of a 2-container group */

/* Take a spare cgroup (or make one) for a container and set its limits; its name goes into
 * `name`, whether it was a spare made ahead into `ahead`. Returns an fd of its directory (O_CLOEXEC) for cgroup_clone, or -1 with e set.
 * Without cgroup v2 memory and pids controllers in the guest kernel: -1 and e set when limits
 * were asked for, else -2 (no cgroup; `name` ""). */
int cgroup_create(const struct limits *l, char name[CGROUP_NAME_MAX], int *ahead,
		  struct op_error *e);

/* Set cgroup `name`'s memory.max and pids.max from l (nothing for 0); with name "", fail when
 * l limits anything. */
int cgroup_set_limits(const char *name, const struct limits *l, struct op_error *e);

/* An fd of cgroup `name`'s directory, as cgroup_create's; -2 when name is "". */
int cgroup_open(const char *name, struct op_error *e);

/* fork() with the namespaces of ns_flags (CLONE_NEW*), the child born in the cgroup of
 * cgroup_fd (cgroup_create / cgroup_open; < 0: init's). As fork(): 0 in the child. */
long cgroup_clone(unsigned long ns_flags, int cgroup_fd);

/* In a container's first process, born in its cgroup: a cgroup namespace rooted there (before
 * it mounts /sys/fs/cgroup, which then shows only its own cgroup). */
int cgroup_unshare_ns(struct op_error *e);

/* The `oom_kill` count of cgroup `name`'s memory.events (0 when unknown). */
unsigned long cgroup_oom_kills(const char *name);

/* Remove cgroup `name` at the next housekeeping (its container has ended). */
void cgroup_release(const char *name);

/* Between requests: remove released cgroups; make a spare when there is none and `spare_now`
 * (the caller says whether the guest is quiet: see cgroup_spare_due), stamped (STAMP_SPARE)
 * when `in_run` (a process runs: the spare shows in its run's stamps line); make the others,
 * up to CGROUP_SPARES, only when `quiet` (the loop was idle SPARE_IDLE_MS) and no process runs.
 * Cheap when there is nothing to do; the first call enables the controllers. */
void cgroup_housekeeping(int spare_now, int in_run, int quiet);

/* 1 while released cgroups wait for housekeeping. */
int cgroup_release_pending(void);

/* 1 when housekeeping would make a spare (`in_run`: a process runs): with none, init makes
 * one only while no process runs or once its loop has been idle for a while: right after a
 * START the spare's mkdir (~10 ms the first time under TCG) would take the vCPU from the
 * process just started, on a one-shot run's path to its EXIT (and, in the EXIT's round, from
 * the host ending the VM: main.c); a later START without a spare makes its cgroup itself.
 * With one but fewer than CGROUP_SPARES: only while no process runs (and the loop is idle). */
int cgroup_spare_due(int in_run);

#endif
