"""Raw boot: the same kernel, initrd and domain XML as a HyperVM, created straight through
libvirt, until the guest init's READY frame arrives. Our init does no work before READY, and
nothing of ours (image resolution, HyperVM, the guest channel client) runs in between.

Each sample splits into ``qemu_s`` (createXML: libvirt + QEMU start, returns with the vCPU
running) and ``guest_s`` (firmware + kernel + init until READY on the socket).
"""

from __future__ import annotations

import logging
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import libvirt

from bench import vcpu
from bench.vmenv import GUEST_MIB, VMEnv, bench_name
from executor.guest.protocol import HEADER_SIZE, MsgType, decode_header
from executor.libvirt.domain import DomainSpec
from executor.libvirt.domain_xml import domain_xml
from executor.libvirt.hypervisor import Hypervisor

log = logging.getLogger(__name__)

READY_TIMEOUT = 120.0


@dataclass(frozen=True)
class RawBoot:
    total_s: float
    qemu_s: float
    guest_s: float
    console: str = ""
    #: the vCPU thread's time on a CPU at READY (s; bench.vcpu), None when unknown
    vcpu_s: float | None = None


def raw_spec(env: VMEnv, run_dir: Path, quiet: bool = True) -> DomainSpec:
    """The same kernel, initrd, emulator and devices a HyperVM gets; the TCG flush after READY
    is ours, so the raw boot has none."""
    boot = env.boot if quiet else env.verbose()
    name = "hypervm-" + bench_name("raw")
    return DomainSpec(name=name, accel=env.accel, vcpus=1, memory_mib=GUEST_MIB,
                      kernel=boot.kernel.path, initrd=boot.initrd, cmdline=boot.cmdline,
                      bios=boot.bios, channel_socket=run_dir / name / "channel.sock",
                      console_log=run_dir / name / "console.log",
                      free_page_reporting=env.cfg.free_page_reporting,
                      emulator=boot.emulator).validate()


def _wait_ready(path: Path, deadline: float) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        while True:
            try:
                sock.connect(str(path))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        header = b""
        while len(header) < HEADER_SIZE:
            chunk = sock.recv(HEADER_SIZE - len(header))
            if not chunk:
                raise ConnectionError("the guest channel closed before READY")
            header += chunk
        _, type_, _, _ = decode_header(header)
        if type_ != MsgType.READY:
            raise ConnectionError(f"first frame is type {type_:#x}, not READY")
    finally:
        sock.close()


def boot_once(env: VMEnv, hv: Hypervisor, quiet: bool = True, keep_console: bool = False
              ) -> RawBoot:
    """Boot one raw VM, wait for READY, destroy it."""
    env = env.current()
    spec = raw_spec(env, env.cfg.vms_dir, quiet)
    run_dir = spec.channel_socket.parent
    hv.prepare_run_dir(run_dir)
    xml = domain_xml(spec)
    dom = None
    try:
        started = time.monotonic()
        dom = hv.conn.createXML(xml, libvirt.VIR_DOMAIN_START_AUTODESTROY)
        created = time.monotonic()
        _wait_ready(spec.channel_socket, created + READY_TIMEOUT)
        ready = time.monotonic()
        pid = vcpu.qemu_pid(spec.name)
        guest = vcpu.vcpu_s(pid) if pid is not None else None
        console = ""
        if keep_console:
            time.sleep(0.3)  # let virtlogd write the last lines
            console = spec.console_log.read_text(errors="replace")
        return RawBoot(ready - started, created - started, ready - created, console,
                       guest[0] if guest is not None else None)
    finally:
        if dom is not None:
            try:
                dom.destroy()
            except libvirt.libvirtError as e:
                log.debug("destroying %s: %s", spec.name, e)
        shutil.rmtree(run_dir, ignore_errors=True)

