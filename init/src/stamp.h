/* Debug stamps of a one-shot run's guest work (off by default): with `hypervm_stamps=1` on the
 * kernel command line (the kernel hands it to init as an environment variable), init and its
 * children before their execve note CLOCK_MONOTONIC at each step of NETWORK, START, the
 * process and the exit path in a page shared across fork, and init logs them as one console
 * line once the main process's EXIT frame is written, at the end of that round of its loop
 * (so the line costs the run nothing, and shows what init did after the EXIT in that round):
 *   hypervm-init: stamps t0=<s> <name>=<ms> <name>=<ms> ...
 * t0 is the first stamp's CLOCK_MONOTONIC in seconds (the kernel's console timestamps use the
 * same clock, near enough), each <ms> is milliseconds after it with two decimals; steps not
 * taken are left out; the names come in the order of enum stamp_point. */
#ifndef HYPERVM_STAMP_H
#define HYPERVM_STAMP_H

enum stamp_point {
	STAMP_NETWORK_RECV,  /* init: the NETWORK frame read */
	STAMP_NETWORK_DONE,  /* init: interfaces configured, files rendered */
	STAMP_NETWORK_OK,    /* init: its OK written */
	STAMP_START_RECV,    /* init: the START frame read */
	STAMP_START_CHECKED, /* init: parsed, checked, pipes open */
	STAMP_CGROUP,        /* init: the container's cgroup ready */
	STAMP_LAYERS,        /* init: the layers mounted (the first START mounts them) */
	STAMP_CLONED,        /* init: clone() of the container's reaper returned */
	STAMP_PREP_FILES,    /* init: a prepared START's /etc files written into its root */
	STAMP_HANDED,        /* init: the START handed to the prepared container (limits set) */
	STAMP_RECEIVED,      /* prepared process: the START received and parsed */
	STAMP_ROOTFS,        /* reaper: the rootfs assembled (tmpfs, overlay) */
	STAMP_ENTERED,       /* reaper: /etc files bound, pivot_root done */
	STAMP_MOUNTED,       /* reaper: /proc /sys /dev, the requested mounts, the hostname
			      * (prepared: the requested mounts, the hostname) */
	STAMP_FORKED,        /* process: forked by the reaper, running */
	STAMP_CONFINED,      /* process: stdio, signals, confinement, credentials, cwd */
	STAMP_RESOLVED,      /* process: its file found; only the execve is left */
	STAMP_AWAITED,       /* init: the process's READY report read */
	STAMP_START_OK,      /* init: the START's OK written */
	STAMP_SHIM,          /* reaper: its execveat of init as the shim begins */
	STAMP_SPARE,         /* init: the spare cgroup for the next START made (while a process runs) */
	STAMP_STATUS,        /* init: the main process's wait status read (from its reaper's status
			      * pipe, as soon as the reaper wrote it; since 0.7.6, before the
			      * reaper's own end, which was stamped `reaped` here before) */
	STAMP_STDOUT_EOF,    /* init: end of the main process's stdout */
	STAMP_STDERR_EOF,    /* init: end of its stderr */
	STAMP_EXIT_SENT,     /* init: its EXIT frame written */
	STAMP_POINTS
};

/* Map the shared page when the kernel command line asked for stamps (init only, at boot). */
void stamp_setup(void);

/* Note the time of `point` (nothing when stamps are off). Async-signal-safe, any process. */
void stamp(enum stamp_point point);

/* Once EXIT_SENT is stamped: log the line and clear the page for the next run. */
void stamp_report(void);

/* The line's text for `ns` (0: not taken) into buf; the pure part, for tests. */
void stamp_format(const unsigned long long ns[STAMP_POINTS], char *buf, unsigned long size);

#endif
