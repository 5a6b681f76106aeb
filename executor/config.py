"""Host configuration: where hypervm keeps its files and which libvirt it talks to.

A pure function of a mapping (the environment by default), like docker-py's ``kwargs_from_env``.
Every path that QEMU reads (kernel, initrd, layer images) lives under ``state_dir``, which must be
traversable by every user (each VM's QEMU runs as a uid of its own): it is never under /root.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STATE_DIR = "/var/lib/hypervm"
DEFAULT_RUN_DIR = "/run/hypervm"
DEFAULT_LIBVIRT_URI = "qemu:///system"
#: uids (and gids, the same numbers) QEMU processes run as, one per VM: above every
#: distribution's system and user ranges and below systemd's dynamic and container ranges
DEFAULT_VM_UID_RANGE = (200000, 265535)
#: how long a registry's "yes, this tenant may read this image" is remembered
DEFAULT_IMAGE_AUTH_TTL_S = 300.0


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
    #: first and last uid (= gid) given to VMs: each VM's QEMU runs as its own (executor.identity)
    vm_uid_range: tuple[int, int] = DEFAULT_VM_UID_RANGE
    #: seconds a registry authorization of a tenant's cached image is remembered (0: ask each time)
    image_auth_ttl_s: float = DEFAULT_IMAGE_AUTH_TTL_S
    #: Mesos tasks without credentials of their own pull with the host's Docker credentials
    task_host_credentials: bool = False

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
    host_creds = env_choice(env, "HYPERVM_TASK_HOST_CREDENTIALS", "off", ("on", "off"),
                            hint="use off (tasks pull with their own credentials only) or on "
                                 "(tasks may use the host's Docker credentials)")
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
        vm_uid_range=uid_range(env.get("HYPERVM_VM_UID_RANGE", "")),
        image_auth_ttl_s=seconds(env, "HYPERVM_IMAGE_AUTH_TTL", DEFAULT_IMAGE_AUTH_TTL_S),
        task_host_credentials=host_creds == "on",
    )


def uid_range(text: str) -> tuple[int, int]:
    """``FIRST-LAST`` (HYPERVM_VM_UID_RANGE); the default range when empty."""
    from executor.errors import InvalidSpec

    if not text.strip():
        return DEFAULT_VM_UID_RANGE
    first, sep, last = text.strip().partition("-")
    if not (sep and first.isdigit() and last.isdigit()):
        raise InvalidSpec("HYPERVM_VM_UID_RANGE", f"{text!r} is not FIRST-LAST",
                          hint="e.g. 200000-265535")
    low, high = int(first), int(last)
    if not 1000 <= low <= high < 2**31 - 1:
        raise InvalidSpec("HYPERVM_VM_UID_RANGE", f"{text!r} is out of range",
                          hint="use uids from 1000 to 2147483646, FIRST <= LAST, that no user "
                               "of the host has, e.g. 200000-265535")
    return low, high


def seconds(env: Mapping[str, str], name: str, default: float) -> float:
    """``env[name]`` as a number of seconds >= 0 (``default`` when unset or empty)."""
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e9:
        from executor.errors import InvalidSpec

        raise InvalidSpec(name, f"{text!r} is not a number of seconds", hint=f"e.g. {default:g}")
    return value
