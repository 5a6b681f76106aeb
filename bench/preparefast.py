"""The guest's side of a warm START alone, for checking a change to init's prepared
container: ``python -m bench.preparefast [--rounds N] [--baseline DIR] [--out FILE]``.

One QEMU guest (TCG, the HyperKernel, an initrd of init alone, a busybox erofs layer with the
usual PATH directories and a 9p share: tests/integration/test_init_qemu.py's harness, no
libvirt) per init binary: this tree's ``init/build/hypervm-init`` (``make -C init``) and, with
``--baseline DIR``, DIR's. Each round, in each guest (the order alternating): PREPARE of the
layer with the share carried, a pause, then the warm launch's START (a 9p subdir mount,
``early_reply``; ``/bin/sh -c true`` as Mesos runs a command, then ``true`` through the default
PATH as ``hypervm run IMAGE -- true`` does: ``… (PATH)`` samples), timed from its send to its
OK, and its EXIT.
The host's side is the same few frames in both arms, so the difference is init's. Seconds.

With ``--stamps`` the guests boot with ``hypervm_stamps=1`` (init/src/stamp.h): each START
also gives init's stamps of its steps (``stamp <step>…`` samples, seconds after the START frame
was read; a baseline init without a step's stamp has none), the guest's profile of a prepared
START.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import results
from executor.guest.protocol import MsgType
from hypervm.config import config_from_env
from tests.integration.test_init_qemu import BUSYBOX, QBOOT, QEMU, Guest, _cpio
from vmimage.kernel import find_kernel

INIT = Path(__file__).resolve().parents[1] / "init" / "build" / "hypervm-init"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ROOTFS = {"layers": ["layer0"], "readonly": False}
STAMPS_MARK = "hypervm-init: stamps t0="
STAMPS_LINE = re.compile(r"hypervm-init: stamps t0=(\S+)((?: \w+=[0-9.]+)+)")
SETTLE_S = 0.3  # after the PREPARE: the START comes later than it in a real pool
WARMUP_ROUNDS = 2


def _layer(work: Path) -> Path:
    root = work / "rootfs"
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "mnt", "usr/bin", "usr/sbin", "sbin"):
        (root / d).mkdir(parents=True)
    shutil.copy(BUSYBOX, root / "bin/busybox")
    listing = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in listing:
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    layer = work / "layer.erofs"
    subprocess.run(["mkfs.erofs", "--quiet", str(layer), str(root)], check=True)
    return layer


def _boot(work: Path, name: str, init: Path, kernel: Path, layer: Path, share: Path,
          stamps: bool = False) -> Guest:
    initrd = _cpio(work / f"initrd-{name}", {"init": init}, work / f"initrd-{name}.cpio")
    sock, console = work / f"{name}.sock", work / f"{name}.console"
    argv = [QEMU, "-M", "pc", "-accel", "tcg", "-bios", str(QBOOT), "-m", "256", "-smp", "1",
            "-nographic", "-nodefaults", "-no-reboot", "-serial", f"file:{console}",
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", "console=ttyS0 panic=-1 reboot=t quiet"
            + (" hypervm_stamps=1" if stamps else ""),
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=ch0,path={sock},server=on,wait=off",
            "-device", "virtserialport,chardev=ch0,name=org.hypervm.channel.0",
            "-drive", f"file={layer},if=none,id=d0,format=raw,readonly=on",
            "-device", "virtio-blk-pci,drive=d0,serial=layer0",
            "-fsdev", f"local,id=fs0,path={share},security_model=none",
            "-device", "virtio-9p-pci,fsdev=fs0,mount_tag=share0"]
    return Guest(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL), sock, console)


#: the two commands of a warm launch: Mesos's shell command (``/bin/sh -c true``, no PATH
#: search in init; busybox's sh runs ``true`` itself), and ``hypervm run IMAGE -- true`` (init
#: searches the default PATH)
COMMANDS = {"": ["/bin/sh", "-c", "true"], " (PATH)": ["true"]}


def start_once(guest: Guest, handle: int, args: list[str]) -> float:
    """PREPARE, then the timed START of ``args`` and its EXIT: the START's round trip."""
    chan = guest.chan
    assert chan is not None
    chan.ok(MsgType.PREPARE, {"rootfs": ROOTFS, "shares": ["share0"]})
    time.sleep(SETTLE_S)
    payload: dict[str, Any] = {
        "container": f"c{handle}", "handle": handle, "rootfs": ROOTFS, "hostname": "pod",
        "mounts": [{"type": "9p", "source": "share0", "subdir": "s",
                    "destination": "/mnt/mesos/sandbox"}],
        "process": {"args": args, "env": ["HOME=/", f"PATH={DEFAULT_PATH}"], "cwd": "/"},
        "early_reply": True}
    began = time.monotonic()
    chan.ok(MsgType.START, payload)
    took = time.monotonic() - began
    chan.wait_exit(handle)
    return took


