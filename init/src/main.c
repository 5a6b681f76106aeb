/* hypervm-init: PID 1 of a HyperVM. Read this file as the outline; each step lives in the
 * module named after it. PROTOCOL.md is the contract with the host. */
#define _GNU_SOURCE
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "boot.h"
#include "cgroup.h"
#include "channel.h"
#include "exec.h"
#include "frame.h"
#include "log.h"
#include "proc.h"
#include "relay.h"
#include "server.h"
#include "shim.h"
#include "signals.h"
#include "stamp.h"

#define MAX_POLL_FDS (2 + RELAY_FDS_PER_PROCESS * MAX_PROCESSES)
#define DISCONNECTED_POLL_MS 5
/* While a process runs, the spare cgroup is made once the loop has been idle this long; the
 * further spares (cgroup.h) once it has been idle this long with no process. */
#define SPARE_IDLE_MS 500

static int boot(int *self_fd)
{
	boot_console();
	stamp_setup();
	log_msg("started (protocol %d)", PROTOCOL_VERSION);
	*self_fd = boot_open_self();
	boot_load_modules();
	if (*self_fd < 0 || boot_switch_root() != 0 || boot_mount_system() != 0)
		return -1;
	boot_raise_fd_limit();
	boot_page_reporting();
	boot_offline_spares();
	boot_loopback_up();
	return 0;
}

static void serve_forever(struct server *srv, int sfd)
{
	static struct pollfd pfds[MAX_POLL_FDS];
	static struct relay_slot slots[MAX_POLL_FDS];
	struct channel *ch = srv->ch;

	for (;;) {
		size_t n = 0;
		int channel_polled = 0, reaped = 0;

		if (ch->state == CH_DISCONNECTED && channel_host_connected(ch)) {
			log_msg("host connected to the channel");
			channel_begin_session(ch);
			server_send_ready(srv);
		}
		pfds[n++] = (struct pollfd){.fd = sfd, .events = POLLIN};
		/* While disconnected poll() would report POLLHUP at once: sleep-poll instead. */
		if (ch->state != CH_DISCONNECTED && stdin_backlog() < STDIN_BACKLOG_MAX) {
			pfds[n++] = (struct pollfd){.fd = ch->fd, .events = POLLIN};
			channel_polled = 1;
		}
		size_t first_slot = n;
		n += relay_poll_fds(pfds + n, slots + n, MAX_POLL_FDS - n,
				    ch->state == CH_CONNECTED);
		int idle_work = cgroup_spare_due(proc_count() > 0) || cgroup_release_pending() ||
				signals_ended_pending();
		int timeout = idle_work ? SPARE_IDLE_MS : -1;

		if (ch->state == CH_DISCONNECTED)
			timeout = DISCONNECTED_POLL_MS;
		int ready = poll(pfds, n, timeout);

		if (ready < 0)
			continue;
		if (pfds[0].revents & POLLIN)
			reaped = signals_on_readable(sfd);
		if (channel_polled && pfds[1].revents != 0)
			channel_on_readable(ch, pfds[1].revents, server_on_frame, srv);
		for (size_t i = first_slot; i < n; i++)
			relay_on_event(ch, &slots[i], pfds[i].revents);
		/* Not in a round that sent an EXIT, nor in one that reaped a child (a reaper or shim
		 * ends after its process's EXIT, since 0.7.6): the host of a one-shot run destroys the
		 * VM now, and the ended container's release (its mounts' teardown), its cgroup's
		 * removal and the next spare (~12 ms of vCPU under TCG, on the host's cores while
		 * libvirt and QEMU end the VM) wait for a later round, at the latest SPARE_IDLE_MS of
		 * quiet. */
		if (relay_flush_exits(ch) == 0 && reaped == 0) {
			signals_release_ended();
			cgroup_housekeeping(ready == 0 || proc_count() == 0, proc_count() > 0,
					    ready == 0 && timeout == SPARE_IDLE_MS);
		}
		stamp_report(); /* after the EXIT and what follows it in this round */
	}
}

int main(int argc, char **argv)
{
	static struct channel ch;
	struct server srv = {.ch = &ch};
	struct utsname uts;
	int self_fd, proc_fd, sfd;

	if (argc > 1 && strcmp(argv[1], "--shim") == 0)
		return shim_main(argc, argv);
	if (getpid() != 1) {
		fprintf(stderr, "%sruns only as PID 1 of a HyperVM\n", LOG_PREFIX);
		return 2;
	}
	if (boot(&self_fd) != 0 || (proc_fd = boot_open_proc()) < 0 ||
	    (sfd = signals_setup()) < 0 || channel_open(&ch) != 0) {
		log_msg("cannot serve the host: powering off");
		power_off();
	}
	spawn_set_context(self_fd, proc_fd);
	uname(&uts);
	snprintf(srv.kernel_release, sizeof(srv.kernel_release), "%s", uts.release);
	serve_forever(&srv, sfd);
}
