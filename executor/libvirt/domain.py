"""DomainSpec: the pure description of one HyperVM as libvirt should run it.

Policy (which kernel, how much memory, which disks) is decided by the designer
(:mod:`executor.libvirt.designer`); this module only holds the values and checks them against
the limits of libvirt, QEMU and Linux. :mod:`executor.libvirt.domain_xml` turns a validated spec
into domain XML; :mod:`executor.libvirt.hypervisor` hands that XML to libvirt. Nothing here
touches the host.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path

from hypervm.errors import InvalidSpec
from hypervm.frozen import frozen_dataclass

#: one set of limits for pods and domains: a domain no pod could have is refused too
from hypervm.podspec import MAX_CPUS as MAX_VCPUS
from hypervm.podspec import MAX_MEMORY_MIB, MIN_MEMORY_MIB
from vmimage.accel import DEFAULT_BIOS

#: every domain we create is named so; ``hypervm gc`` never touches any other domain
DOMAIN_PREFIX = "hypervm-"
#: the virtio-serial port the guest init looks for (init/PROTOCOL.md, "Transport")
CHANNEL_NAME = "org.hypervm.channel.0"
ACCELS = ("kvm", "tcg")

#: virtio-blk serials are at most 20 bytes (VIRTIO_BLK_ID_BYTES)
MAX_SERIAL_LEN = 20
#: virtio-9p mount tags are at most 31 bytes in QEMU
MAX_TAG_LEN = 31
#: x86 COMMAND_LINE_SIZE, including the terminating NUL
MAX_CMDLINE_LEN = 2047
#: sun_path is 108 bytes including the terminating NUL
MAX_SOCKET_PATH_LEN = 107
#: the ``pc`` machine has 32 PCI slots; the bridges, IDE and virtio-serial take a few
MAX_PCI_DEVICES = 24
#: virtio-scsi: QEMU accepts LUNs 0..16383 per target (VIRTIO_SCSI_MAX_LUN), libvirt the same
#: drive ``unit`` numbers on a virtio-scsi controller
MAX_SCSI_UNIT = 16383
#: the slots of the ``pc`` machine's root bus a device can be pinned to (0: the host bridge,
#: 1: the PIIX3's functions)
PCI_SLOTS = range(2, 32)
MAX_META_KEY_LEN = 256
MAX_TB_CACHE_MIB = 4096
#: well-known metadata keys: the process that owns the VM (its pid, and its start time in clock
#: ticks since boot, field 22 of /proc/<pid>/stat, so that a recycled pid is not mistaken for it)
META_OWNER_PID = "owner-pid"
META_OWNER_START = "owner-start"

#: names, tags and serials are matched whole (fullmatch: ``^…$`` with ``match`` would let a
#: trailing newline into the domain XML's <name>, <serial>, <target dir=…> or <qemu:env>)
_NAME_RE = re.compile(r"hypervm-[A-Za-z0-9][A-Za-z0-9_.-]{0,79}")
#: what libvirt accepts as a <qemu:env> name
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_SERIAL_RE = re.compile(r"[A-Za-z0-9_.-]{1,20}")


def valid_domain_name(name: str) -> bool:
    """Whether ``name`` is a HyperVM domain's name (what :meth:`DomainSpec.validate` accepts):
    also the check of a VM named by a request (a pool's release, a standby's lease)."""
    return _NAME_RE.fullmatch(name) is not None
_TAG_RE = re.compile(r"[A-Za-z0-9_.-]{1,31}")
_DISK_FORMATS = ("raw", "qcow2")
# characters XML 1.0 cannot carry, and \r, which XML parsers turn into \n: a str.translate
# table that drops them (their regular expression took ~0.4 ms to compile at every start)
_XML_BAD = dict.fromkeys([*range(0x00, 0x09), *range(0x0B, 0x20), 0xFFFE, 0xFFFF])


@frozen_dataclass
class DiskSpec:
    """A virtio-blk disk; the guest finds it by ``serial`` (/sys/block/*/serial), or at its
    ``pci_slot`` of the root bus when pinned there and the START says so (rootfs.pci). With
    ``scsi_unit``: a LUN of the domain's virtio-scsi controller instead, found by its VPD
    serial (no PCI device of its own)."""

    path: Path
    serial: str
    readonly: bool = True
    format: str = "raw"
    #: the root bus slot the disk is pinned to; None: libvirt picks one
    pci_slot: int | None = None
    #: the LUN of the domain's virtio-scsi controller the disk is (DomainSpec.scsi_controller);
    #: None: a virtio-blk disk
    scsi_unit: int | None = None

    def validate(self, where: str) -> None:
        _absolute(f"{where}.path", self.path)
        if self.pci_slot is not None and self.pci_slot not in PCI_SLOTS:
            raise InvalidSpec(f"{where}.pci_slot", f"{self.pci_slot!r} is not a free PCI slot",
                              hint=f"use {PCI_SLOTS.start}..{PCI_SLOTS.stop - 1}")
        if self.scsi_unit is not None:
            if self.pci_slot is not None:
                raise InvalidSpec(f"{where}.scsi_unit", "a SCSI LUN has no PCI slot of its own",
                                  hint="give a disk a pci_slot or a scsi_unit, not both")
            if not 0 <= self.scsi_unit <= MAX_SCSI_UNIT:
                raise InvalidSpec(f"{where}.scsi_unit", f"{self.scsi_unit!r} is out of range",
                                  hint=f"use 0..{MAX_SCSI_UNIT}")
        if not _SERIAL_RE.fullmatch(self.serial):
            raise InvalidSpec(
                f"{where}.serial",
                f"{self.serial!r} is not a valid disk serial",
                hint=f"use 1..{MAX_SERIAL_LEN} characters of [A-Za-z0-9_.-]",
            )
        if self.format not in _DISK_FORMATS:
            raise InvalidSpec(
                f"{where}.format",
                f"unknown disk format {self.format!r}",
                hint="use " + " or ".join(_DISK_FORMATS),
            )


@frozen_dataclass
class ShareSpec:
    """A host directory exported over virtio-9p (accessmode mapped: see libvirt_xml) under
    mount ``tag``."""

    source: Path
    tag: str
    readonly: bool = False
    #: QEMU's handling of other filesystems mounted below ``source``: "remap" gives their
    #: files unique inode numbers in the guest (a pool VM's share holds bind mounts)
    multidevs: str | None = None

    def validate(self, where: str) -> None:
        _absolute(f"{where}.source", self.source)
        if self.multidevs not in (None, "remap", "forbid", "warn"):
            raise InvalidSpec(f"{where}.multidevs", f"unknown value {self.multidevs!r}",
                              hint="use remap, forbid or warn")
        if not _TAG_RE.fullmatch(self.tag):
            raise InvalidSpec(
                f"{where}.tag",
                f"{self.tag!r} is not a valid 9p mount tag",
                hint=f"use 1..{MAX_TAG_LEN} characters of [A-Za-z0-9_.-]",
            )


@frozen_dataclass
class CpuTune:
    """cgroup CPU bounds: ``shares`` is the relative weight, ``quota_us``/``period_us`` the cap."""

    shares: int | None = None
    period_us: int | None = None
    quota_us: int | None = None

    def validate(self) -> None:
        if self.shares is not None and not 2 <= self.shares <= 262144:
            raise InvalidSpec(
                "cputune.shares", f"{self.shares} is out of range", hint="use 2..262144"
            )
        if self.period_us is not None and not 1000 <= self.period_us <= 1_000_000:
            raise InvalidSpec(
                "cputune.period_us", f"{self.period_us} is out of range", hint="use 1000..1000000"
            )
        if self.quota_us is not None and not 1000 <= self.quota_us <= 17_592_186_044_415:
            raise InvalidSpec(
                "cputune.quota_us", f"{self.quota_us} is out of range", hint="use at least 1000"
            )

    @property
    def empty(self) -> bool:
        return self.shares is None and self.period_us is None and self.quota_us is None


@frozen_dataclass
class MemTune:
    """cgroup memory bounds for the whole QEMU process (guest RAM plus QEMU's own overhead)."""

    hard_limit_mib: int | None = None
    soft_limit_mib: int | None = None

    def validate(self, memory_mib: int) -> None:
        for name, value in (
            ("hard_limit_mib", self.hard_limit_mib),
            ("soft_limit_mib", self.soft_limit_mib),
        ):
            if value is not None and value < memory_mib:
                raise InvalidSpec(
                    f"memtune.{name}",
                    f"{value} MiB is below the guest memory ({memory_mib} MiB)",
                    hint="leave room for QEMU's overhead, e.g. memory + 128 MiB",
                )

    @property
    def empty(self) -> bool:
        return self.hard_limit_mib is None and self.soft_limit_mib is None


@frozen_dataclass
class DomainSpec:
    """Everything a domain is made of (pure values; ``domain_xml`` turns it into XML)."""

    name: str
    accel: str
    vcpus: int
    memory_mib: int
    kernel: Path
    initrd: Path
    cmdline: str
    channel_socket: Path
    console_log: Path
    disks: tuple[DiskSpec, ...] = ()
    shares: tuple[ShareSpec, ...] = ()
    #: recorded in the domain's <metadata> (owner pid and start time, pod name, labels)
    metadata: Mapping[str, str] = field(default_factory=dict)
    #: firmware loaded as a ROM; None lets QEMU use SeaBIOS (slower)
    bios: Path | None = DEFAULT_BIOS
    cputune: CpuTune = field(default_factory=CpuTune)
    memtune: MemTune = field(default_factory=MemTune)
    #: extra QEMU arguments (<qemu:commandline>), e.g. for networking; unvalidated by libvirt
    qemu_args: tuple[str, ...] = ()
    #: environment variables of the QEMU process (<qemu:env>), e.g. allocator settings
    qemu_env: Mapping[str, str] = field(default_factory=dict)
    #: a virtio-scsi controller, so that layer disks can be hot-added to the booted VM (pool)
    scsi_controller: bool = False
    #: TCG only: cap QEMU's translation cache (default 1 GiB, ~28 MiB of it resident in an idle
    #: VM). 8 MiB saves ~14 MiB of RSS per VM but guest code is translated again and again: a
    #: warm start took 2-4x longer (bench/README.md). None: QEMU's default
    tb_cache_mib: int | None = None
    #: a virtio-balloon for free page reporting only: memory the guest frees goes back to the
    #: host (idle 128 MiB VM: ~7 MiB less RSS; much more after a workload ran). Costs one PCI
    #: device: 0-0.3 s of boot and ~15 ms of a first START under TCG (bench/README.md)
    free_page_reporting: bool = True
    #: guest RAM in QEMU's anonymous memory, marked mergeable, so the host's KSM (if it runs)
    #: may share identical pages between VMs (the kernel's text, zeroed pages); False: a
    #: shared memfd and <nosharepages/>, never merged (merged pages are a timing side channel
    #: between tenants). HostConfig.ksm
    memory_merge: bool = False
    #: guest RAM in QEMU's anonymous memory, still never merged (<nosharepages/>): a clone's
    #: (executor.snapshot). Loading a snapshot reads every page of guest RAM to skip the zero
    #: ones; a read allocates a page of a memfd (every clone had all its RAM resident after
    #: the load, until free page reporting caught up seconds later; ~60 ms of the load went to
    #: allocating it) but maps the zero page of anonymous memory. Under TCG, HyperQEMU gives
    #: anonymous guest RAM no huge pages (vmimage/qemu)
    anonymous_memory: bool = False
    #: the QEMU binary libvirt runs (vmimage.qemu: HyperQEMU); None: libvirt's default, Debian's
    emulator: Path | None = None
    #: (uid, gid) this VM's QEMU runs as, its own (executor.libvirt.identity); None: libvirt's user
    identity: tuple[int, int] | None = None
    #: vCPUs that can be hot-plugged up to (``vcpus`` present at the start; a snapshot's
    #: template and its clones, executor.snapshot); None: ``vcpus``, none hot-pluggable
    max_vcpus: int | None = None

    def validate(self) -> DomainSpec:
        """Raise :class:`InvalidSpec` naming the first wrong field; return ``self`` when valid."""
        if not valid_domain_name(self.name):
            raise InvalidSpec(
                "name",
                f"{self.name!r} is not a valid HyperVM domain name",
                hint=f"start with {DOMAIN_PREFIX!r}, then up to 80 characters of [A-Za-z0-9_.-]",
            )
        if self.accel not in ACCELS:
            raise InvalidSpec("accel", f"unknown accelerator {self.accel!r}", hint="use kvm or tcg")
        if not 1 <= self.vcpus <= MAX_VCPUS:
            raise InvalidSpec("vcpus", f"{self.vcpus} is out of range", hint=f"use 1..{MAX_VCPUS}")
        if self.max_vcpus is not None and not self.vcpus <= self.max_vcpus <= MAX_VCPUS:
            raise InvalidSpec("max_vcpus", f"{self.max_vcpus} is out of range",
                              hint=f"use {self.vcpus}..{MAX_VCPUS}")
        if not MIN_MEMORY_MIB <= self.memory_mib <= MAX_MEMORY_MIB:
            raise InvalidSpec(
                "memory_mib",
                f"{self.memory_mib} MiB is out of range",
                hint=f"use {MIN_MEMORY_MIB}..{MAX_MEMORY_MIB} MiB",
            )
        for name in ("kernel", "initrd", "console_log", "channel_socket"):
            _absolute(name, getattr(self, name))
        if self.bios is not None:
            _absolute("bios", self.bios)
        if self.emulator is not None:
            _absolute("emulator", self.emulator)
        if len(str(self.channel_socket).encode()) > MAX_SOCKET_PATH_LEN:
            raise InvalidSpec(
                "channel_socket",
                f"{self.channel_socket} is too long for a unix "
                f"socket ({MAX_SOCKET_PATH_LEN} bytes at most)",
                hint="use a shorter run dir or VM name",
            )
        self._validate_cmdline()
        self._validate_devices()
        self._validate_metadata()
        if self.identity is not None and not all(
                isinstance(i, int) and 0 < i < 2**31 - 1 for i in self.identity):
            raise InvalidSpec("identity", f"{self.identity!r} is not a (uid, gid) pair",
                              hint="give the VM a uid and gid from HYPERVM_VM_UID_RANGE")
        if self.tb_cache_mib is not None and not 1 <= self.tb_cache_mib <= MAX_TB_CACHE_MIB:
            raise InvalidSpec("tb_cache_mib", f"{self.tb_cache_mib} MiB is out of range",
                              hint=f"use 1..{MAX_TB_CACHE_MIB}")
        self.cputune.validate()
        self.memtune.validate(self.memory_mib)
        for i, arg in enumerate(self.qemu_args):
            _xml_safe(f"qemu_args[{i}]", arg)
        for key, value in self.qemu_env.items():
            if not _ENV_NAME_RE.fullmatch(key):
                raise InvalidSpec(f"qemu_env[{key!r}]", "is not an environment variable name",
                                  hint="use letters, digits and _, not starting with a digit")
            _xml_safe(f"qemu_env[{key!r}]", value)
        return self

    def _validate_cmdline(self) -> None:
        if len(self.cmdline.encode()) > MAX_CMDLINE_LEN:
            raise InvalidSpec(
                "cmdline",
                f"is {len(self.cmdline.encode())} bytes long",
                hint=f"keep the kernel command line under {MAX_CMDLINE_LEN} bytes",
            )
        if "\n" in self.cmdline or "\r" in self.cmdline:
            raise InvalidSpec("cmdline", "contains a line break", hint="separate with spaces")
        _xml_safe("cmdline", self.cmdline)

    def _validate_devices(self) -> None:
        for i, disk in enumerate(self.disks):
            disk.validate(f"disks[{i}]")
        for i, share in enumerate(self.shares):
            share.validate(f"shares[{i}]")
        _unique("disks", [d.serial for d in self.disks], "serial")
        _unique("disks", [str(d.pci_slot) for d in self.disks if d.pci_slot is not None],
                "pci_slot")
        luns = [str(d.scsi_unit) for d in self.disks if d.scsi_unit is not None]
        _unique("disks", luns, "scsi_unit")
        _unique("shares", [s.tag for s in self.shares], "tag")
        if luns and not self.scsi_controller:
            raise InvalidSpec("disks", "SCSI LUNs without a SCSI controller",
                              hint="set scsi_controller")
        # a LUN is no PCI device: the controller is the one
        blk = len(self.disks) - len(luns)
        if blk + len(self.shares) + int(self.scsi_controller) > MAX_PCI_DEVICES:
            raise InvalidSpec(
                "disks",
                f"{blk} disks and {len(self.shares)} shares "
                f"exceed {MAX_PCI_DEVICES} PCI devices",
                hint="merge image layers or use fewer volumes",
            )

    def _validate_metadata(self) -> None:
        check_metadata(self.metadata)


def check_metadata(metadata: Mapping[str, str]) -> None:
    """Metadata entries libvirt can carry: string keys of 1..MAX_META_KEY_LEN characters and
    string values, neither with characters XML cannot hold; InvalidSpec names the entry."""
    for key, value in metadata.items():
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_META_KEY_LEN:
            raise InvalidSpec(
                f"metadata[{key!r}]",
                "is not a valid metadata key",
                hint=f"use 1..{MAX_META_KEY_LEN} characters",
            )
        _xml_safe(f"metadata[{key!r}]", key)
        if not isinstance(value, str):
            raise InvalidSpec(f"metadata[{key!r}]", f"value {value!r} is not a string")
        _xml_safe(f"metadata[{key!r}]", value)


def _absolute(where: str, path: Path) -> None:
    if not Path(path).is_absolute():
        raise InvalidSpec(where, f"{str(path)!r} is not an absolute path")
    _xml_safe(where, str(path))


def _xml_safe(where: str, text: str) -> None:
    if len(text.translate(_XML_BAD)) != len(text):
        bad = next(c for c in text if ord(c) in _XML_BAD)
        raise InvalidSpec(
            where,
            f"contains the control character {bad!r}",
            hint="remove control characters",
        )


def _unique(where: str, values: list[str], what: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise InvalidSpec(
                where, f"{what} {value!r} is used twice", hint=f"make each {what} unique"
            )
        seen.add(value)
