"""The per-VM supervisor of a detached ``hypervm run -d`` (the role conmon or a containerd shim
plays): it owns the VM's libvirt connection (the domain is auto-destroyed with it, so the VM
never outlives its supervisor), keeps the output (rotated), the exit status and the events in
the container's box, and serves exec/attach/stop/kill/wait on a root-only unix socket there.

- ``box.py``: a container's directory (state JSON, log, socket), names, listing;
- ``logfile.py``: the rotated output log, written and read;
- ``daemon.py``: the supervisor process (``python -m executor.supervisor BOX``).
"""
