"""libvirt domain XML for a :class:`~executor.libvirt.domain.DomainSpec`, and back.

Like virt-manager's ``virtinst``, the XML is declared as small data classes named after the
elements; like nova's ``config.py``, this module only converts objects to XML (and the few fields
``hypervm gc`` needs back from XML): every choice about *what* to run was made in the spec, every
libvirt default we override is in :data:`DEFAULTS` below. Pure: no libvirt import, no I/O.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path

from executor.libvirt.domain import (
    CHANNEL_NAME,
    DOMAIN_PREFIX,
    MAX_SCSI_UNIT,
    CpuTune,
    DiskSpec,
    DomainSpec,
    MemTune,
)
from hypervm.errors import InvalidSpec
from hypervm.frozen import frozen_dataclass

#: our <metadata> namespace: ``hypervm gc`` recognises our domains by it (and by the name prefix)
METADATA_NS = "https://hypervm.dev/xmlns/domain/1"
METADATA_PREFIX = "hypervm"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
#: ports of the virtio-serial controller: 0 (kept for a console) and our one channel. QEMU's
#: default is 31: the guest then sets up 64 virtqueues, each with its zeroed ring and
#: bookkeeping, and QEMU 64 VirtQueues: ~1 MiB of every idle VM's private memory (issue 18)
VIRTIO_SERIAL_PORTS = 2


@frozen_dataclass
class Defaults:
    """Every libvirt/QEMU default this builder overrides, in one place."""

    arch: str = "x86_64"
    #: libvirt rejects ``microvm``; ``pc`` + qboot + a PVH vmlinux boots as fast
    machine: str = "pc"
    #: a guest power-off, reboot or crash ends the VM: the executor then reports the task
    lifecycle_action: str = "destroy"
    #: kvm: the host CPU as is; tcg: every feature TCG emulates (images built for x86-64-v2 run)
    cpu_mode: Mapping[str, str] = field(
        default_factory=lambda: {"kvm": "host-passthrough", "tcg": "maximum"}
    )
    #: ACPI lets the guest power the VM off (init's POWEROFF); its PCI IRQ routing is slow
    #: under TCG, so the guest boots with pci=noacpi (executor/vm.py)
    acpi: bool = True
    #: guest RAM in a memfd, mapped shared: QEMU then gets no transparent huge pages for it
    #: (with THP an idle 128 MiB guest kept 28 MiB resident for 21.5 MiB touched; measured in
    #: bench/README.md), and KSM never merges it. A spec asking for KSM gets QEMU's anonymous
    #: RAM instead, the only kind KSM merges (HyperQEMU gives it no huge pages under TCG). Not
    #: a private memfd: every page the guest writes would then be allocated twice, in the memfd
    #: (invisible in QEMU's RSS) and as QEMU's private copy
    memory_backing: str | None = "memfd"


DEFAULTS = Defaults()

ET.register_namespace(METADATA_PREFIX, METADATA_NS)
ET.register_namespace("qemu", QEMU_NS)


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


# --- elements -------------------------------------------------------------------------------


@frozen_dataclass
class Metadata:
    """``<metadata><hypervm:vm><hypervm:entry key=…>value</hypervm:entry>…``"""

    entries: Mapping[str, str]

    def build(self, parent: ET.Element) -> None:
        vm = _sub(_sub(parent, "metadata"), f"{{{METADATA_NS}}}vm")
        for key in sorted(self.entries):
            _sub(vm, f"{{{METADATA_NS}}}entry", self.entries[key], key=key)


@frozen_dataclass
class OS:
    """The ``<os>`` element: direct kernel boot (kernel, initrd, command line, firmware)."""

    kernel: Path
    initrd: Path
    cmdline: str
    loader: Path | None
    arch: str
    machine: str
    #: give the kernel to QEMU directly (:meth:`qemu_args`), not through libvirt, which would
    #: chown it (and the initrd) to one VM's own user (:class:`SecLabel`)
    direct_boot: bool = False

    def build(self, parent: ET.Element) -> None:
        os_el = _sub(parent, "os")
        _sub(os_el, "type", "hvm", arch=self.arch, machine=self.machine)
        if self.loader is not None:
            _sub(os_el, "loader", str(self.loader), type="rom", readonly="yes")
        if not self.direct_boot:
            _sub(os_el, "kernel", str(self.kernel))
            _sub(os_el, "initrd", str(self.initrd))
            _sub(os_el, "cmdline", self.cmdline)

    def qemu_args(self) -> tuple[str, ...]:
        if not self.direct_boot:
            return ()
        return ("-kernel", str(self.kernel), "-initrd", str(self.initrd), "-append", self.cmdline)


@frozen_dataclass
class Disk:
    """A virtio-blk disk, or (``scsi_unit`` set) a LUN of the VM's virtio-scsi controller, which
    is how a booted pool VM gets its layers. Read-only disks get ``relabel='no'``: layer images
    are shared between VMs, libvirt must not chown them (they are world-readable instead). A
    writable disk belongs to one VM: libvirt gives it to QEMU's user for the VM's lifetime."""

    source: Path
    target: str
    serial: str
    readonly: bool
    format: str
    scsi_unit: int | None = None
    #: a virtio-blk disk's slot on the root bus (DiskSpec.pci_slot); None: libvirt's choice
    pci_slot: int | None = None

    def build(self, parent: ET.Element) -> None:
        disk = _sub(parent, "disk", type="file", device="disk")
        _sub(disk, "driver", name="qemu", type=self.format)
        source = _sub(disk, "source", file=str(self.source))
        if self.readonly:
            _sub(source, "seclabel", model="dac", relabel="no")
        _sub(disk, "target", dev=self.target, bus="virtio" if self.scsi_unit is None else "scsi")
        _sub(disk, "serial", self.serial)
        if self.readonly:
            _sub(disk, "readonly")
        if self.scsi_unit is not None:
            _sub(disk, "address", type="drive", controller="0", bus="0", target="0",
                 unit=str(self.scsi_unit))
        elif self.pci_slot is not None:
            _sub(disk, "address", type="pci", domain="0x0000", bus="0x00",
                 slot=f"0x{self.pci_slot:02x}", function="0x0")


#: 9p security model of every share. ``mapped`` (QEMU's mapped-xattr): what the guest makes is
#: a plain file or directory on the host, owned by QEMU's user with mode 0600/0700; the guest's
#: owners, modes (set-id bits), symlinks, FIFOs and devices live in ``user.virtfs.*`` xattrs,
#: so a guest-made symlink is never a host symlink nor its setuid file a host setuid file.
#: Files the host made (no xattrs) show their host owner and mode. (``squash``, before issue
#: 15: guest symlinks and set-id bits were real on the host; ``passthrough`` needs QEMU as
#: root.) bench/share_io.py measures it against squash.
SHARE_ACCESSMODE = "mapped"


@frozen_dataclass
class Filesystem:
    """virtio-9p with accessmode SHARE_ACCESSMODE: QEMU (not root: libvirt runs it as its own
    user) creates what the guest asks for as plain files of that user, so the guest can create
    files where QEMU's user may write."""

    source: Path
    tag: str
    readonly: bool
    multidevs: str | None = None

    def build(self, parent: ET.Element) -> None:
        fs = _sub(parent, "filesystem", type="mount", accessmode=SHARE_ACCESSMODE)
        if self.multidevs is not None:
            fs.set("multidevs", self.multidevs)
        _sub(fs, "source", dir=str(self.source))
        _sub(fs, "target", dir=self.tag)
        if self.readonly:
            _sub(fs, "readonly")


