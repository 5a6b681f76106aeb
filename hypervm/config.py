"""Host configuration: where hypervm keeps its files and which libvirt it talks to.

A pure function of a mapping (the environment by default), like docker-py's ``kwargs_from_env``.
Every path that QEMU reads (kernel, initrd, layer images) lives under ``state_dir``, which must be
traversable by every user (each VM's QEMU runs as a uid of its own): it is never under /root.
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
from collections.abc import Mapping
from pathlib import Path

from hypervm.errors import InvalidSpec
from hypervm.frozen import frozen_dataclass

#: typing.TYPE_CHECKING without importing typing (~3 ms of a cold run's start)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_STATE_DIR = "/var/lib/hypervm"
DEFAULT_RUN_DIR = "/run/hypervm"
DEFAULT_LIBVIRT_URI = "qemu:///system"
#: uids (and gids, the same numbers) QEMU processes run as, one per VM: above every
#: distribution's system and user ranges and below systemd's dynamic and container ranges
DEFAULT_VM_UID_RANGE = (200000, 265535)
#: how long a registry's "yes, this tenant may read this image" is remembered
DEFAULT_IMAGE_AUTH_TTL_S = 300.0
#: a snapshot's template is remade once it is this old or has had this many clones (its guest
#: kernel's layout, KASLR, and boot-time secrets are every clone's: executor.snapshot.store)
DEFAULT_SNAPSHOT_MAX_AGE_S = 3600.0
DEFAULT_SNAPSHOT_MAX_CLONES = 100
#: vCPUs a snapshot's template can hot-plug, at most (a pod's own bound: podspec.MAX_CPUS)
MAX_SNAPSHOT_VCPUS = 64
#: pids.max of each container in a guest (a fork bomb stops there); 0: no limit
DEFAULT_CONTAINER_PIDS = 4096
#: a plausible TSC for HYPERVM_GUEST_TSC_KHZ (100 MHz .. 10 GHz): outside, a typo (MHz for kHz)
MIN_TSC_KHZ, MAX_TSC_KHZ = 100_000, 10_000_000


@frozen_dataclass
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

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@frozen_dataclass
class HostService:
    """A service of the host guests may use (HYPERVM_NET_ALLOW_HOST): from a guest,
    ``10.0.2.2:port`` reaches it when ``address`` is a loopback one."""

    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    protocol: str = "tcp"

    def describe(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{host}:{self.port}/{self.protocol}"


@frozen_dataclass
class NetPolicy:
    """What a guest's traffic may reach (README, "Networking"; executor.netpolicy enforces it).

    Always refused: the host itself (loopback and every address of the host) and link-local
    addresses; ``deny``: more ranges the operator refuses (HYPERVM_NET_DENY); ``allow_host``:
    host services guests may use all the same (HYPERVM_NET_ALLOW_HOST). ``enforce`` False
    (HYPERVM_NET_POLICY=off): guests reach everything the host reaches."""

    deny: tuple[IPNetwork, ...] = ()
    allow_host: tuple[HostService, ...] = ()
    enforce: bool = True


def net_deny(text: str) -> tuple[IPNetwork, ...]:
    """``CIDR,CIDR`` (HYPERVM_NET_DENY): IPv4 or IPv6 ranges, a bare address is one host."""
    ranges = []
    for item in filter(None, (w.strip() for w in text.split(","))):
        try:
            ranges.append(ipaddress.ip_network(item, strict=False))
        except ValueError as e:
            raise InvalidSpec("HYPERVM_NET_DENY", f"{item!r} is not an address range",
                              hint="use CIDR ranges separated by commas, e.g. "
                                   "10.0.0.0/8,192.168.0.0/16") from e
    return tuple(ranges)


def net_allow_host(text: str) -> tuple[HostService, ...]:
    """``ADDRESS:PORT[/tcp|/udp],...`` (HYPERVM_NET_ALLOW_HOST), IPv6 as ``[ADDRESS]:PORT``."""
    services = []
    hint = "use ADDRESS:PORT[/udp] separated by commas, e.g. 127.0.0.1:5000,127.0.0.1:53/udp"
    for item in filter(None, (w.strip() for w in text.split(","))):
        where, _, protocol = item.partition("/")
        host, sep, port = where.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not (sep and port.isdigit() and 1 <= int(port) <= 65535):
            raise InvalidSpec("HYPERVM_NET_ALLOW_HOST", f"{item!r} has no port 1..65535",
                              hint=hint)
        try:
            address = ipaddress.ip_address(host)
        except ValueError as e:
            raise InvalidSpec("HYPERVM_NET_ALLOW_HOST", f"{item!r} does not start with an IP "
                              "address", hint=hint) from e
        if protocol.lower() not in ("", "tcp", "udp"):
            raise InvalidSpec("HYPERVM_NET_ALLOW_HOST", f"{item!r}: unknown protocol "
                              f"{protocol!r}", hint=hint)
        services.append(HostService(address, int(port), protocol.lower() or "tcp"))
    return tuple(services)


def net_policy_from_env(env: Mapping[str, str]) -> NetPolicy:
    enforce = env_choice(env, "HYPERVM_NET_POLICY", "enforce", ("enforce", "off"),
                         hint="use enforce (guests never reach the host, link-local or denied "
                              "ranges) or off (guests reach whatever the host reaches)")
    return NetPolicy(deny=net_deny(env.get("HYPERVM_NET_DENY", "")),
                     allow_host=net_allow_host(env.get("HYPERVM_NET_ALLOW_HOST", "")),
                     enforce=enforce == "enforce")


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


@frozen_dataclass
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


@frozen_dataclass
class HostConfig:
    """The host's settings (``HYPERVM_*`` and the configuration file), parsed once."""

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
    #: when no pool VM serves a pod, start it from the snapshot of a template of its shape
    #: (executor.snapshot) instead of booting it cold
    use_snapshot: bool = False
    #: seconds after which a snapshot is remade (None: never) and clones it serves before it
    #: is (None: no bound): clones of one template share its kernel's layout (KASLR)
    snapshot_max_age_s: float | None = DEFAULT_SNAPSHOT_MAX_AGE_S
    snapshot_max_clones: int | None = DEFAULT_SNAPSHOT_MAX_CLONES
    #: vCPUs a snapshot's template boots with as capacity (1 present; executor.snapshot): pods
    #: of up to this many share its snapshot, their vCPUs hot-plugged; a larger pod's template
    #: has its own count. Default: the host's CPUs
    snapshot_vcpus: int = 1
    #: TCG translation cache cap in MiB (DomainSpec.tb_cache_mib); None: QEMU's default
    tb_cache_mib: int | None = None
    #: guests hand the memory they free back to the host (DomainSpec.free_page_reporting)
    free_page_reporting: bool = True
    #: TCG with HyperQEMU: drop the boot's translations once the guest is READY (~30 MiB of
    #: RSS per VM; the first START translates its code again, ~0.1 s under TCG)
    tcg_flush: bool = True
    #: with the settled flush, HyperQEMU punches the guest RAM pages that hold only zeros out
    #: of the VM's memfd (~1.6 MiB of an idle 128 MiB VM; vmimage/qemu/zero-discard.patch)
    discard_zero_pages: bool = True
    #: guest RAM may be merged with identical pages of other VMs by the host's KSM (when the
    #: operator runs it): anonymous guest RAM the kernel may merge, not a shared memfd. Off by
    #: default: merged pages let one tenant time another's memory (DomainSpec.memory_merge)
    ksm: bool = False
    #: caps on what one image may unpack to, and how long its transfers may take
    image_limits: ImageLimits = ImageLimits()
    #: first and last uid (= gid) given to VMs: each VM's QEMU runs as its own
    #: (executor.libvirt.identity)
    vm_uid_range: tuple[int, int] = DEFAULT_VM_UID_RANGE
    #: seconds a registry authorization of a tenant's cached image is remembered (0: ask each time)
    image_auth_ttl_s: float = DEFAULT_IMAGE_AUTH_TTL_S
    #: Mesos tasks without credentials of their own pull with the host's Docker credentials
    task_host_credentials: bool = False
    #: pids.max of each container (HYPERVM_CONTAINER_PIDS); None: unlimited
    container_pids: int | None = DEFAULT_CONTAINER_PIDS
    #: size of a container's writable layer (a tmpfs in guest RAM) when its task names no
    #: disk (HYPERVM_WRITABLE_LAYER_MIB); None: the guest kernel's default, half the VM's RAM
    writable_layer_mib: int | None = None
    #: what guests' traffic may reach (HYPERVM_NET_POLICY, HYPERVM_NET_DENY,
    #: HYPERVM_NET_ALLOW_HOST)
    net_policy: NetPolicy = NetPolicy()
    #: the TSC frequency TCG guests are given (``tsc_early_khz``): "auto" (the host's, when its
    #: kernel states it exactly), "off" or a number of kHz (vmimage.guestclock)
    guest_tsc_khz: str = "auto"

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
        raise InvalidSpec(name, f"unknown {what} {value!r}",
                          hint=hint or f"use {', '.join(choices[:-1])} or {choices[-1]}")
    return value


