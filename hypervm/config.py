"""Host configuration: where hypervm keeps its files and which libvirt it talks to.

A pure function of a mapping (the environment by default), like docker-py's ``kwargs_from_env``.
Every path that QEMU reads (kernel, initrd, layer images) lives under ``state_dir``, which must be
traversable by the ``libvirt-qemu`` user: it is never under /root.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_STATE_DIR = "/var/lib/hypervm"
DEFAULT_RUN_DIR = "/run/hypervm"
DEFAULT_LIBVIRT_URI = "qemu:///system"


@dataclass(frozen=True)
class ImageLimits:
    """What one image may cost the host (DEVELOPERS.md, "Image safety limits"): images may be
    hostile, so unpacking stops as soon as a cap is passed, and waits end."""

    #: uncompressed bytes of one layer's tar stream (HYPERVM_IMAGE_MAX_LAYER_BYTES)
    max_layer_bytes: int = 8 << 30
    #: uncompressed bytes of all of one image's layers (HYPERVM_IMAGE_MAX_BYTES)
    max_image_bytes: int = 16 << 30
    #: tar entries in one layer (HYPERVM_IMAGE_MAX_ENTRIES)
    max_entries: int = 500_000
    #: layers of one image (HYPERVM_IMAGE_MAX_LAYERS; Docker's own limit is 127)
    max_layers: int = 128
    #: unpacking stops when the cache's disk has less free space than this
    #: (HYPERVM_IMAGE_MIN_FREE_BYTES)
    min_free_bytes: int = 1 << 30
    #: seconds one ``skopeo copy`` may take (HYPERVM_IMAGE_PULL_TIMEOUT)
    pull_timeout_s: float = 1800.0
    #: seconds to wait for another pull's lock on the same image or blob, or for gc
    #: (HYPERVM_IMAGE_LOCK_TIMEOUT)
    lock_timeout_s: float = 1800.0


#: ImageLimits field → its variable; sizes accept a K/M/G/T suffix (powers of 1024)
IMAGE_LIMIT_VARS = {
    "max_layer_bytes": "HYPERVM_IMAGE_MAX_LAYER_BYTES",
    "max_image_bytes": "HYPERVM_IMAGE_MAX_BYTES",
    "max_entries": "HYPERVM_IMAGE_MAX_ENTRIES",
    "max_layers": "HYPERVM_IMAGE_MAX_LAYERS",
    "min_free_bytes": "HYPERVM_IMAGE_MIN_FREE_BYTES",
    "pull_timeout_s": "HYPERVM_IMAGE_PULL_TIMEOUT",
    "lock_timeout_s": "HYPERVM_IMAGE_LOCK_TIMEOUT",
}
_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _positive(env: Mapping[str, str], name: str, default: float, *, size: bool) -> float:
    text = env.get(name, "").strip().upper()
    if not text:
        return default
    scale = 1
    if size and text[-1:] in _SUFFIXES and text[-1:]:
        text, scale = text[:-1], _SUFFIXES[text[-1]]
    try:
        value = float(text) * scale
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        from hypervm.errors import InvalidSpec

        raise InvalidSpec(name, f"{env[name]!r} is not a positive number",
                          hint="e.g. 8G" if size else "e.g. 600")
    return value


def image_limits_from_env(env: Mapping[str, str]) -> ImageLimits:
    base = ImageLimits()
    values: dict[str, Any] = {}
    for attr, name in IMAGE_LIMIT_VARS.items():
        default = getattr(base, attr)
        value = _positive(env, name, default, size=attr.endswith("_bytes"))
        values[attr] = value if attr.endswith("_s") else int(value)
    return ImageLimits(**values)


@dataclass(frozen=True)
class MesosPolicy:
    """What a Mesos TaskInfo may ask of this host. Frameworks are tenants, not operators: by
    default they name only registry images and sandbox volumes."""

    #: accept docker-daemon:, docker-archive: and oci: images (HYPERVM_MESOS_LOCAL_IMAGE_SOURCES)
    local_image_sources: bool = False
    #: HOST_PATH volumes only below these absolute, normalised directories
    #: (HYPERVM_HOST_PATH_PREFIXES); none: every HOST_PATH volume is refused
    host_path_prefixes: tuple[str, ...] = ()


#: the default: registry images and sandbox volumes only
STRICT_MESOS_POLICY = MesosPolicy()


def mesos_policy_from_env(env: Mapping[str, str] | None = None) -> MesosPolicy:
    from hypervm.errors import InvalidSpec

    env = os.environ if env is None else env
    local = env_choice(env, "HYPERVM_MESOS_LOCAL_IMAGE_SOURCES", "off", ("on", "off"),
                       hint="use off (registry images only) or on (frameworks may also name "
                            "docker-daemon:, docker-archive: and oci: images on this host)")
    prefixes = []
    for entry in env.get("HYPERVM_HOST_PATH_PREFIXES", "").split(":"):
        entry = entry.strip()
        if not entry:
            continue
        if not entry.startswith("/") or ".." in entry.split("/") or "\x00" in entry:
            raise InvalidSpec("HYPERVM_HOST_PATH_PREFIXES", f"{entry!r} is not an absolute path",
                              hint="list absolute directories separated by ':', e.g. /srv/data")
        prefixes.append(posixpath.normpath(entry))
    return MesosPolicy(local_image_sources=local == "on", host_path_prefixes=tuple(prefixes))


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
    #: caps on what one image may unpack to, and how long its transfers may take
    image_limits: ImageLimits = ImageLimits()

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
        from hypervm.errors import InvalidSpec

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
        from hypervm.errors import InvalidSpec

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
        image_limits=image_limits_from_env(env),
    )
