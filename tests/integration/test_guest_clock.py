"""A TCG guest takes the clocks the host gives it (vmimage.guestclock) instead of calibrating
them: the TSC's frequency (``tsc_early_khz``) and the local APIC timer's (``hypervm.apic_khz``,
the HyperKernel's apic-khz patch). The HyperKernel with our init under HyperQEMU, the command
line ``hypervm run`` boots with (console messages on, the APIC's too), READY awaited, then the
kernel's own words read from the console."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from hypervm.config import config_from_env
from tests.integration.test_init_qemu import Guest, _cpio
from vmimage import guestclock
from vmimage.boot import DEFAULT_BIOS, resolve_boot

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(300)]

INIT = Path(__file__).resolve().parents[2] / "init" / "build" / "hypervm-init"


def _boot_console(tmp_path: Path, cmdline: str, qemu: Path) -> str:
    initrd = _cpio(tmp_path / "initrd", {"init": INIT}, tmp_path / "initrd.cpio")
    sock, console = tmp_path / "ch.sock", tmp_path / "console"
    argv = [str(qemu), "-M", "pc", "-accel", "tcg", "-bios", str(DEFAULT_BIOS), "-m", "128",
            "-cpu", "max", "-nographic", "-nodefaults", "-no-reboot",
            "-serial", f"file:{console}", "-kernel", str(resolve_boot(config_from_env())
                                                          .kernel.path),
            "-initrd", str(initrd), "-append", cmdline, "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=ch0,path={sock},server=on,wait=off",
            "-device", "virtserialport,chardev=ch0,name=org.hypervm.channel.0"]
    g = Guest(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL), sock, console)
    try:
        g.connect()  # READY: the kernel's boot messages are on the console
        return g.console()
    finally:
        g.kill()


def test_a_tcg_guest_uses_the_clocks_it_is_given_and_does_not_calibrate_them(
        tmp_path: Path) -> None:
    if not INIT.exists():
        pytest.skip("run make -C init")
    boot = resolve_boot(config_from_env())
    if boot.accel != "tcg":
        pytest.skip("under KVM the guest's kvm-clock gives its frequency")
    khz = guestclock.guest_tsc_khz(config_from_env().guest_tsc_khz)
    if khz is None:
        pytest.skip("this host's /proc/cpuinfo does not state its TSC frequency exactly")
    assert f"tsc_early_khz={khz}" in boot.cmdline.split()
    cmdline = boot.cmdline.replace(" quiet", "", 1) + " apic=verbose"
    console = _boot_console(tmp_path, cmdline, boot.qemu.path)
    detected = re.findall(r"tsc: Detected (\d+)\.(\d{3}) MHz (TSC|processor)", console)
    # the TSC's line when the PIT calibration gave the CPU another figure, else the processor's
    tsc = [f for f in detected if f[2] == "TSC"] or detected
    # (a guest that calibrated states its own measure: 2594.2-2596.2 MHz on this project's
    # hosts, for a host TSC of 2596.120)
    assert tsc and int(tsc[-1][0]) * 1000 + int(tsc[-1][1]) == khz, console[-3000:]
    # the APIC timer: QEMU's 1 GHz at HZ 250, taken as stated (a calibrating guest says
    # "calibrating APIC timer ..." and busy-waits 100 ms)
    assert "lapic timer already calibrated 4000000" in console, console[-3000:]
    assert "calibrating APIC timer" not in console
