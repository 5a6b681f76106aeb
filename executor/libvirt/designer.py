"""The one designer of HyperVM domains: every domain we create, cold or for the warm pool, is
built here from the host's boot files and settings, so host policy (firmware, emulator,
translation cache, free page reporting, resource bounds, the NIC) lives in one place.

Pure: values in, a validated :class:`DomainSpec` out (``domain_xml`` turns it into XML).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from executor import network
from executor.guest.protocol import POOL_SHARE_TAG
from executor.libvirt.bounds import resource_bounds
from executor.libvirt.domain import MAX_PCI_DEVICES, DiskSpec, DomainSpec, ShareSpec
from hypervm.config import HostConfig
from hypervm.frozen import frozen_dataclass
from hypervm.netspec import NetworkSpec
from hypervm.podspec import Resources
from vmimage.boot import BootFiles

#: the pool VM's one shared directory in its run dir (its subdirectories are bound to the
#: pods' mount sources), shared under the tag POOL_SHARE_TAG
POOL_SHARE_DIR = "share"

#: QEMU's environment. GLib 2.74 (Debian 12) hands out GTree and GList nodes from its slice
#: allocator, which keeps freed slices in per-thread magazines instead of giving them back to
#: malloc: under TCG the translated-block tree of a boot (~100k nodes) stayed in the vCPU
#: thread's arena after the TCG flushes. With plain malloc the flush frees it and QEMU's
#: malloc_trim returns the pages: idle 128 MiB VM, private memory 28.1 -> 25.3 MiB, boot and
#: START unchanged (vmimage/qemu/README.md). GLib 2.76 and later always use malloc.
QEMU_ENV = {"G_SLICE": "always-malloc"}


@frozen_dataclass
class RunFiles:
    """Where a VM's host-side files live (its run directory)."""

    channel_socket: Path
    console_log: Path

    @classmethod
    def under(cls, run_dir: Path) -> RunFiles:
        return cls(channel_socket=run_dir / "channel.sock", console_log=run_dir / "console.log")


def _domain(name: str, boot: BootFiles, cfg: HostConfig, files: RunFiles, resources: Resources,
            net: NetworkSpec, metadata: Mapping[str, str], identity: tuple[int, int] | None,
            **devices: object) -> DomainSpec:
    cputune, memtune = resource_bounds(resources)
    return DomainSpec(
        name=name, accel=boot.accel, vcpus=resources.cpus, memory_mib=resources.memory_mib,
        kernel=boot.kernel.path, initrd=boot.initrd, cmdline=boot.cmdline, bios=boot.bios,
        emulator=boot.emulator, channel_socket=files.channel_socket,
        console_log=files.console_log, metadata=dict(metadata), cputune=cputune,
        memtune=memtune, qemu_args=network.qemu_args(net, network.mac_address(name)),
        tb_cache_mib=cfg.tb_cache_mib, free_page_reporting=cfg.free_page_reporting,
        memory_merge=cfg.ksm, qemu_env=dict(QEMU_ENV),
        identity=identity, **devices,  # type: ignore[arg-type]
    ).validate()


#: the root bus slot of a cold VM's first layer disk, the next ones after it: the slots
#: libvirt gave them itself when a pod has no shares (2 is the virtio-serial controller's),
#: so the guest's devices are where they were; a share takes the next free slot after them
FIRST_LAYER_SLOT = 3


def pin_layer_slots(disks: tuple[DiskSpec, ...]) -> tuple[DiskSpec, ...]:
    """``disks`` (a cold VM's layers, in serial order) each pinned to its slot from
    FIRST_LAYER_SLOT on: the START then tells init where each is (rootfs.pci), and init
    finds it through sysfs instead of asking every disk its serial (a GET_ID round trip)."""
    return tuple(dataclasses.replace(d, pci_slot=FIRST_LAYER_SLOT + i)
                 for i, d in enumerate(disks))


