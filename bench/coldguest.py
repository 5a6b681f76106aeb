"""The guest's side of a cold ``hypervm run IMAGE -- true`` alone, for checking a change to
init's cold path: ``python -m bench.coldguest [--rounds N] [--baseline DIR] [--out FILE]``.

Each round boots a fresh QEMU guest (TCG, the HyperKernel with the domain's command line, an
initrd of init alone, a busybox erofs layer, a virtio NIC on a restricted slirp: no libvirt)
per init binary, this tree's ``init/build/hypervm-init`` (``make -C init``) and, with
``--baseline DIR``, DIR's, the order alternating, and does what a cold run does after READY:
NETWORK pipelined with the START of ``true`` through the default PATH (``early_reply``, the
run's limits), then waits for its EXIT. Samples (seconds): ``boot`` (QEMU spawned -> READY),
``start`` (START sent -> its OK), ``exit`` (OK -> EXIT read), ``run`` (NETWORK sent -> EXIT;
``--no-network``: the START alone).
With ``--stamps`` the guests boot with ``hypervm_stamps=1`` (init/src/stamp.h) and each
stamp of init's line is a sample too (``stamp NAME``, s after the first; an init without
stamps has none), for a profile of where the guest's time goes.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench import results
from bench.preparefast import DEFAULT_PATH, INIT, ROOTFS, _layer, parse_stamps
from executor.guest.protocol import MsgType, encode_json, layer_pci_address
from executor.libvirt.designer import FIRST_LAYER_SLOT
from executor.network import DNS_ADDRESS, GUEST_ADDRESS, GUEST_NETWORK, HOST_ADDRESS
from hypervm.config import config_from_env
from tests.integration.test_init_qemu import QBOOT, QEMU, Guest, _cpio
from vmimage.boot import BASE_CMDLINE
from vmimage.kernel import find_kernel

MAC = "52:54:00:12:34:56"
NETWORK = {"nameservers": [DNS_ADDRESS], "search": [],
           "hosts": [{"address": "127.0.0.1", "names": ["localhost"]},
                     {"address": GUEST_ADDRESS, "names": ["run"]}],
           "interfaces": [{"mac": MAC, "address": GUEST_ADDRESS,
                           "prefix": GUEST_NETWORK.prefixlen, "gateway": HOST_ADDRESS}]}
#: the cold run's START: ``true`` through the default PATH, hypervm run's default limits, the
#: layer disk's PCI address (its slot as a cold domain pins it: designer.pin_layer_slots;
#: init before 0.7.5 ignores it)
START: dict[str, Any] = {"container": "run", "handle": 1, "hostname": "run",
         "rootfs": {**ROOTFS, "pci": [layer_pci_address(FIRST_LAYER_SLOT)]},
         "process": {"args": ["true"], "env": ["HOME=/", f"PATH={DEFAULT_PATH}"], "cwd": "/"},
         "limits": {"pids": 4096, "scratch": 256 << 20}, "early_reply": True}


def wait_stamps(guest: Guest, timeout: float = 2.0) -> dict[str, float]:
    """The guest's stamps line, once init has logged it after the EXIT ({} if none comes)."""
    deadline = time.monotonic() + timeout
    while not (found := parse_stamps(guest.console())) and time.monotonic() < deadline:
        time.sleep(0.02)
    return found


def guest_argv(qemu: str | Path, bios: Path, smp: str, work: Path, name: str, kernel: Path,
               initrd: Path, cmdline: str, layer: Path) -> tuple[list[str], Path, Path]:
    """A bench guest's QEMU command line without libvirt (TCG, 256 MiB, the guest channel on
    ``work/name.sock``, the console in ``work/name.console``, ``layer`` as disk serial layer0
    at the slot a cold domain pins its first layer to), its channel socket and its console
    file."""
    sock, console = work / f"{name}.sock", work / f"{name}.console"
    argv = [str(qemu), "-M", "pc", "-accel", "tcg", "-bios", str(bios), "-m", "256",
            "-smp", smp, "-nographic", "-nodefaults", "-no-reboot", "-serial", f"file:{console}",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline,
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=ch0,path={sock},server=on,wait=off",
            "-device", "virtserialport,chardev=ch0,name=org.hypervm.channel.0",
            "-drive", f"file={layer},if=none,id=d0,format=raw,readonly=on",
            "-device", f"virtio-blk-pci,drive=d0,serial=layer0,addr={FIRST_LAYER_SLOT:#x}"]
    return argv, sock, console