def parse_stamps(console: str) -> dict[str, float]:
    """The last stamps line of a console: step name -> ms after the first step."""
    found = STAMPS_LINE.findall(console)
    if not found:
        return {}
    return {name: float(ms) for name, ms in
            (item.split("=") for item in found[-1][1].split())}


def wait_stamps(guest: Guest, seen: int, timeout: float = 2.0) -> dict[str, float]:
    """The stamps line after the ``seen`` ones already on the guest's console ({} if none)."""
    deadline = time.monotonic() + timeout
    while (console := guest.console()).count(STAMPS_MARK) <= seen:
        if time.monotonic() > deadline:
            return {}
        time.sleep(0.02)
    return parse_stamps(console)


def measure(rounds: int, baseline: Path | None = None,
            stamps: bool = False) -> dict[str, list[float]]:
    kernel = find_kernel(config_from_env(), env={"HYPERVM_KERNEL": "hyperkernel"}).path
    inits = {"prepared START": INIT}
    if baseline is not None:
        inits = {"baseline prepared START": baseline / "init" / "build" / "hypervm-init",
                 **inits}
    work = Path(tempfile.mkdtemp(prefix="hypervm-bench-prepare-"))
    samples: dict[str, list[float]] = {}
    guests: dict[str, Guest] = {}
    try:
        layer, share = _layer(work), work / "share"
        (share / "s").mkdir(parents=True)
        for i, (name, init) in enumerate(inits.items()):
            guests[name] = _boot(work, str(i), init, kernel, layer, share, stamps)
        for guest in guests.values():
            guest.connect()
        handle = 1
        for i in range(-WARMUP_ROUNDS, rounds):
            order = list(guests.items())
            for kind, args in COMMANDS.items():
                for name, guest in order if i % 2 == 0 else order[::-1]:
                    seen = guest.console().count(STAMPS_MARK)
                    took = start_once(guest, handle, args)
                    handle += 1
                    steps = wait_stamps(guest, seen) if stamps else {}
                    if i >= 0:
                        samples.setdefault(name + kind, []).append(took)
                        for step, ms in steps.items():
                            samples.setdefault(f"{name}{kind} stamp {step}", []).append(
                                ms / 1000)
    finally:
        for guest in guests.values():
            guest.kill()
        shutil.rmtree(work, ignore_errors=True)
    return samples


def main(argv: list[str] | None = None) -> int:
    return results.quick_main("python -m bench.preparefast", 20,
                              lambda a: measure(a.rounds, a.baseline, a.stamps),
                              results.quick_summary, argv, _options)


def _options(parser: argparse.ArgumentParser) -> None:
    results.baseline_option(parser)
    parser.add_argument("--stamps", action="store_true",
                        help="boot with hypervm_stamps=1 and sample init's stamps per START")


if __name__ == "__main__":
    sys.exit(main())
