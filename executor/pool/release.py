"""A claimed pool VM handed back to the pool for its teardown ("release"): the claimer returns
as soon as the VM's QEMU is gone, and the pool, which owns the VM's libvirt connection anyway,
waits for libvirtd's teardown in its background (1-2 s per VM where PID 1 reaps late:
executor.libvirt.qemu_process).

    → {"op": "release", "vm": "hypervm-pool-1a2b3c4d"}
    ← {"released": "hypervm-pool-1a2b3c4d"}     once the VM's QEMU has exited
    ← {"error": "..."}                           the claimer then powers the VM off itself

Only the VM's owner may release it: the process its metadata names (pid and start time), seen
through SO_PEERCRED, and only a VM of this pool. The pool becomes the owner before it destroys
the VM, so at every moment a live process answers for it (and the reaper of a pool that dies
meanwhile, or ``hypervm gc``, finds it). The workload has exited when a claimer releases; its
shares are 9p without a guest cache, so the guest has nothing left to write back.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

from executor.libvirt.domain import DOMAIN_PREFIX, META_OWNER_PID, META_OWNER_START
from executor.libvirt.owners import owner_metadata, process_start_time
from executor.libvirt.qemu_process import QemuProcess
from hypervm.errors import HyperVMError, PoolError

log = logging.getLogger(__name__)

#: how long the releaser waits for QEMU to exit once the pool destroys it
RELEASE_TIMEOUT_S = 5.0
_NAME_RE = re.compile(rf"^{re.escape(DOMAIN_PREFIX)}[A-Za-z0-9_.-]{{1,80}}$")


def release_request(vm: str) -> dict[str, Any]:
    return {"op": "release", "vm": vm}


def parse_release(request: Mapping[str, Any]) -> str:
    """The VM name of a release request; PoolError naming the bad field."""
    vm = request.get("vm")
    if not isinstance(vm, str) or not _NAME_RE.match(vm):
        raise PoolError(f"release.vm: not a HyperVM name: {vm!r:.100}")
    return vm


def check_released(reply: Mapping[str, Any], vm: str) -> None:
    """The pool's reply to our release of ``vm``; PoolError unless it took the VM."""
    if reply.get("released") != vm:
        raise PoolError(str(reply.get("error", f"malformed release reply: {dict(reply)!r:.200}")))


def is_owner(metadata: Mapping[str, str], pid: int) -> bool:
    """``pid`` is the live process ``metadata`` names as the VM's owner (start time too:
    pids are recycled)."""
    start = process_start_time(pid)
    return (metadata.get(META_OWNER_PID) == str(pid) and start is not None
            and metadata.get(META_OWNER_START) == str(start))


def release_vm(hv: Any, name: str, peer_pid: int, ours: Mapping[str, str],
               released: Mapping[str, str], discard: Callable[[str], None],
               timeout: float = RELEASE_TIMEOUT_S) -> None:
    """Take ``name`` back from ``peer_pid`` and destroy it: returns once its QEMU has exited
    (the rest of the teardown goes on in a thread). ``ours``: metadata entries every VM of
    this pool has; ``released``: entries it gets now, with this process as its owner.
    PoolError when ``peer_pid`` may not release it."""
    try:
        metadata = hv.metadata(name)
    except HyperVMError as e:
        raise PoolError(f"cannot inspect {name}: {e}") from e
    if not metadata or any(metadata.get(k) != v for k, v in ours.items()):
        raise PoolError(f"{name} is not a VM of this pool")
    if not is_owner(metadata, peer_pid):
        raise PoolError(f"{name} is not pid {peer_pid}'s to release")
    qemu = QemuProcess.of(name)
    try:
        try:
            hv.set_metadata(name, {**metadata, **released, **owner_metadata()})
        except HyperVMError as e:
            raise PoolError(f"cannot take {name} back: {e}") from e
        log.info("%s released by pid %d: destroying it", name, peer_pid)
        if qemu is None:  # no pidfd: wait for libvirt's destroy itself
            discard(name)
            return
        threading.Thread(target=discard, args=(name,), name="pool-release", daemon=True).start()
        if not qemu.wait_exit(timeout):
            raise PoolError(f"the QEMU of {name} still runs {timeout:g} s after its destroy")
    finally:
        if qemu is not None:
            qemu.close()
