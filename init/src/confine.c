#define _GNU_SOURCE
#include "confine.h"

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

/* No logging here: the process's stderr is already its own; failures go back to init in the
 * op_error, and init logs them. */
/* musl ships no kernel headers: the few ABI constants this file needs, from the uapi headers */
#define CAP_VERSION_3 0x20080522
#define CAP_LAST_POSSIBLE 63
#define SECCOMP_MODE_FILTER 2
#define SECCOMP_RET_KILL_PROCESS 0x80000000U
#define SECCOMP_RET_ERRNO 0x00050000U
#define SECCOMP_RET_ALLOW 0x7fff0000U
#define AUDIT_ARCH_X86_64 0xc000003eU
#define X32_SYSCALL_BIT 0x40000000U
#define BPF_LD_W_ABS 0x20 /* BPF_LD | BPF_W | BPF_ABS */
#define BPF_JEQ_K 0x15    /* BPF_JMP | BPF_JEQ | BPF_K */
#define BPF_JGE_K 0x35    /* BPF_JMP | BPF_JGE | BPF_K */
#define BPF_JSET_K 0x45   /* BPF_JMP | BPF_JSET | BPF_K */
#define BPF_RET_K 0x06    /* BPF_RET | BPF_K */
#define DATA_NR 0         /* offsets in struct seccomp_data */
#define DATA_ARCH 4
#define DATA_ARG0_LO 16 /* x86_64 is little-endian: the low word of args[0] */
/* CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET: Docker's mask for clone() */
#define CLONE_NS_FLAGS 0x7e020000U
#define AF_VSOCK_FAMILY 40

struct cap_header {
	uint32_t version;
	int pid;
};

struct cap_data {
	uint32_t effective, permitted, inheritable;
};

struct sock_filter {
	uint16_t code;
	uint8_t jt, jf;
	uint32_t k;
};

struct sock_fprog {
	unsigned short len;
	struct sock_filter *filter;
};

/* Syscalls Docker's default profile does not allow a container without extra capabilities,
 * and that the kernel would serve (or that widen its attack surface) without them: EPERM.
 * Kernel keyrings are not namespaced (keyctl, add_key, request_key); user namespaces (unshare,
 * setns, clone with namespace flags) and bpf, userfaultfd, perf_event_open, io_uring are the
 * usual ways from a container into a kernel bug; the rest need a capability we drop anyway. */
static const uint32_t denied[] = {
    SYS_acct, SYS_add_key, SYS_bpf, SYS_clock_adjtime, SYS_clock_settime, SYS_create_module,
    SYS_delete_module, SYS_fanotify_init, SYS_finit_module, SYS_fsconfig, SYS_fsmount,
    SYS_fsopen, SYS_fspick, SYS_get_kernel_syms, SYS_get_mempolicy, SYS_init_module,
    SYS_io_uring_enter, SYS_io_uring_register, SYS_io_uring_setup, SYS_ioperm, SYS_iopl,
    SYS_kcmp, SYS_kexec_file_load, SYS_kexec_load, SYS_keyctl, SYS_lookup_dcookie, SYS_mbind,
    SYS_mount, SYS_mount_setattr, SYS_move_mount, SYS_move_pages, SYS_name_to_handle_at,
    SYS_nfsservctl, SYS_open_by_handle_at, SYS_open_tree, SYS_perf_event_open, SYS_pivot_root,
    SYS_process_vm_readv, SYS_process_vm_writev, SYS_query_module, SYS_quotactl,
    443 /* quotactl_fd */, SYS_reboot, SYS_request_key, SYS_set_mempolicy,
    450 /* set_mempolicy_home_node */,
    SYS_setdomainname, SYS_sethostname, SYS_setns, SYS_settimeofday, SYS_swapoff, SYS_swapon,
    SYS_syslog, SYS_sysfs, SYS__sysctl, SYS_umount2, SYS_unshare, SYS_uselib, SYS_userfaultfd,
    SYS_ustat, SYS_vhangup,
};

/* personality(2) values Docker allows: PER_LINUX, UNAME26, PER_LINUX32, their mix, query */
static const uint32_t personalities[] = {0x0, 0x8, 0x20000, 0x20008, 0xffffffffU};

enum { L_NEXT = 0, L_EPERM, L_ENOSYS, L_ALLOW, L_KILL, L_CLONE, L_PERSONALITY, L_SOCKET,
       L_REST, NLABELS };

