"""A claimed pool VM handed back to the pool for its teardown ("release"): the claimer returns
as soon as the VM's QEMU is gone, and the pool, which owns the VM's libvirt connection anyway,
does the rest in its background (libvirtd's teardown takes 1-2 s per VM where PID 1 reaps
late: executor.libvirt.qemu_process).

    → {"op": "release", "vm": "hypervm-pool-1a2b3c4d"}
    ← {"released": "hypervm-pool-1a2b3c4d"}     once the VM's QEMU has exited
    ← {"error": "..."}                           the claimer then powers the VM off itself

Only the process this pool handed the VM to (pid and start time, seen through SO_PEERCRED)
may release it. The answer takes no libvirt call: the pool remembers its claims, and ends
QEMU through a pidfd (SIGTERM, then SIGKILL), because libvirtd answers calls naming any domain
late while it tears another one down. If the pool dies before its libvirt destroy, the VM's
QEMU is gone already and the domain's owner (the claimer, soon gone too) makes it a leftover
for the reaper and ``hypervm gc``. The workload has exited when a claimer releases; its
shares are 9p without a guest cache, so the guest has nothing left to write back.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from executor.libvirt.domain import valid_domain_name
from executor.libvirt.owners import process_start_time
from executor.libvirt.qemu_process import LIBVIRT_PID_DIR, QemuProcess
from hypervm.errors import PoolError

log = logging.getLogger(__name__)

#: how long QEMU gets after SIGTERM, and again after SIGKILL
STOP_TIMEOUT_S = 2.0

#: who a claimed VM was handed to: (pid, start time of that pid)
Claimer = tuple[int, "int | None"]


def release_request(vm: str) -> dict[str, Any]:
    return {"op": "release", "vm": vm}


def parse_release(request: Mapping[str, Any]) -> str:
    """The VM name of a release request; PoolError naming the bad field."""
    vm = request.get("vm")
    if not isinstance(vm, str) or not valid_domain_name(vm):
        raise PoolError(f"release.vm: not a HyperVM name: {vm!r:.100}")
    return vm


def check_released(reply: Mapping[str, Any], vm: str) -> None:
    """The pool's reply to our release of ``vm``; PoolError unless it took the VM."""
    if reply.get("released") != vm:
        raise PoolError(str(reply.get("error", f"malformed release reply: {dict(reply)!r:.200}")))


def claimer(pid: int) -> Claimer:
    """What the pool records of the process it hands a VM to."""
    return pid, process_start_time(pid)


def check_claimer(claims: Mapping[str, Claimer], name: str, pid: int) -> None:
    """PoolError unless ``pid`` is the live process ``name`` was handed to."""
    recorded = claims.get(name)
    if recorded is None:
        raise PoolError(f"{name} is not a claimed VM of this pool")
    if recorded[0] != pid or recorded[1] is None or recorded[1] != process_start_time(pid):
        raise PoolError(f"{name} is not pid {pid}'s to release")


def stop_qemu(name: str, timeout: float = STOP_TIMEOUT_S,
              pid_dir: Path = LIBVIRT_PID_DIR) -> bool:
    """End ``name``'s QEMU through a pidfd: SIGTERM, then SIGKILL. True once it has exited;
    False when it cannot be watched (no pid file: the caller destroys it through libvirt)."""
    qemu = QemuProcess.of(name, pid_dir)
    if qemu is None:
        return False
    try:
        for signum in (signal.SIGTERM, signal.SIGKILL):
            qemu.kill(signum)
            if qemu.wait_exit(timeout):
                return True
        raise PoolError(f"the QEMU of {name} survived SIGKILL for {timeout:g} s")
    finally:
        qemu.close()