@frozen_dataclass
class Serial:
    """The guest's ttyS0 written to a file; libvirt routes it through virtlogd (rotated at 2 MiB,
    root-owned, readable after the VM is gone)."""

    log: Path

    def build(self, parent: ET.Element) -> None:
        serial = _sub(parent, "serial", type="file")
        _sub(serial, "source", path=str(self.log), append="off")
        _sub(serial, "target", port="0")


@frozen_dataclass
class Channel:
    """A virtio-serial port backed by a unix socket QEMU listens on; the host connects."""

    socket: Path
    name: str

    def build(self, parent: ET.Element) -> None:
        channel = _sub(parent, "channel", type="unix")
        _sub(channel, "source", mode="bind", path=str(self.socket))
        _sub(channel, "target", type="virtio", name=self.name)


@frozen_dataclass
class SecLabel:
    """libvirt's DAC model with a static label: QEMU runs as this VM's own uid:gid instead of
    the user every VM shares (qemu.conf ``user``). ``relabel='yes'``: libvirt gives QEMU its
    private files (master key, monitor socket, its /dev); with 'no' QEMU cannot read its own
    master key. What every VM shares is kept from libvirt's chown: read-only disks carry
    ``relabel='no'`` and the kernel and initrd go to QEMU directly (:attr:`OS.direct_boot`;
    libvirt would chown them to this VM and refuse the next VM with "already in use"): they
    are world-readable. What this QEMU writes we give it (executor.libvirt.identity): its run
    dir and the shared dirs of its pod."""

    uid: int
    gid: int

    def build(self, parent: ET.Element) -> None:
        label = _sub(parent, "seclabel", type="static", model="dac", relabel="yes")
        _sub(label, "label", f"+{self.uid}:+{self.gid}")


