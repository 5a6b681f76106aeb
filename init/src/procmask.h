/* Docker's masked and read-only paths of a container's /proc and /sys. */
#ifndef HYPERVM_PROCMASK_H
#define HYPERVM_PROCMASK_H

#include "operror.h"

/* In the container, once /proc, /sys and /dev are mounted: /dev/null or an empty read-only
 * tmpfs over the masked paths, read-only binds of the read-only ones. */
int procmask_apply(struct op_error *e);

#endif
