"""RESEED's ``cpus`` in a real guest (init/src/cpus.c): the HyperKernel under HyperQEMU (TCG),
1 vCPU present of 4, vCPUs hot-added through QMP ``device_add`` (what libvirt's
``setVcpusFlags`` sends; no libvirt here). Init brings every present CPU online from the
kernel's ``present`` and ``online`` masks, waits for those not registered yet, and fails
after its wait when fewer than asked for came: the host's count is what it gives, the reply
only what init saw."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from executor.guest.protocol import RESEED_BYTES, MsgType, encode_json, reseed_payload
from hypervm.config import config_from_env
from tests.integration.test_init_qemu import Guest, _cpio
from vmimage.boot import DEFAULT_BIOS, resolve_boot

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(300)]

INIT = Path(__file__).resolve().parents[2] / "init" / "build" / "hypervm-init"


class Monitor:
    """A QMP connection to the guest's QEMU."""

    def __init__(self, path: Path) -> None:
        deadline = time.monotonic() + 10
        while True:
            self.sock = socket.socket(socket.AF_UNIX)
            try:
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.file = self.sock.makefile("rw")
        self.file.readline()  # the greeting
        self.command("qmp_capabilities")

    def command(self, execute: str, **arguments: Any) -> dict[str, Any]:
        self.file.write(json.dumps({"execute": execute, "arguments": arguments}) + "\n")
        self.file.flush()
        while True:  # events come before the reply
            reply: dict[str, Any] = json.loads(self.file.readline())
            if "return" in reply or "error" in reply:
                return reply

    def add_vcpu(self, core: int) -> None:
        reply = self.command("device_add", driver="max-x86_64-cpu", id=f"vcpu{core}",
                             **{"socket-id": 0, "core-id": core, "thread-id": 0})
        assert "return" in reply, reply

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture()
def guest(tmp_path: Path) -> Iterator[tuple[Guest, Monitor]]:
    if not INIT.exists():
        pytest.skip("run make -C init")
    boot = resolve_boot(config_from_env())
    if boot.accel != "tcg" or boot.qemu.kind != "hyperqemu":
        pytest.skip("needs HyperQEMU under TCG (its max CPU hot-plugged as a clone's)")
    initrd = _cpio(tmp_path / "initrd", {"init": INIT}, tmp_path / "initrd.cpio")
    sock, console, mon = tmp_path / "ch.sock", tmp_path / "console", tmp_path / "qmp.sock"
    argv = [str(boot.qemu.path), "-M", "pc", "-accel", "tcg", "-bios", str(DEFAULT_BIOS),
            "-m", "256", "-cpu", "max", "-smp", "1,maxcpus=4,sockets=1,cores=4,threads=1",
            "-nographic", "-nodefaults", "-no-reboot", "-serial", f"file:{console}",
            "-kernel", str(boot.kernel.path), "-initrd", str(initrd), "-append", boot.cmdline,
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=ch0,path={sock},server=on,wait=off",
            "-device", "virtserialport,chardev=ch0,name=org.hypervm.channel.0",
            "-qmp", f"unix:{mon},server=on,wait=off"]
    g = Guest(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL), sock, console)
    monitor = None
    try:
        g.connect()
        monitor = Monitor(mon)
        yield g, monitor
    finally:
        if monitor is not None:
            monitor.close()
        g.kill()


def _reseed(g: Guest, request_id: int, cpus: int) -> Any:
    assert g.chan is not None
    g.chan.send_raw(encode_json(MsgType.RESEED, request_id,
                                reseed_payload(os.urandom(RESEED_BYTES), cpus=cpus)))
    return g.chan.next_frame(30)


def _online(g: Guest, want: str, timeout: float = 10.0) -> str:
    """Init's last "N vCPUs online" console line, once it holds ``want`` (or at ``timeout``):
    init writes it before its reply, but the serial console reaches its file after the
    reply has come through the channel (a loaded CI host showed it missing at the reply)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in g.console().splitlines() if "vCPUs online" in line]
        last = lines[-1] if lines else ""
        if want in last or time.monotonic() >= deadline:
            return last
        time.sleep(0.05)


def test_hot_added_vcpus_come_online_and_a_missing_one_times_out(
        guest: tuple[Guest, Monitor]) -> None:
    g, monitor = guest
    # two at once, the second (cpu2) sent while init may already be bringing the first up
    monitor.add_vcpu(1)
    monitor.add_vcpu(2)
    frame = _reseed(g, 100, 3)
    assert frame.type == MsgType.OK and frame.id == 100, (frame, g.console()[-2000:])
    assert frame.json() == {"cpus": 3}
    assert "3 vCPUs online (3 wanted)" in _online(g, "3 vCPUs online (3 wanted)")
    # a vCPU present but offline (the kernel's own state) is brought online too
    monitor.add_vcpu(3)
    frame = _reseed(g, 101, 4)
    assert frame.json() == {"cpus": 4}, frame
    # more than the host gave: init waits (~5 s), then says how many came, not more
    began = time.monotonic()
    frame = _reseed(g, 102, 5)
    assert frame.type == MsgType.ERROR and frame.id == 102, frame
    error = frame.json()
    assert error["code"] == "ETIMEDOUT" and "4 of 5" in error["message"], error
    assert time.monotonic() - began >= 4.5