@frozen_dataclass
class Domain:
    """The whole ``<domain>`` element, built from a DomainSpec."""

    type: str
    name: str
    vcpus: int
    memory_mib: int
    os: OS
    cpu_mode: str
    acpi: bool
    lifecycle_action: str
    tb_cache_mib: int | None
    memory_backing: str | None
    metadata: Metadata
    cputune: CpuTune
    memtune: MemTune
    disks: tuple[Disk, ...]
    filesystems: tuple[Filesystem, ...]
    serial: Serial
    channel: Channel
    qemu_args: tuple[str, ...]
    scsi_controller: bool = False
    #: the QEMU process's environment (<qemu:env>, after the <qemu:arg>s)
    qemu_env: tuple[tuple[str, str], ...] = ()
    free_page_reporting: bool = True
    emulator: Path | None = None
    seclabel: SecLabel | None = None
    #: vCPUs hot-pluggable up to (DomainSpec.max_vcpus); None: ``vcpus``
    max_vcpus: int | None = None
    #: KSM may merge guest RAM: anonymous memory QEMU marks mergeable (libvirt's default);
    #: else the memory backing, and <nosharepages/> (QEMU's mem-merge=off) says so again,
    #: whatever the host runs
    memory_merge: bool = False

    def build(self) -> ET.Element:
        dom = ET.Element("domain", type=self.type)
        _sub(dom, "name", self.name)
        self.metadata.build(dom)
        _sub(dom, "memory", str(self.memory_mib), unit="MiB")
        if self.max_vcpus is None:
            _sub(dom, "vcpu", str(self.vcpus), placement="static")
        else:  # the others hot-pluggable (libvirt's default for vCPUs not enabled)
            _sub(dom, "vcpu", str(self.max_vcpus), placement="static", current=str(self.vcpus))
        self._build_tuning(dom)
        if not self.memory_merge:
            backing = _sub(dom, "memoryBacking")
            _sub(backing, "nosharepages")
            if self.memory_backing is not None:
                _sub(backing, "source", type=self.memory_backing)
                _sub(backing, "access", mode="shared")
        self.os.build(dom)
        features = _sub(dom, "features")
        if self.acpi:
            _sub(features, "acpi")
        if self.tb_cache_mib is not None:
            _sub(_sub(features, "tcg"), "tb-cache", str(self.tb_cache_mib), unit="MiB")
        cpu = _sub(dom, "cpu", mode=self.cpu_mode, check="none")
        if self.max_vcpus is not None:  # hot-plugged vCPUs are cores of the first's socket:
            # the guest's TSC sync check of a new vCPU then runs 2 ms, not a new socket's 20
            _sub(cpu, "topology", sockets="1", dies="1", cores=str(self.max_vcpus), threads="1")
        _sub(dom, "clock", offset="utc")
        for event in ("on_poweroff", "on_reboot", "on_crash"):
            _sub(dom, event, self.lifecycle_action)
        pm = _sub(dom, "pm")
        _sub(pm, "suspend-to-mem", enabled="no")
        _sub(pm, "suspend-to-disk", enabled="no")
        self._build_devices(_sub(dom, "devices"))
        if self.seclabel is not None:
            self.seclabel.build(dom)
        qemu_args = (*self.os.qemu_args(), *self.qemu_args)
        if qemu_args or self.qemu_env:
            cmdline = _sub(dom, f"{{{QEMU_NS}}}commandline")
            for arg in qemu_args:
                _sub(cmdline, f"{{{QEMU_NS}}}arg", value=arg)
            for key, value in self.qemu_env:
                _sub(cmdline, f"{{{QEMU_NS}}}env", name=key, value=value)
        return dom

    def _build_tuning(self, dom: ET.Element) -> None:
        if not self.cputune.empty:
            cputune = _sub(dom, "cputune")
            for tag, value in (
                ("shares", self.cputune.shares),
                ("period", self.cputune.period_us),
                ("quota", self.cputune.quota_us),
            ):
                if value is not None:
                    _sub(cputune, tag, str(value))
        if not self.memtune.empty:
            memtune = _sub(dom, "memtune")
            for tag, value in (
                ("hard_limit", self.memtune.hard_limit_mib),
                ("soft_limit", self.memtune.soft_limit_mib),
            ):
                if value is not None:
                    _sub(memtune, tag, str(value), unit="MiB")

    def _build_devices(self, devices: ET.Element) -> None:
        if self.emulator is not None:
            _sub(devices, "emulator", str(self.emulator))
        # no USB, graphics, video, sound or NIC: libvirt adds only what `pc` implies
        _sub(devices, "controller", type="usb", model="none")
        # no ACPI hotplug slots on the root bus (nothing hot-adds PCI devices: the pool's disks
        # are SCSI LUNs): the guest kept an ACPI device (~2 KiB each) per empty slot
        root = _sub(devices, "controller", type="pci", index="0", model="pci-root")
        _sub(root, "target", hotplug="off")
        _sub(devices, "controller", type="virtio-serial", index="0", ports=str(VIRTIO_SERIAL_PORTS))
        if self.scsi_controller:
            _sub(devices, "controller", type="scsi", index="0", model="virtio-scsi")
        for disk in self.disks:
            disk.build(devices)
        for fs in self.filesystems:
            fs.build(devices)
        self.serial.build(devices)
        self.channel.build(devices)
        if self.free_page_reporting:
            # free page reporting only (no inflation, no stats): the guest hands pages it frees
            # back to QEMU, which punches them out of the memfd (init sets the reporting order)
            _sub(devices, "memballoon", model="virtio", freePageReporting="on")
        else:
            _sub(devices, "memballoon", model="none")
        # without it the guest's RNG takes seconds to initialise under TCG
        rng = _sub(devices, "rng", model="virtio")
        _sub(rng, "backend", "/dev/urandom", model="random")