#define MAX_INSNS 160
/* a jump's label: a named one, or AT(an instruction's index) */
#define AT(i) ((uint8_t)(NLABELS + (i)))
#define NDENIED (sizeof(denied) / sizeof(denied[0]))
#define LEAF 4 /* denied numbers compared one by one at the tree's leaves */

struct program {
	struct sock_filter insn[MAX_INSNS];
	uint8_t jt[MAX_INSNS], jf[MAX_INSNS]; /* labels, resolved at the end */
	size_t n;
	size_t at[NLABELS];
};

static void emit(struct program *p, uint16_t code, uint32_t k, uint8_t jt, uint8_t jf)
{
	if (p->n < MAX_INSNS) {
		p->insn[p->n] = (struct sock_filter){code, 0, 0, k};
		p->jt[p->n] = jt;
		p->jf[p->n] = jf;
	}
	p->n++;
}

static void label(struct program *p, int which) { p->at[which] = p->n; }

static int resolve(struct program *p)
{
	if (p->n > MAX_INSNS)
		return -1;
	for (size_t i = 0; i < p->n; i++) {
		uint8_t *ends[2] = {&p->insn[i].jt, &p->insn[i].jf};
		uint8_t labels[2] = {p->jt[i], p->jf[i]};

		for (int j = 0; j < 2; j++) {
			size_t target = labels[j] == L_NEXT	 ? i + 1
					: labels[j] >= NLABELS ? (size_t)labels[j] - NLABELS
							       : p->at[labels[j]];
			size_t off = target - (i + 1); /* backwards: huge */

			if (target < i + 1 || off > 255)
				return -1;
			*ends[j] = (uint8_t)off;
		}
	}
	return 0;
}

/* The denied numbers nrs[lo, hi) (sorted) as a binary search: EPERM for each, L_REST for any
 * other number. The kernel runs the filter over every syscall number when it is installed
 * (its cache of always-allowed ones): a search instead of a list of 62 compares takes ~1 ms
 * off each container start under TCG (bench/results/profile-launch-warm-split.txt). */
static void emit_denied(struct program *p, const uint32_t *nrs, size_t lo, size_t hi)
{
	size_t mid = lo + (hi - lo) / 2, at = p->n;

	if (hi - lo <= LEAF) {
		for (size_t i = lo; i < hi; i++)
			emit(p, BPF_JEQ_K, nrs[i], L_EPERM, i + 1 < hi ? L_NEXT : L_REST);
		return;
	}
	emit(p, BPF_JGE_K, nrs[mid], L_NEXT, L_NEXT); /* jt: the upper half, set below */
	emit_denied(p, nrs, lo, mid);
	if (at < MAX_INSNS)
		p->jt[at] = AT(p->n);
	emit_denied(p, nrs, mid, hi);
}

static void build_filter(struct program *p)
{
	uint32_t nrs[NDENIED];

	const uint32_t eperm = SECCOMP_RET_ERRNO | EPERM;

	emit(p, BPF_LD_W_ABS, DATA_ARCH, 0, 0);
	emit(p, BPF_JEQ_K, AUDIT_ARCH_X86_64, L_NEXT, L_KILL);
	emit(p, BPF_LD_W_ABS, DATA_NR, 0, 0);
	emit(p, BPF_JGE_K, X32_SYSCALL_BIT, L_KILL, L_NEXT);
	for (size_t i = 0; i < NDENIED; i++) { /* sorted (insertion) */
		size_t j = i;

		for (; j > 0 && nrs[j - 1] > denied[i]; j--)
			nrs[j] = nrs[j - 1];
		nrs[j] = denied[i];
	}
	emit_denied(p, nrs, 0, NDENIED);
	label(p, L_REST);
	/* ENOSYS: libc falls back to clone(), whose flags the filter can see */
	emit(p, BPF_JEQ_K, SYS_clone3, L_ENOSYS, L_NEXT);
	emit(p, BPF_JEQ_K, SYS_clone, L_CLONE, L_NEXT);
	emit(p, BPF_JEQ_K, SYS_personality, L_PERSONALITY, L_NEXT);
	emit(p, BPF_JEQ_K, SYS_socket, L_SOCKET, L_ALLOW);
	label(p, L_CLONE);
	emit(p, BPF_LD_W_ABS, DATA_ARG0_LO, 0, 0);
	emit(p, BPF_JSET_K, CLONE_NS_FLAGS, L_EPERM, L_ALLOW);
	label(p, L_PERSONALITY);
	emit(p, BPF_LD_W_ABS, DATA_ARG0_LO, 0, 0);
	for (size_t i = 0; i < sizeof(personalities) / sizeof(personalities[0]); i++)
		emit(p, BPF_JEQ_K, personalities[i], L_ALLOW, L_NEXT);
	emit(p, BPF_RET_K, eperm, 0, 0);
	label(p, L_SOCKET); /* the host's vsock is no business of a container */
	emit(p, BPF_LD_W_ABS, DATA_ARG0_LO, 0, 0);
	emit(p, BPF_JEQ_K, AF_VSOCK_FAMILY, L_EPERM, L_ALLOW);
	label(p, L_EPERM);
	emit(p, BPF_RET_K, eperm, 0, 0);
	label(p, L_ENOSYS);
	emit(p, BPF_RET_K, SECCOMP_RET_ERRNO | ENOSYS, 0, 0);
	label(p, L_ALLOW);
	emit(p, BPF_RET_K, SECCOMP_RET_ALLOW, 0, 0);
	label(p, L_KILL);
	emit(p, BPF_RET_K, SECCOMP_RET_KILL_PROCESS, 0, 0);
}

