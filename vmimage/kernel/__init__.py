"""The guest kernel: the HyperKernel we build, or the host distro's kernel as a fallback.

:func:`ensure_kernel` builds (once per machine) and returns the kernel; :func:`find_kernel`
only looks and raises :class:`HostError` ("run make kernel") when there is none. Both honour
``HYPERVM_KERNEL``: ``hyperkernel`` (default: build it, fall back to the distro kernel when the
build cannot run) or ``distro`` (use the distro kernel and its modules).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from hypervm.config import HostConfig, env_choice
from hypervm.errors import HostError
from hypervm.frozen import frozen_dataclass

#: typing.TYPE_CHECKING without importing typing (~3 ms of a cold run's start)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal

    KernelKind = Literal["hyperkernel", "distro"]

log = logging.getLogger(__name__)

KINDS = ("hyperkernel", "distro")


@frozen_dataclass
class Kernel:
    """A guest kernel this host can boot, and what its initrd must carry."""

    #: the image QEMU boots (an uncompressed vmlinux for the HyperKernel, PVH entry)
    path: Path
    #: what ``uname -r`` says in the guest
    version: str
    kind: KernelKind
    #: .ko files the initrd must carry and load, in load order (empty for the HyperKernel)
    modules: tuple[Path, ...] = ()
    #: appended to the guest kernel command line
    cmdline_extra: str = ""
    #: the cache key of the artefact (part of the initrd's key)
    key: str = ""


def requested_kind(env: Mapping[str, str] | None = None) -> KernelKind:
    env = os.environ if env is None else env
    kind = env_choice(env, "HYPERVM_KERNEL", "hyperkernel", KINDS, what="kernel kind")
    return kind  # type: ignore[return-value]


def ensure_kernel(cfg: HostConfig, env: Mapping[str, str] | None = None) -> Kernel:
    """The guest kernel, built or prepared first if needed (minutes the first time)."""
    from vmimage.kernel import distro, hyperkernel  # a cycle: they import this package

    if requested_kind(env) != "hyperkernel":
        return distro.ensure_distro_kernel(cfg)
    try:
        return _hyperkernel_from(hyperkernel.ensure_hyperkernel(cfg))
    except HostError as build_error:
        log.warning("cannot build the HyperKernel (%s); falling back to the distro kernel",
                    build_error)
        try:
            return distro.ensure_distro_kernel(cfg)
        except HostError as e:
            raise HostError(f"no guest kernel: the HyperKernel build failed ({build_error}) and "
                            f"the distro kernel fallback failed too ({e})",
                            hint="install linux-source-6.1 and run make kernel") from e


def find_kernel(cfg: HostConfig, env: Mapping[str, str] | None = None) -> Kernel:
    """The guest kernel already on this machine; never builds.

    When the current fragment's HyperKernel is not built yet, the newest older one is used
    (with a warning), so a fragment change does not break running hosts until make kernel.
    """
    from vmimage.kernel import hyperkernel  # a cycle: it imports this package

    if requested_kind(env) == "hyperkernel":
        try:
            directory: Path | None = hyperkernel.kernel_dir(cfg, hyperkernel.current_key())
        except HostError:
            directory = None
        if directory is not None and hyperkernel.read_meta(directory):
            return _hyperkernel_from(directory)
        stale = hyperkernel.newest_built(cfg)
        if stale is not None:  # the fragment changed and make kernel has not run (yet)
            log.warning("HyperKernel %s is not built; using the older %s (run make kernel)",
                        directory.name if directory else "?", stale.name)
            return _hyperkernel_from(stale)
    # a cycle (it imports this package); only here: a cold boot of the HyperKernel pays none
    # of its imports (gzip, lzma, platform: ~8 ms of every hypervm run)
    from vmimage.kernel import distro

    found = distro.find_distro_kernel(cfg)
    if found is None:
        raise HostError(f"no guest kernel in {cfg.kernel_dir}", hint="run make kernel")
    return found


def _hyperkernel_from(directory: Path) -> Kernel:
    from vmimage.kernel import hyperkernel  # a cycle: it imports this package

    meta = hyperkernel.read_meta(directory) or {}
    return Kernel(path=directory / "vmlinux", version=str(meta.get("version", "")),
                  kind="hyperkernel", key=directory.name)


def kernel_from_dir(directory: Path) -> Kernel:
    """The HyperKernel in ``directory`` (``vmlinux`` + ``meta.json``), wherever it is: the
    bench boots a kernel built from a changed fragment before ``make kernel`` publishes it."""
    if not (directory / "vmlinux").is_file():
        raise HostError(f"no vmlinux in {directory}", hint="name a HyperKernel's directory")
    return _hyperkernel_from(directory)