def _boot(work: Path, name: str, initrd: Path, kernel: Path, layer: Path,
          cmdline: str, extra: Sequence[str] = ()) -> Guest:
    argv, sock, console = guest_argv(QEMU, QBOOT, "1", work, name, kernel, initrd, cmdline,
                                     layer)
    argv += ["-netdev", "user,id=n0,restrict=on",
             "-device", f"virtio-net-pci,netdev=n0,mac={MAC}", *extra]
    return Guest(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL), sock, console)


def run_once(guest: Guest, spawned: float, net: bool = True) -> dict[str, float]:
    """A cold run's guest side on a booted ``guest`` (``net``: with its NETWORK): seconds of
    each phase."""
    chan = guest.chan
    assert chan is not None
    ready = time.monotonic()
    if net:
        chan.send_raw(encode_json(MsgType.NETWORK, 100, NETWORK))
    began = time.monotonic()
    chan.send_raw(encode_json(MsgType.START, 101, START))
    for want in (100, 101)[0 if net else 1:]:
        frame = chan.next_frame()
        assert frame.type == MsgType.OK and frame.id == want, (frame, guest.console()[-2000:])
    ok = time.monotonic()
    exit_ = chan.wait_exit(1).exit
    assert exit_ is not None and exit_["status"] == 0, exit_
    ended = time.monotonic()
    return {"boot": ready - spawned, "start": ok - began, "exit": ended - ok,
            "run": ended - ready}


def hyperkernel() -> Path:
    """The HyperKernel these guests boot (no libvirt: QEMU straight)."""
    return find_kernel(config_from_env(), env={"HYPERVM_KERNEL": "hyperkernel"}).path


def alternating(work: Path, rounds: int, baseline: Path | None
                ) -> Iterator[tuple[int, str, Path]]:
    """(round, sample prefix, initrd) of each guest to boot: this tree's init (prefix "") and,
    with ``baseline`` (a source tree with init built), its init ("baseline "), each in an
    initrd of its own made in ``work``; which goes first alternates over the rounds."""
    inits = {"": INIT}
    if baseline is not None:
        inits = {"baseline ": baseline / "init" / "build" / "hypervm-init", **inits}
    initrds = {prefix: _cpio(work / f"initrd-{i}", {"init": init}, work / f"initrd-{i}.cpio")
               for i, (prefix, init) in enumerate(inits.items())}
    order = list(initrds.items())
    for i in range(rounds):
        for prefix, initrd in order if i % 2 == 0 else order[::-1]:
            yield i, prefix, initrd


def measure(rounds: int, baseline: Path | None = None, stamps: bool = False,
            net: bool = True) -> dict[str, list[float]]:
    kernel = hyperkernel()
    cmdline = BASE_CMDLINE + (" hypervm_stamps=1" if stamps else "")
    work = Path(tempfile.mkdtemp(prefix="hypervm-bench-coldguest-"))
    samples: dict[str, list[float]] = {}
    try:
        layer = _layer(work)
        for i, prefix, initrd in alternating(work, rounds, baseline):
            spawned = time.monotonic()
            guest = _boot(work, f"g{i}{len(prefix)}", initrd, kernel, layer, cmdline)
            try:
                guest.connect()
                took = run_once(guest, spawned, net)
                if stamps:
                    took.update({f"stamp {k}": v / 1000
                                 for k, v in wait_stamps(guest).items()})
            finally:
                guest.kill()
            for name, value in took.items():
                samples.setdefault(prefix + name, []).append(value)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return samples


def _options(parser: argparse.ArgumentParser) -> None:
    results.baseline_option(parser)
    parser.add_argument("--stamps", action="store_true",
                        help="boot with hypervm_stamps=1 and sample init's stamps")
    parser.add_argument("--no-network", dest="net", action="store_false",
                        help="no NETWORK before the START (its share of the guest's time)")


def main(argv: list[str] | None = None) -> int:
    return results.quick_main("python -m bench.coldguest", 10,
                              lambda a: measure(a.rounds, a.baseline, a.stamps, a.net),
                              results.quick_summary, argv, _options)


if __name__ == "__main__":
    sys.exit(main())
