"""Host configuration: where hypervm keeps its files and which libvirt it talks to.

A pure function of a mapping (the environment by default), like docker-py's ``kwargs_from_env``.
Every path that QEMU reads (kernel, initrd, layer images) lives under ``state_dir``, which must be
traversable by the ``libvirt-qemu`` user: it is never under /root.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STATE_DIR = "/var/lib/hypervm"
DEFAULT_RUN_DIR = "/run/hypervm"
DEFAULT_LIBVIRT_URI = "qemu:///system"
#: pids.max of each container in a guest (a fork bomb stops there); 0: no limit
DEFAULT_CONTAINER_PIDS = 4096


@dataclass(frozen=True)
class HostConfig:
    state_dir: Path
    run_dir: Path
    libvirt_uri: str
    #: "kvm", "tcg" or "auto" (probe once per host boot)
    accel: str
    #: the shared image cache; default ``state_dir/images``
    image_dir_override: Path | None = None
    #: the warm pool's socket; default ``run_dir/pool.sock``
    pool_socket_override: Path | None = None
    #: take pre-booted VMs from the warm pool when one serves (``hypervm pool serve``)
    use_pool: bool = True
    #: TCG translation cache cap in MiB (DomainSpec.tb_cache_mib); None: QEMU's default
    tb_cache_mib: int | None = None
    #: guests hand the memory they free back to the host (DomainSpec.free_page_reporting)
    free_page_reporting: bool = True
    #: TCG with HyperQEMU: drop the boot's translations once the guest is READY (~30 MiB of
    #: RSS per VM; the first START translates its code again, ~0.1 s under TCG)
    tcg_flush: bool = True
    #: pids.max of each container (HYPERVM_CONTAINER_PIDS); None: unlimited
    container_pids: int | None = DEFAULT_CONTAINER_PIDS
    #: size of a container's writable layer (a tmpfs in guest RAM) when its task names no
    #: disk (HYPERVM_WRITABLE_LAYER_MIB); None: the guest kernel's default, half the VM's RAM
    writable_layer_mib: int | None = None

    @property
    def kernel_dir(self) -> Path:
        return self.state_dir / "kernel"

    @property
    def qemu_dir(self) -> Path:
        return self.state_dir / "qemu"

    @property
    def initrd_dir(self) -> Path:
        return self.state_dir / "initrd"

    @property
    def rootfs_dir(self) -> Path:
        return self.state_dir / "rootfs"

    @property
    def image_dir(self) -> Path:
        return self.image_dir_override or self.state_dir / "images"

    @property
    def vms_dir(self) -> Path:
        return self.run_dir / "vms"

    @property
    def pool_socket(self) -> Path:
        return self.pool_socket_override or self.run_dir / "pool.sock"


def env_choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...], *,
               what: str = "value", hint: str | None = None) -> str:
    """``env[name]`` (lower-cased; ``default`` when unset or empty), which must be one of
    ``choices``: else InvalidSpec naming the variable."""
    value = env.get(name, default).strip().lower() or default
    if value not in choices:
        from executor.errors import InvalidSpec

        raise InvalidSpec(name, f"unknown {what} {value!r}",
                          hint=hint or f"use {', '.join(choices[:-1])} or {choices[-1]}")
    return value


def env_count(env: Mapping[str, str], name: str, default: int | None, hint: str) -> int | None:
    """``env[name]`` as a whole number (``default`` when unset or empty); 0 means None (no
    limit); else InvalidSpec naming the variable."""
    value = env.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit():
        from executor.errors import InvalidSpec

        raise InvalidSpec(name, f"{value!r} is not a whole number", hint=hint)
    return int(value) or None


def config_from_env(env: Mapping[str, str] | None = None) -> HostConfig:
    env = os.environ if env is None else env
    accel = env_choice(env, "HYPERVM_ACCEL", "auto", ("auto", "kvm", "tcg"), what="accelerator")
    pool = env_choice(env, "HYPERVM_POOL", "auto", ("auto", "off"),
                      hint="use auto (take warm VMs when a pool serves) or off")
    tb_cache = env.get("HYPERVM_TCG_TB_CACHE_MIB", "")
    if tb_cache and not tb_cache.isdigit():
        from executor.errors import InvalidSpec

        raise InvalidSpec("HYPERVM_TCG_TB_CACHE_MIB", f"{tb_cache!r} is not a number of MiB",
                          hint="e.g. 8 (smaller VMs, slower guest code under TCG), or unset")
    reporting = env_choice(env, "HYPERVM_FREE_PAGE_REPORTING", "on", ("on", "off"),
                           hint="use on (guests return freed memory) or off (a little faster "
                                "boots and starts under TCG)")
    flush = env_choice(env, "HYPERVM_TCG_FLUSH", "on", ("on", "off"),
                       hint="use on (idle VMs give their boot's translations back) or off")
    return HostConfig(
        state_dir=Path(env.get("HYPERVM_STATE_DIR", DEFAULT_STATE_DIR)),
        run_dir=Path(env.get("HYPERVM_RUN_DIR", DEFAULT_RUN_DIR)),
        libvirt_uri=env.get("HYPERVM_LIBVIRT_URI", DEFAULT_LIBVIRT_URI),
        accel=accel,
        image_dir_override=Path(env["HYPERVM_IMAGE_DIR"]) if env.get("HYPERVM_IMAGE_DIR") else None,
        pool_socket_override=(Path(env["HYPERVM_POOL_SOCKET"]) if env.get("HYPERVM_POOL_SOCKET")
                              else None),
        use_pool=pool == "auto",
        tb_cache_mib=int(tb_cache) if tb_cache else None,
        free_page_reporting=reporting == "on",
        tcg_flush=flush == "on",
        container_pids=env_count(env, "HYPERVM_CONTAINER_PIDS", DEFAULT_CONTAINER_PIDS,
                                 "e.g. 4096 processes and threads per container, or 0: none"),
        writable_layer_mib=env_count(env, "HYPERVM_WRITABLE_LAYER_MIB", None,
                                     "e.g. 1024 MiB per container, or 0: half the VM's RAM"),
    )
