/* The shim: init's binary re-entered as `hypervm-init --shim <pid> <status-fd>`. It is the
 * parent of one container process: forwards every catchable signal to it, reaps every child
 * (as the container's reaper it is PID 1 of the container's PID namespace), and when the
 * process ends writes its wait status (an int) to status-fd, before it reaps the process (the
 * status comes from waitid's WNOWAIT), then reaps it and exits. */
#ifndef HYPERVM_SHIM_H
#define HYPERVM_SHIM_H

int shim_main(int argc, char **argv);

#endif
