"""The cold run's own domain against the raw boot's, device by device: ``python -m
bench.bootxml [--rounds 8] [--variants raw,run,...] [--out FILE]``.

Each variant is a raw boot (bench.rawboot: createXML straight through libvirt, then the guest
until init's READY, nothing of ours in between, the domain destroyed at once) of one domain
XML. ``run`` is the domain a cold ``hypervm run IMAGE -- true`` creates (designer.cold_domain
of the default shape with the bench image's layer disk, its user-mode NIC, a uid of its own
from executor.libvirt.identity, its memory soft limit and QEMU environment); ``raw`` is
bench.rawboot's; every other variant is ``run`` with one difference taken away or changed
(:data:`VARIANTS`), so each difference's cost is its variant against ``run``; ``run nic:PROPS``
and ``run blk:PROPS`` are ``run`` with QEMU properties given to its NIC (appended to its
``-device``) or its layer disk (libvirt's ``<qemu:override>`` of ``virtio-disk0``), e.g.
``run blk:queue-size=64``. The variants of a round go in rotating order; samples are
``<variant> createXML`` and ``<variant> READY`` (createXML's return to READY), in seconds, and
at READY ``QEMU CPU`` (clock ticks), ``QEMU threads CPU`` and ``vCPU`` (schedstat, ns).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import libvirt

from bench import images, results, vcpu
from bench.coldphase import paired_p50, rotated
from bench.createfast import end_domain
from bench.rawboot import READY_TIMEOUT, _wait_ready, raw_spec
from bench.vmenv import GUEST_MIB, VMEnv, bench_name
from executor.libvirt import identity
from executor.libvirt.designer import RunFiles, cold_domain
from executor.libvirt.domain import DiskSpec, DomainSpec, MemTune
from executor.libvirt.domain_xml import QEMU_NS, domain_xml
from executor.libvirt.hypervisor import Hypervisor
from executor.libvirt.owners import owner_metadata
from hypervm.netspec import NetworkSpec
from hypervm.podspec import Resources

log = logging.getLogger(__name__)

Variant = Callable[[DomainSpec], DomainSpec]


def _without_nic(spec: DomainSpec) -> DomainSpec:
    return dataclasses.replace(spec, qemu_args=())


#: name -> the change to the run's domain (``raw`` and ``run`` are built apart)
VARIANTS: dict[str, Variant] = {
    "run -disk": lambda spec: dataclasses.replace(spec, disks=()),
    "run -nic": _without_nic,
    "run -disk -nic": lambda spec: _without_nic(dataclasses.replace(spec, disks=())),
    "run -identity": lambda spec: dataclasses.replace(spec, identity=None),
    "run -memtune": lambda spec: dataclasses.replace(spec, memtune=MemTune()),
    "run -env": lambda spec: dataclasses.replace(spec, qemu_env={}),
    #: every host-side difference at once: the guest sees the run's devices
    "run -host": lambda spec: dataclasses.replace(spec, identity=None, memtune=MemTune(),
                                                  qemu_env={}),
}


#: a ``run`` variant with QEMU properties for one of its devices: ``run nic:a=1,b=on``
DEVICE_PROPERTIES = ("nic:", "blk:")
#: the alias libvirt gives the domain's first virtio-blk disk (the layer disk)
DISK_ALIAS = "virtio-disk0"


def with_nic_properties(spec: DomainSpec, props: str) -> DomainSpec:
    """``spec`` with ``props`` appended to its NIC's ``-device`` (the last QEMU argument)."""
    args = list(spec.qemu_args)
    if len(args) < 2 or not args[-1].startswith("virtio-net-pci,"):
        raise ValueError("the domain has no NIC to give properties to")
    args[-1] += "," + props
    return dataclasses.replace(spec, qemu_args=tuple(args))


def with_disk_properties(xml: str, props: str) -> str:
    """The domain ``xml`` with QEMU properties for its layer disk's device (libvirt's
    ``<qemu:override>``): ``queue-size=64,disable-legacy=on``."""
    root = ET.fromstring(xml)
    frontend = ET.SubElement(ET.SubElement(ET.SubElement(
        root, f"{{{QEMU_NS}}}override"), f"{{{QEMU_NS}}}device", alias=DISK_ALIAS),
        f"{{{QEMU_NS}}}frontend")
    for prop in props.split(","):
        key, _, value = prop.partition("=")
        kind = "bool" if value in ("true", "false") else \
            "unsigned" if value.isdigit() else "string"
        ET.SubElement(frontend, f"{{{QEMU_NS}}}property", name=key, type=kind, value=value)
    return ET.tostring(root, encoding="unicode")


def variant_xml(variant: str, spec: DomainSpec) -> str:
    """The XML of ``variant`` of the run's domain ``spec`` (``run``, a :data:`VARIANTS` name
    or ``run nic:PROPS`` / ``run blk:PROPS``)."""
    kind, _, props = variant.removeprefix("run ").partition(":")
    if variant.startswith("run ") and f"{kind}:" in DEVICE_PROPERTIES and props:
        if kind == "nic":
            return domain_xml(with_nic_properties(spec, props).validate())
        return with_disk_properties(domain_xml(spec), props)
    if variant != "run":
        spec = VARIANTS[variant](spec).validate()
    return domain_xml(spec)


