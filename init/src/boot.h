/* Boot of the VM: console, kernel modules (fallback distro kernel), a tmpfs root (pivot_root
 * cannot leave the initramfs), system mounts. Power-off. */
#ifndef HYPERVM_BOOT_H
#define HYPERVM_BOOT_H

#define MODULES_DIR "/lib/modules"
#define MODULES_ORDER MODULES_DIR "/hypervm.order"

/* Mount devtmpfs on the initramfs /dev and make the console fds 0, 1 and 2. */
int boot_console(void);
/* Open our own binary (for the shims); returns the fd or -1. Mounts /proc for it. */
int boot_open_self(void);
/* finit_module() every .ko listed in MODULES_ORDER (paths relative to MODULES_DIR), then any
 * other .ko under MODULES_DIR; EEXIST is fine. Returns the number that failed. */
int boot_load_modules(void);
/* Move / onto a fresh tmpfs (switch_root without the exec). */
int boot_switch_root(void);
/* /proc /sys /dev /dev/pts /dev/shm /run and init's directories under /run/hypervm. */
int boot_mount_system(void);
/* Bring the loopback interface up (the VM's network namespace is shared by containers). */
int boot_loopback_up(void);
/* Room for the pipes of every process (MAX_PROCESSES). */
void boot_raise_fd_limit(void);

void boot_page_reporting(void);
/* A template's spare CPUs offline before READY (`hypervm.spares=offline`). */
void boot_offline_spares(void);
/* init's view of /proc as a directory fd, O_CLOEXEC. */
int boot_open_proc(void);

/* Kill everything, sync, unmount the layers, power off. Never returns. */
void power_off(void) __attribute__((noreturn));

#endif