def layers_fit_pci(disks: int, shares: int) -> bool:
    """Whether a cold VM's ``disks`` layer disks and ``shares`` 9p shares all fit its PCI
    budget (DomainSpec's MAX_PCI_DEVICES, which keeps the last pinned slot below the NIC's)
    as pinned virtio-blk disks: the fast path (init finds each at its address, DEVELOPERS.md
    "layerslot"). Else the layers go on one virtio-scsi controller (:func:`scsi_layers`)."""
    return disks + shares <= MAX_PCI_DEVICES


def scsi_layers(disks: tuple[DiskSpec, ...]) -> tuple[DiskSpec, ...]:
    """``disks`` (a cold VM's layers, in serial order) as LUNs 0..N-1 of its one virtio-scsi
    controller (no PCI slot each): init finds them by their VPD serial (START without
    rootfs.pci). An image (or pod) of more layers than PCI slots: task manylayers."""
    return tuple(dataclasses.replace(d, pci_slot=None, scsi_unit=i)
                 for i, d in enumerate(disks))


def cold_domain(name: str, boot: BootFiles, cfg: HostConfig, files: RunFiles,
                resources: Resources, net: NetworkSpec, metadata: Mapping[str, str], *,
                disks: tuple[DiskSpec, ...] = (), shares: tuple[ShareSpec, ...] = (),
                identity: tuple[int, int] | None = None) -> DomainSpec:
    """A pod's own VM: its layers as disks (pinned: :func:`pin_layer_slots`; SCSI LUNs when
    they and the shares do not all fit the PCI budget: :func:`layers_fit_pci`), its mount
    sources as 9p shares, its ports; ``identity``: the uid:gid of its own its QEMU runs as
    (executor.libvirt.identity)."""
    if layers_fit_pci(len(disks), len(shares)):
        return _domain(name, boot, cfg, files, resources, net, metadata, identity,
                       disks=pin_layer_slots(disks), shares=shares)
    return _domain(name, boot, cfg, files, resources, net, metadata, identity,
                   disks=scsi_layers(disks), shares=shares, scsi_controller=True)


def pool_domain(name: str, boot: BootFiles, cfg: HostConfig, run_dir: Path, vcpus: int,
                memory_mib: int, metadata: Mapping[str, str], *,
                identity: tuple[int, int] | None = None,
                max_vcpus: int | None = None) -> DomainSpec:
    """An empty pool VM of one shape: no disks (layers are hot-added to its SCSI controller at
    claim time), one share whose subdirectories the claim binds, a NIC without published
    ports. Its memory bound is its shape's, set now (claims match the shape); a CPU limit is
    applied to the running VM when a pod asks for one. ``identity``: its own uid:gid from its
    boot on, before anyone knows whose pod it will run; a claim gives the pod's shares to it.
    ``max_vcpus``: vCPUs that can be hot-plugged up to (a snapshot's template, its clones)."""
    share = ShareSpec(source=run_dir / POOL_SHARE_DIR, tag=POOL_SHARE_TAG, multidevs="remap")
    return _domain(name, boot, cfg, RunFiles.under(run_dir),
                   Resources(cpus=vcpus, memory_mib=memory_mib), NetworkSpec(), metadata,
                   identity, shares=(share,), scsi_controller=True, max_vcpus=max_vcpus)


#: the QEMU arguments of a clone: wait for a migration stream (executor.libvirt.migration)
INCOMING_ARGS = ("-incoming", "defer")


#: vCPUs present in a snapshot's template (at most its capacity): cpu0 online, the others
#: offline when it is saved, so a clone of 2 vCPUs only onlines one (no ACPI hot-add);
#: beyond them, a clone's vCPUs are hot-plugged (a template of a capacity above
#: ``HostConfig.snapshot_vcpus`` has all present and online: :func:`present_vcpus`,
#: :func:`online_vcpus`). A clone's spare present vCPUs are capped on the host
#: (executor.libvirt.vcpucap)
TEMPLATE_PRESENT_VCPUS = 2
#: the template's init takes its spare CPUs offline before READY (init 0.7.0): booted and
#: offlined, their per-CPU threads and pools are in the snapshot. The guest kernel's
#: ``maxcpus=1`` (never up) was measured too: a 2-vCPU standby start ~25-80 ms slower (README)
SPARES_OFFLINE_ARG = "hypervm.spares=offline"