# --- spec -> XML -----------------------------------------------------------------------------


def virtio_disk_name(index: int, prefix: str = "vd") -> str:
    """vda … vdz, vdaa … (the kernel's naming; libvirt wants a unique target per disk);
    ``prefix="sd"`` for SCSI disks."""
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("a") + rem) + letters
    return prefix + letters


def hotplug_disk_xml(disk: DiskSpec, unit: int) -> str:
    """The <disk> element that hot-adds ``disk`` to a booted VM as LUN ``unit`` of its
    virtio-scsi controller (DomainSpec.scsi_controller); the guest finds it by serial."""
    disk.validate(f"disks[{unit}]")
    if not 0 <= unit <= MAX_SCSI_UNIT:
        raise InvalidSpec("unit", f"{unit} is out of range", hint=f"use 0..{MAX_SCSI_UNIT}")
    holder = ET.Element("devices")
    Disk(source=disk.path, target=virtio_disk_name(unit, "sd"), serial=disk.serial,
         readonly=disk.readonly, format=disk.format, scsi_unit=unit).build(holder)
    return ET.tostring(holder[0], encoding="unicode")


def domain_from_spec(spec: DomainSpec, defaults: Defaults = DEFAULTS) -> Domain:
    spec.validate()
    return Domain(
        type="kvm" if spec.accel == "kvm" else "qemu",
        name=spec.name,
        vcpus=spec.vcpus,
        max_vcpus=spec.max_vcpus,
        memory_mib=spec.memory_mib,
        os=OS(
            kernel=spec.kernel,
            initrd=spec.initrd,
            cmdline=spec.cmdline,
            loader=spec.bios,
            arch=defaults.arch,
            machine=defaults.machine,
            direct_boot=spec.identity is not None,
        ),
        cpu_mode=defaults.cpu_mode[spec.accel],
        acpi=defaults.acpi,
        lifecycle_action=defaults.lifecycle_action,
        tb_cache_mib=spec.tb_cache_mib if spec.accel == "tcg" else None,
        free_page_reporting=spec.free_page_reporting,
        memory_merge=spec.memory_merge,
        emulator=spec.emulator,
        seclabel=SecLabel(*spec.identity) if spec.identity is not None else None,
        memory_backing=None if spec.anonymous_memory else defaults.memory_backing,
        metadata=Metadata(dict(spec.metadata)),
        cputune=spec.cputune,
        memtune=spec.memtune,
        disks=tuple(
            Disk(
                source=d.path,
                target=virtio_disk_name(i) if d.scsi_unit is None
                else virtio_disk_name(d.scsi_unit, "sd"),
                serial=d.serial,
                readonly=d.readonly,
                format=d.format,
                scsi_unit=d.scsi_unit,
                pci_slot=d.pci_slot,
            )
            for i, d in enumerate(spec.disks)
        ),
        filesystems=tuple(
            Filesystem(source=s.source, tag=s.tag, readonly=s.readonly, multidevs=s.multidevs)
            for s in spec.shares
        ),
        serial=Serial(spec.console_log),
        channel=Channel(spec.channel_socket, CHANNEL_NAME),
        qemu_args=spec.qemu_args,
        qemu_env=tuple(sorted(spec.qemu_env.items())),
        scsi_controller=spec.scsi_controller,
    )