def config_from_env(env: Mapping[str, str] | None = None) -> HostConfig:
    env = os.environ if env is None else env
    accel = env_choice(env, "HYPERVM_ACCEL", "auto", ("auto", "kvm", "tcg"), what="accelerator")
    pool = env_choice(env, "HYPERVM_POOL", "auto", ("auto", "off"),
                      hint="use auto (take warm VMs when a pool serves) or off")
    snapshot = env_choice(env, "HYPERVM_SNAPSHOT", "off", ("on", "off"),
                          hint="use on (start VMs from a snapshot of their shape when no pool "
                               "VM serves) or off (boot them cold)")
    tb_cache = env.get("HYPERVM_TCG_TB_CACHE_MIB", "")
    if tb_cache and not tb_cache.isdigit():
        raise InvalidSpec("HYPERVM_TCG_TB_CACHE_MIB", f"{tb_cache!r} is not a number of MiB",
                          hint="e.g. 8 (smaller VMs, slower guest code under TCG), or unset")
    reporting = env_choice(env, "HYPERVM_FREE_PAGE_REPORTING", "on", ("on", "off"),
                           hint="use on (guests return freed memory) or off (a little faster "
                                "boots and starts under TCG)")
    flush = env_choice(env, "HYPERVM_TCG_FLUSH", "on", ("on", "off"),
                       hint="use on (idle VMs give their boot's translations back) or off")
    zeros = env_choice(env, "HYPERVM_DISCARD_ZERO_PAGES", "on", ("on", "off"),
                       hint="use on (idle VMs give back guest pages of zeros) or off")
    ksm = env_choice(env, "HYPERVM_KSM", "off", ("on", "off"),
                     hint="use off (no VM shares a page with another) or on (the host's KSM "
                          "may merge identical guest pages; see README)")
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
        use_snapshot=snapshot == "on",
        snapshot_max_age_s=seconds(env, "HYPERVM_SNAPSHOT_MAX_AGE",
                                   DEFAULT_SNAPSHOT_MAX_AGE_S) or None,
        snapshot_max_clones=env_count(env, "HYPERVM_SNAPSHOT_MAX_CLONES",
                                      DEFAULT_SNAPSHOT_MAX_CLONES,
                                      "e.g. 100 clones per template, or 0: no bound"),
        snapshot_vcpus=snapshot_vcpus(env),
        tb_cache_mib=int(tb_cache) if tb_cache else None,
        free_page_reporting=reporting == "on",
        tcg_flush=flush == "on",
        discard_zero_pages=zeros == "on",
        ksm=ksm == "on",
        image_limits=image_limits_from_env(env),
        vm_uid_range=uid_range(env.get("HYPERVM_VM_UID_RANGE", "")),
        image_auth_ttl_s=seconds(env, "HYPERVM_IMAGE_AUTH_TTL", DEFAULT_IMAGE_AUTH_TTL_S),
        task_host_credentials=host_creds == "on",
        container_pids=env_count(env, "HYPERVM_CONTAINER_PIDS", DEFAULT_CONTAINER_PIDS,
                                 "e.g. 4096 processes and threads per container, or 0: none"),
        writable_layer_mib=env_count(env, "HYPERVM_WRITABLE_LAYER_MIB", None,
                                     "e.g. 1024 MiB per container, or 0: half the VM's RAM"),
        net_policy=net_policy_from_env(env),
        guest_tsc_khz=guest_tsc_setting(env.get("HYPERVM_GUEST_TSC_KHZ", "")),
    )