def run_spec(env: VMEnv, name: str, layer: Path, ident: tuple[int, int] | None) -> DomainSpec:
    """The domain of a cold ``hypervm run --memory GUEST_MIB IMAGE -- true`` (one layer)."""
    files = RunFiles.under(env.cfg.vms_dir / name)
    metadata = {**owner_metadata(), "pod": name, "tenant": "default"}
    return cold_domain(name, env.boot, env.cfg, files, Resources(cpus=1, memory_mib=GUEST_MIB),
                       NetworkSpec(), metadata, disks=(DiskSpec(path=layer, serial="l0"),),
                       identity=ident)


def qemu_cpu_s(name: str) -> float:
    """CPU time (user + system, s) the QEMU of the running domain ``name`` has used: the
    guest's boot under TCG is QEMU's CPU, less moved by the other users' load than its wall
    time (the vCPU thread waits for a core, it does not work more)."""
    fields = Path(f"/proc/{_qemu_pid(name)}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _qemu_pid(name: str) -> int:
    pid = vcpu.qemu_pid(name)
    if pid is None:
        raise FileNotFoundError(f"no QEMU pid of the running domain {name}")
    return pid


def cpu_split_s(name: str) -> dict[str, float]:
    """``vCPU``: the first vCPU thread's time on a CPU (the guest's own translation and
    execution); ``QEMU threads CPU``: all live threads' (ns resolution; ended worker threads
    are not counted, ``QEMU CPU`` counts them in clock ticks)."""
    pid = _qemu_pid(name)
    out = {"QEMU threads CPU": sum(vcpu.threads_cpu_s(pid).values())}
    if (guest := vcpu.vcpu_s(pid)) is not None:
        out["vCPU"] = guest[0]
    return out


def boot_once(env: VMEnv, hv: Hypervisor, variant: str, layer: Path
              ) -> dict[str, float]:
    """createXML, createXML's return -> READY, and at READY QEMU's CPU time (clock ticks),
    its live threads' and its vCPU thread's (ns), of one boot of ``variant``; destroyed."""
    name = "hypervm-" + bench_name("xml")
    run_dir = env.cfg.vms_dir / name
    ident = None
    if variant == "raw":
        spec = dataclasses.replace(raw_spec(env, env.cfg.vms_dir), name=name,
                                   channel_socket=run_dir / "channel.sock",
                                   console_log=run_dir / "console.log")
    else:
        ident = identity.for_vm(env.cfg, hv, name)
        spec = run_spec(env, name, layer, ident.pair if ident is not None else None)
    dom = None
    try:
        hv.prepare_run_dir(run_dir, spec.identity)
        xml = domain_xml(spec) if variant == "raw" else variant_xml(variant, spec)
        started = time.monotonic()
        dom = hv.conn.createXML(xml, libvirt.VIR_DOMAIN_START_AUTODESTROY)
        created = time.monotonic()
        _wait_ready(spec.channel_socket, created + READY_TIMEOUT)
        ready = time.monotonic()
        out = {"createXML": created - started, "READY": ready - created,
               "QEMU CPU": qemu_cpu_s(name)}
        return {**out, **cpu_split_s(name)}
    finally:
        end_domain(dom, name, run_dir, release=ident is not None)


def measure(rounds: int, variants: list[str]) -> dict[str, list[float]]:
    env = VMEnv.load()
    samples: dict[str, list[float]] = {}
    with images.serve_images(None) as imgs, Hypervisor(env.cfg.libvirt_uri, events=False) as hv:
        layers, _ = images.warm_shared_cache(env.cfg, imgs.busybox_ref, 0)
        for variant in variants:  # untimed: page cache, libvirt's capabilities
            boot_once(env, hv, variant, layers[0])
        for i in range(rounds):
            load = os.getloadavg()[0]
            samples.setdefault("load", []).append(load)
            log.info("round %d of %d (load %.2f)", i + 1, rounds, load)
            for variant in rotated(variants, i):
                for what, value in boot_once(env.current(), hv, variant, layers[0]).items():
                    samples.setdefault(f"{variant} {what}", []).append(value)
    return samples


def summary(samples: dict[str, list[float]]) -> dict[str, object]:
    """quick_summary, and each variant's READY minus the same round's ``run`` READY, paired
    p50 in ms (what taking that difference away saves the guest's boot)."""
    out: dict[str, object] = results.quick_summary(samples)
    for what in ("createXML", "READY", "QEMU CPU", "QEMU threads CPU", "vCPU"):
        base = samples.get(f"run {what}")
        if base:
            out[f"{what} - run {what}, paired p50 (ms)"] = {
                name.removesuffix(f" {what}"): round(1000 * (paired_p50(values, base) or 0.0), 1)
                for name, values in samples.items()
                if name.endswith(f" {what}") and name != f"run {what}"}
    return out


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variants", default=",".join(["raw", "run", *VARIANTS]),
                        help="separated by ';' (or ',' when none has properties): raw, run, "
                             + ", ".join(VARIANTS) + ", run nic:PROPS, run blk:PROPS")


def variant_list(text: str) -> list[str]:
    """``--variants``: ';'-separated when any has properties (which hold commas)."""
    return [v.strip() for v in text.split(";" if ";" in text else ",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    return results.quick_main("python -m bench.bootxml", 8,
                              lambda a: measure(a.rounds, variant_list(a.variants)),
                              summary, argv, _options)


if __name__ == "__main__":
    sys.exit(main())
