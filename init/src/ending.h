/* A process's end as init learns it. Its shim writes the process's wait status (an int) into
 * the status pipe as soon as it has reaped it, and init reads it there from its loop
 * (ending_on_pipe): the EXIT then goes out once both output pipes are at EOF, while the shim
 * itself is still exiting (for a main process, the reaper, with its PID namespace's teardown).
 * A shim that ended without writing (killed) leaves the pipe at EOF: its reap gives the status
 * (ending_from_reap, how the shim ended), as does a reap seen before the pipe was read. For a
 * main process the OOM count of its container's cgroup is read then, and its container is
 * marked ended (proc.h `main_ended`). */
#ifndef HYPERVM_ENDING_H
#define HYPERVM_ENDING_H

#include "proc.h"

/* p's status pipe is readable (or at EOF): record its status when the shim wrote it. */
void ending_on_pipe(struct process *p);

/* p's shim was reaped with `shim_status` before p's status was read: what the shim wrote if it
 * did, else its own wait status. */
void ending_from_reap(struct process *p, int shim_status);

#endif
