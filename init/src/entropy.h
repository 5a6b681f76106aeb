/* The kernel's RNG after a restore from a snapshot: every clone of one snapshot starts with
 * the same CRNG state, so the host sends fresh entropy (RESEED) before anything runs. */
#ifndef HYPERVM_ENTROPY_H
#define HYPERVM_ENTROPY_H

#include <stddef.h>

#include "operror.h"

/* Mix `seed` into the input pool (credited) and force a CRNG reseed from it: every later
 * getrandom()/urandom read, stack canary and ASLR offset of a new process derives from it.
 * 0, or -1 with e set. */
int entropy_reseed(const unsigned char *seed, size_t len, struct op_error *e);

#endif