def guest_tsc_setting(value: str) -> str:
    """HYPERVM_GUEST_TSC_KHZ: ``auto`` (also when empty), ``off`` or a number of kHz in
    MIN_TSC_KHZ..MAX_TSC_KHZ (as text); InvalidSpec otherwise."""
    value = value.strip().lower() or "auto"
    if value in ("auto", "off"):
        return value
    if not value.isdigit() or not MIN_TSC_KHZ <= int(value) <= MAX_TSC_KHZ:
        raise InvalidSpec("HYPERVM_GUEST_TSC_KHZ",
                          f"{value!r} is not auto, off or a TSC frequency in kHz",
                          hint=f"e.g. 2596120 (kHz, {MIN_TSC_KHZ}..{MAX_TSC_KHZ}), auto or off")
    return str(int(value))


def snapshot_vcpus(env: Mapping[str, str]) -> int:
    """HYPERVM_SNAPSHOT_VCPUS: 1..MAX_SNAPSHOT_VCPUS; default the host's CPU count."""
    value = env.get("HYPERVM_SNAPSHOT_VCPUS", "").strip()
    if not value:
        return max(1, min(os.cpu_count() or 1, MAX_SNAPSHOT_VCPUS))
    if not value.isdigit() or not 1 <= int(value) <= MAX_SNAPSHOT_VCPUS:
        raise InvalidSpec("HYPERVM_SNAPSHOT_VCPUS", f"{value!r} is not 1..{MAX_SNAPSHOT_VCPUS}",
                          hint="e.g. 4: pods of 1 to 4 vCPUs share one snapshot")
    return int(value)


def env_count(env: Mapping[str, str], name: str, default: int | None, hint: str) -> int | None:
    """``env[name]`` as a whole number (``default`` when unset or empty); 0 means None (no
    limit); else InvalidSpec naming the variable."""
    value = env.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit():
        raise InvalidSpec(name, f"{value!r} is not a whole number", hint=hint)
    return int(value) or None


def uid_range(text: str) -> tuple[int, int]:
    """``FIRST-LAST`` (HYPERVM_VM_UID_RANGE); the default range when empty."""
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
        raise InvalidSpec(name, f"{text!r} is not a number of seconds", hint=f"e.g. {default:g}")
    return value