int confine_install_seccomp(void)
{
	static struct program p;
	struct sock_fprog prog;

	p.n = 0;
	build_filter(&p);
	if (resolve(&p) != 0) {
		errno = E2BIG;
		return -1;
	}
	prog = (struct sock_fprog){(unsigned short)p.n, p.insn};
	return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
}

uint32_t confine_filter_verdict(uint32_t arch, uint32_t nr, uint32_t arg0)
{
	static struct program p;
	uint32_t acc = 0;
	size_t pc = 0;

	p.n = 0;
	build_filter(&p);
	if (resolve(&p) != 0)
		return 0; /* SECCOMP_RET_KILL_THREAD: no verdict */
	while (pc < p.n) {
		const struct sock_filter *f = &p.insn[pc++];

		switch (f->code) {
		case BPF_LD_W_ABS:
			acc = f->k == DATA_ARCH ? arch : f->k == DATA_NR ? nr : arg0;
			break;
		case BPF_JEQ_K:
			pc += acc == f->k ? f->jt : f->jf;
			break;
		case BPF_JGE_K:
			pc += acc >= f->k ? f->jt : f->jf;
			break;
		case BPF_JSET_K:
			pc += (acc & f->k) ? f->jt : f->jf;
			break;
		case BPF_RET_K:
			return f->k;
		default:
			return 0;
		}
	}
	return 0;
}

const uint32_t *confine_denied_syscalls(size_t *n)
{
	*n = NDENIED;
	return denied;
}

static int drop_bounding_set(void)
{
	for (int cap = 0; cap <= CAP_LAST_POSSIBLE; cap++) {
		if (cap < 32 && (CONFINE_DEFAULT_CAPS & (1ULL << cap)))
			continue;
		if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) {
			if (errno == EINVAL)
				return 0; /* past the kernel's last capability */
			return -1;
		}
	}
	return 0;
}

/* set in a process whose bounding set is already dropped (confine_drop_bounding_set) */
static int bounding_set_dropped;

int confine_drop_bounding_set(void)
{
	if (drop_bounding_set() != 0)
		return -1;
	bounding_set_dropped = 1;
	return 0;
}

int confine_before_credentials(int no_new_privs, struct op_error *e)
{
	if (!bounding_set_dropped && drop_bounding_set() != 0) {
		return op_fail(e, "ESPAWN", errno, "drop the capability bounding set");
	}
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL) {
		return op_fail(e, "ESPAWN", errno, "clear the ambient capabilities");
	}
	if (no_new_privs && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
		return op_fail(e, "ESPAWN", errno, "process.no_new_privs: prctl");
	}
	/* without no_new_privs installing a filter needs CAP_SYS_ADMIN: before the caps go */
	if (confine_install_seccomp() != 0) {
		return op_fail(e, "ESPAWN", errno, "install the seccomp filter");
	}
	return 0;
}

int confine_after_credentials(uint32_t uid, struct op_error *e)
{
	struct cap_header h = {CAP_VERSION_3, 0};
	uint32_t low = uid == 0 ? (uint32_t)CONFINE_DEFAULT_CAPS : 0;
	struct cap_data d[2] = {{low, low, 0}, {0, 0, 0}};

	if (syscall(SYS_capset, &h, d) != 0) {
		return op_fail(e, "ESPAWN", errno, "set the capabilities");
	}
	return 0;
}
