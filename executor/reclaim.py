"""What a booted VM gives back to the host once it has no use for it (TCG, HyperQEMU): its
boot's translations and its guest RAM's pages of zeros. Only memory: a failure is logged, never
raised (a cold VM's settled flush, a pool VM's warm-up)."""

from __future__ import annotations

import logging

from hypervm.errors import HyperVMError

#: typing.TYPE_CHECKING without importing typing (~3 ms of a cold run's start)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger(__name__)

#: seconds after READY when a cold VM drops its translations (TCG, HyperQEMU): its boot's and
#: its first seconds' (the boot's tail, kernel work queued at boot, the first container's
#: set-up), which run once. Not at READY: the first START runs much of the boot's kernel code
#: again (fork, exec, mounts), and translating it anew cost it ~0.12 s of its ~0.2 s under TCG
#: (``hypervm run IMAGE -- true``, issue 17). An idle 128 MiB VM keeps ~1.8 MiB after it
SETTLED_FLUSH_S = 3.0


def flush_boot_translations(hypervisor: Any, name: str, *, settled: bool = False) -> None:
    """Give a READY VM's boot translations back to the host (TCG, HyperQEMU): they are most of
    an idle VM's translation buffer and the guest never runs that code again. A failure costs
    only memory, so it is logged, not raised; only at debug for a cold VM's flush once
    ``settled`` (:data:`SETTLED_FLUSH_S` after READY, from a timer: the VM may be ending)."""
    try:
        hypervisor.flush_tcg(name)
    except HyperVMError as e:
        log.log(logging.DEBUG if settled else logging.WARNING,
                "%s keeps its boot's TCG translations: %s", name, e)


def discard_zero_pages(hypervisor: Any, name: str) -> None:
    """Give a settled VM's guest RAM pages of zeros back to the host (HyperQEMU's
    ``discard-zero-pages``: ~1.6 MiB of an idle 128 MiB VM's 12.6 MiB of guest RAM; QEMU
    skips it while a device request is in flight). Only memory: a failure is logged at debug
    (from a timer: the VM may be ending)."""
    try:
        log.debug("%s: %s", name, hypervisor.discard_zero_pages(name))
    except HyperVMError as e:
        log.debug("%s keeps its guest RAM's zero pages: %s", name, e)