def present_vcpus(max_vcpus: int, shared: int) -> int:
    """The vCPUs present in a template (and its clones, before any hot-plug) of this capacity.
    ``shared``: the capacity pods of fewer vCPUs share (``HostConfig.snapshot_vcpus``,
    store.template_shape); a template above it serves pods of exactly its capacity, so all of
    them are present (booted, offline when saved, onlined by RESEED: no ACPI hot-add, ~60-100
    ms a vCPU under TCG; README "Fast starts for any shape")."""
    if max_vcpus > shared:
        return max_vcpus
    return min(TEMPLATE_PRESENT_VCPUS, max_vcpus)


def online_vcpus(max_vcpus: int, shared: int) -> int:
    """The vCPUs online in a template of this capacity when it is saved, so in its clones
    before RESEED and in a waiting standby (the others are capped there: executor.libvirt.vcpucap).
    A template of the shared capacity (``shared``) serves pods of fewer vCPUs: only cpu0, the
    spares offline (init's ``boot_offline_spares``). One above it serves pods of exactly its
    capacity, which are given all: they stay online (its clones' RESEED onlines none: ~35 ms a
    vCPU under TCG; DEVELOPERS.md "Pods of other shapes from the standby", task shape3)."""
    return max_vcpus if max_vcpus > shared else 1


def template_domain(name: str, boot: BootFiles, cfg: HostConfig, run_dir: Path,
                    max_vcpus: int, memory_mib: int, metadata: Mapping[str, str], *,
                    identity: tuple[int, int] | None = None) -> DomainSpec:
    """A snapshot's template (executor.snapshot): a pool VM of ``memory_mib`` with
    :func:`present_vcpus` present of ``max_vcpus``, :func:`online_vcpus` of them online (the
    clones of a shared one online the others they are given and get any further ones
    hot-plugged). The command line is in the snapshot's key: a template saved with its spares
    offline is never loaded where they are expected online, nor the other way round."""
    present = present_vcpus(max_vcpus, cfg.snapshot_vcpus)
    spec = pool_domain(name, boot, cfg, run_dir, present, memory_mib, metadata,
                       identity=identity, max_vcpus=max_vcpus)
    if online_vcpus(max_vcpus, cfg.snapshot_vcpus) >= spec.vcpus:
        return spec
    return dataclasses.replace(spec, cmdline=f"{spec.cmdline} {SPARES_OFFLINE_ARG}").validate()


def clone_domain(name: str, template: str, boot: BootFiles, cfg: HostConfig, run_dir: Path,
                 max_vcpus: int, memory_mib: int, metadata: Mapping[str, str], *,
                 identity: tuple[int, int] | None = None,
                 monitor_args: tuple[str, ...] = ()) -> DomainSpec:
    """A VM started from the snapshot of ``template`` (executor.snapshot): the template's
    domain (:func:`template_domain`, whose devices its saved state fills: :func:`present_vcpus`
    present of ``max_vcpus``) under its own name, UUID, run dir and uid, with the template's
    NIC (the MAC in its saved state), waiting for the state instead of booting.
    ``monitor_args``: a QMP monitor of ours its load goes through (executor.libvirt.qmp, not a
    guest device)."""
    spec = template_domain(name, boot, cfg, run_dir, max_vcpus, memory_mib, metadata,
                           identity=identity)
    nic = network.qemu_args(NetworkSpec(), network.mac_address(template))
    # anonymous RAM: loading the state then allocates only the pages it fills (DomainSpec)
    return dataclasses.replace(spec, qemu_args=(*nic, *INCOMING_ARGS, *monitor_args),
                               anonymous_memory=True).validate()
