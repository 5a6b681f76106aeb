#define _GNU_SOURCE
#include "proc.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct process *processes;
static struct container *containers;
static size_t nprocesses;

struct process *proc_new(uint32_t handle)
{
	struct process *p;

	if (nprocesses >= MAX_PROCESSES)
		return NULL;
	p = calloc(1, sizeof(*p));
	if (p == NULL)
		return NULL;
	p->handle = handle;
	p->out_fd = p->err_fd = p->in_fd = p->status_fd = p->pty_fd = -1;
	p->next = processes;
	processes = p;
	nprocesses++;
	return p;
}

struct process *proc_find(uint32_t handle)
{
	for (struct process *p = processes; p != NULL; p = p->next)
		if (p->handle == handle)
			return p;
	return NULL;
}

struct process *proc_find_by_shim(pid_t shim_pid)
{
	for (struct process *p = processes; p != NULL; p = p->next)
		if (p->shim_pid == shim_pid && !p->exited)
			return p;
	return NULL;
}

struct process *proc_first(void) { return processes; }

size_t proc_count(void) { return nprocesses; }

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

void proc_close_stdin(struct process *p)
{
	close_fd(&p->in_fd);
	free(p->in_queue.data);
	memset(&p->in_queue, 0, sizeof(p->in_queue));
	p->in_close_pending = 0;
}

void proc_remove(struct process *p)
{
	struct process **pp = &processes;

	while (*pp != NULL && *pp != p)
		pp = &(*pp)->next;
	if (*pp == NULL)
		return;
	*pp = p->next;
	nprocesses--;
	close_fd(&p->out_fd);
	close_fd(&p->err_fd);
	close_fd(&p->status_fd);
	close_fd(&p->pty_fd);
	proc_close_stdin(p);
	free(p);
}

size_t stdin_backlog(void)
{
	size_t total = 0;

	for (struct process *p = processes; p != NULL; p = p->next)
		total += p->in_queue.len - p->in_queue.off;
	return total;
}

struct container *container_add(const char *name, pid_t reaper_pid, uint32_t main_handle)
{
	struct container *c = calloc(1, sizeof(*c));

	if (c == NULL)
		return NULL;
	strncpy(c->name, name, MAX_NAME_LEN);
	c->reaper_pid = reaper_pid;
	c->main_handle = main_handle;
	c->mounts_fd = -1;
	c->next = containers;
	containers = c;
	return c;
}

struct container *container_find(const char *name)
{
	for (struct container *c = containers; c != NULL; c = c->next)
		if (strcmp(c->name, name) == 0)
			return c;
	return NULL;
}

struct container *container_find_by_reaper(pid_t reaper_pid)
{
	for (struct container *c = containers; c != NULL; c = c->next)
		if (c->reaper_pid == reaper_pid)
			return c;
	return NULL;
}

void container_remove(struct container *c)
{
	struct container **cc = &containers;

	while (*cc != NULL && *cc != c)
		cc = &(*cc)->next;
	if (*cc == NULL)
		return;
	*cc = c->next;
	free(c);
}