def domain_xml(spec: DomainSpec, defaults: Defaults = DEFAULTS) -> str:
    """The libvirt domain XML for ``spec`` (validated first: raises InvalidSpec)."""
    root = domain_from_spec(spec, defaults).build()
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"


def metadata_element_xml(entries: Mapping[str, str]) -> str:
    """The <vm> element of our metadata, as virDomainSetMetadata wants it: in our namespace,
    but as the default namespace (libvirt binds our prefix to the root itself and refuses an
    element that already declares it); the same entries :class:`Metadata` writes."""
    vm = ET.Element("vm", xmlns=METADATA_NS)
    for key in sorted(entries):
        _sub(vm, "entry", entries[key], key=key)
    return ET.tostring(vm, encoding="unicode")


# --- XML -> the facts gc needs ---------------------------------------------------------------


@frozen_dataclass
class DomainFacts:
    """What ``hypervm gc`` and the image cache need to know about a running domain."""

    name: str
    ours: bool
    metadata: Mapping[str, str]
    disk_paths: tuple[Path, ...]
    share_paths: tuple[Path, ...]
    #: (uid, gid) its QEMU runs as when it has a static DAC label of its own (SecLabel)
    identity: tuple[int, int] | None = None


def parse_domain_facts(xml: str) -> DomainFacts:
    """Read a domain's XML (as libvirt returns it) back into :class:`DomainFacts`.

    A domain is ours when it carries our metadata element and its name has our prefix.
    """
    root = ET.fromstring(xml)
    name = root.findtext("name", default="")
    vm = root.find(f"metadata/{{{METADATA_NS}}}vm")
    metadata: dict[str, str] = {}
    if vm is not None:
        for entry in vm.findall(f"{{{METADATA_NS}}}entry"):
            key = entry.get("key")
            if key:
                metadata[key] = entry.text or ""
    disks = tuple(
        Path(src.get("file", "")) for src in root.findall("devices/disk/source") if src.get("file")
    )
    shares = tuple(
        Path(src.get("dir", ""))
        for src in root.findall("devices/filesystem/source")
        if src.get("dir")
    )
    return DomainFacts(
        name=name,
        ours=vm is not None and name.startswith(DOMAIN_PREFIX),
        metadata=metadata,
        disk_paths=disks,
        share_paths=shares,
        identity=_static_dac_label(root),
    )


def _static_dac_label(root: ET.Element) -> tuple[int, int] | None:
    for label in root.findall("seclabel"):
        if label.get("model") == "dac" and label.get("type") == "static":
            return _ids(label.findtext("label", default=""))
    return None


def _ids(text: str) -> tuple[int, int] | None:
    """``+UID:+GID`` (libvirt's DAC label) as numbers; None when it names users by name."""
    user, _, group = text.strip().partition(":")
    try:
        return int(user.lstrip("+")), int(group.lstrip("+"))
    except ValueError:
        return None


def parse_dac_label(capabilities_xml: str, domain_type: str = "qemu") -> tuple[int, int] | None:
    """The uid and gid libvirt runs QEMU as, from the host capabilities' DAC ``baselabel``
    (``+64055:+64055`` on Debian); None when libvirt has no DAC model (e.g. a session daemon)."""
    root = ET.fromstring(capabilities_xml)
    for secmodel in root.findall("host/secmodel"):
        if secmodel.findtext("model") != "dac":
            continue
        for label in secmodel.findall("baselabel"):
            if label.get("type") == domain_type and label.text:
                return _ids(label.text)
    return None
