"""The QEMU that runs HyperVMs: HyperQEMU (built here, lean, with ``tcg-flush``) or Debian's.

:func:`ensure_qemu` builds HyperQEMU (once per machine, ~3 min on 2 cores) and returns it;
:func:`find_qemu` only looks. Both honour ``HYPERVM_QEMU``: ``hyperqemu`` (default) or
``distro`` (Debian's ``/usr/bin/qemu-system-x86_64``, which libvirt picks by itself). When the
current HyperQEMU is not built (a new checkout, or Debian updated its QEMU and make qemu has
not run yet), :func:`find_qemu` falls back to Debian's with a warning: never to an older
HyperQEMU, which would lack the distro's newest fixes.
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

    QemuKind = Literal["hyperqemu", "distro"]

log = logging.getLogger(__name__)

KINDS = ("hyperqemu", "distro")
DISTRO_BINARY = Path("/usr/bin/qemu-system-x86_64")


@frozen_dataclass
class Qemu:
    """The emulator libvirt runs for our domains, and what it can do."""

    #: the emulator libvirt runs (the domain's <emulator>)
    path: Path
    kind: QemuKind
    #: what the binary can do beyond stock QEMU ("tcg-flush")
    features: tuple[str, ...] = ()
    version: str = ""
    key: str = ""

    @property
    def can_flush_tcg(self) -> bool:
        return "tcg-flush" in self.features

    @property
    def shares_template_memory(self) -> bool:
        """Whether snapshot clones of this QEMU can map their template's RAM from a file
        (HyperQEMU's ``ram-template``; executor.snapshot)."""
        return "ram-template" in self.features

    @property
    def emulator(self) -> Path | None:
        """The domain's <emulator>: None leaves libvirt's default (Debian's QEMU)."""
        return self.path if self.kind == "hyperqemu" else None

    def flushes_after_boot(self, cfg: HostConfig, accel: str) -> bool:
        """Whether a VM of this QEMU gives its boot's translations back once READY."""
        return cfg.tcg_flush and accel == "tcg" and self.can_flush_tcg

    def discards_zero_pages(self, cfg: HostConfig, accel: str) -> bool:
        """Whether a cold VM of this QEMU gives back its guest RAM's pages of zeros with its
        settled flush (HyperQEMU's ``discard-zero-pages``): guest RAM in a shared memfd, so
        not with HYPERVM_KSM's anonymous RAM, where the command does nothing."""
        return (self.flushes_after_boot(cfg, accel) and cfg.discard_zero_pages
                and not cfg.ksm and "zero-discard" in self.features)


DISTRO = Qemu(path=DISTRO_BINARY, kind="distro")


def requested_kind(env: Mapping[str, str] | None = None) -> QemuKind:
    env = os.environ if env is None else env
    kind = env_choice(env, "HYPERVM_QEMU", "hyperqemu", KINDS, what="QEMU kind")
    return kind  # type: ignore[return-value]


def ensure_qemu(cfg: HostConfig, env: Mapping[str, str] | None = None) -> Qemu:
    """HyperQEMU, built first if missing (minutes); Debian's QEMU with HYPERVM_QEMU=distro, or
    (with a warning, as the kernel falls back to the distro's) when the build cannot run: VMs
    still work, with ~45 MiB more host memory each under TCG."""
    from vmimage.qemu import hyperqemu  # a cycle: hyperqemu imports this package

    if requested_kind(env) != "hyperqemu":
        return DISTRO
    try:
        return hyperqemu_from_dir(hyperqemu.ensure_hyperqemu(cfg))
    except HostError as e:
        log.warning("cannot build HyperQEMU (%s); VMs run on %s", e, DISTRO_BINARY)
        return DISTRO


def find_qemu(cfg: HostConfig, env: Mapping[str, str] | None = None) -> Qemu:
    """The QEMU to run VMs with, never building: the current HyperQEMU, else Debian's."""
    from vmimage.qemu import hyperqemu  # a cycle: hyperqemu imports this package

    if requested_kind(env) != "hyperqemu":
        return DISTRO
    try:
        key = hyperqemu.current_key()
    except HostError as e:
        log.warning("no HyperQEMU (%s); using %s", e, DISTRO_BINARY)
        return DISTRO
    directory = hyperqemu.qemu_dir(cfg, key)
    if hyperqemu.read_meta(directory) is None:
        log.warning("HyperQEMU %s is not built; using %s (run make qemu)", key, DISTRO_BINARY)
        return DISTRO
    return hyperqemu_from_dir(directory)


def hyperqemu_from_dir(directory: Path) -> Qemu:
    """The HyperQEMU built in ``directory`` (``<state>/qemu/<key>``), its features from its
    ``meta.json``; the bench also measures one not (yet) current this way."""
    from vmimage.qemu import hyperqemu  # a cycle: hyperqemu imports this package

    meta = hyperqemu.read_meta(directory) or {}
    features = meta.get("features", [])
    return Qemu(path=directory / "bin" / hyperqemu.BINARY, kind="hyperqemu",
                features=tuple(str(f) for f in features) if isinstance(features, list) else (),
                version=str(meta.get("version", "")), key=directory.name)
