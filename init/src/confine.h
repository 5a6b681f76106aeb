/* Docker's default confinement of a container process, applied in the spawned process between
 * its credentials and its exec: the capability sets (Docker's 14 default capabilities), an
 * optional no_new_privs, and a seccomp filter (a denylist, see confine.c and PROTOCOL.md). */
#ifndef HYPERVM_CONFINE_H
#define HYPERVM_CONFINE_H

#include <stddef.h>
#include <stdint.h>

#include "operror.h"

/* CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE NET_RAW
 * SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP: CapEff/CapPrm/CapBnd of a root process */
#define CONFINE_DEFAULT_CAPS 0xa80425fbULL

/* Before the credentials change (needs CAP_SETPCAP and, without no_new_privs, CAP_SYS_ADMIN):
 * drop every capability outside the default set from the bounding set, clear the ambient set,
 * set no_new_privs when asked, install the seccomp filter. */
int confine_before_credentials(int no_new_privs, struct op_error *e);

/* After setuid/setgid: effective and permitted = the default set for uid 0 (a non-root uid
 * has lost them already, as with Docker), inheritable empty. */
int confine_after_credentials(uint32_t uid, struct op_error *e);

/* The bounding set's part of confine_before_credentials, ahead of it (a prepared container's
 * process, at PREPARE: the set is the same for every START, and no effective capability is
 * lost): 0 once dropped, and then confine_before_credentials in this process skips it; -1
 * with errno, and it drops it again (and reports a failure) as usual. */
int confine_drop_bounding_set(void);

/* The seccomp filter alone (for tests): 0, or -1 with errno. */
int confine_install_seccomp(void);

/* For tests: the filter's return value for an x86_64 `arch` syscall `nr` whose args[0] has
 * the low word `arg0` (init/tests/confine_check.c --verdicts runs it over every number), and
 * the syscalls it denies (the list it is built from). */
uint32_t confine_filter_verdict(uint32_t arch, uint32_t nr, uint32_t arg0);
const uint32_t *confine_denied_syscalls(size_t *n);

#endif
