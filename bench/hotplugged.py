"""What a clone's guest translates for a hot-plugged vCPU: ``python -m bench.hotplugged
[--rounds N] [--top N] [--append ARGS] [--out FILE]``.

A 2-vCPU pod from the 1-vCPU standby pays the guest's hot-add and bring-up of its second vCPU
(README "Fast starts for any shape"), under TCG mostly the translation of code that QEMU process
never ran (a clone's QEMU loaded the snapshot: its template's boot translations are not in it).
Each round boots a guest as ``bench.translated`` does, but with HyperQEMU (its ``tcg-invtsc``
and ``tcg-flush``), ``-cpu max``, 1 vCPU present of 2 (cores of one socket, as a template) and
a QMP monitor; after READY it drops the boot's translations (HMP ``tcg-flush``: the guest's
code is then new to QEMU as in a clone), notes the ``-d in_asm`` log's size, adds the vCPU
(QMP ``device_add``, as libvirt's ``setVcpusFlags`` does) and sends RESEED with ``cpus`` 2
(init brings it online), then counts the guest instructions translated from the flush to
RESEED's reply, by kernel function and subsystem (bench.translated), next to a RESEED alone
(``cpus`` absent) on a guest flushed the same way, so the hot-plug's own share shows.
Also samples ``hotplug s`` / ``reseed s`` (device_add sent -> RESEED's OK; RESEED alone).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import coldguest, results, translated
from bench.preparefast import INIT, _layer
from executor.guest.protocol import RESEED_BYTES, MsgType, encode_json, reseed_payload
from executor.libvirt import qmp
from hypervm.config import config_from_env
from tests.integration.test_init_qemu import Guest, _cpio
from vmimage.boot import DEFAULT_BIOS, resolve_boot

SUBSYSTEMS = [("acpi", r"^acpi|^Acpi|^acpi_ex|^acpi_ps|^acpi_ns|^acpi_ut|^acpi_ds|^acpi_ev"),
              ("kthread/sched", r"kthread|^sched|^__sched|^wake_up|^try_to_wake|^enqueue|"
                                r"^dequeue|^select_task|^update_|^set_cpus|^__set_cpus|smpboot"),
              ("cpuhp", r"cpuhp|^_cpu_up|^cpu_up|^bringup|^do_boot_cpu|^native_cpu|"
                        r"^start_secondary"),
              ("workqueue", r"worker|workqueue|^wq_|^pwq|^__queue_work|^worker_pool"),
              ("rcu", r"rcu"), ("sysfs/kobject/device", r"sysfs|kobject|kernfs|^device_|^dev_|"
                                                         r"^bus_|^driver_|^uevent|^kobj"),
              *translated.SUBSYSTEMS]


def _qmp(path: Path) -> qmp.Monitor:
    """A QMP connection to the guest's QEMU (its ``-qmp`` server socket)."""
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(path))
    monitor = qmp.Monitor(sock)
    monitor.handshake()
    return monitor


def _warm(chan: Any, script: str) -> None:
    """A throwaway container running ``script`` (sh -c), as the standby's warm-up runs one."""
    if not script:
        return
    start = {**coldguest.START, "process": {**coldguest.START["process"],
                                            "args": ["/bin/sh", "-c", script]}}
    chan.send_raw(encode_json(MsgType.START, 98, start))
    frame = chan.next_frame(30)
    assert frame.type == MsgType.OK and frame.id == 98, frame
    exited = chan.wait_exit(1).exit
    assert exited is not None and exited["status"] == 0, exited


def one_guest(work: Path, name: str, qemu: Path, initrd: Path, kernel: Path, layer: Path,
              cmdline: str, plug: bool, warm: str = "") -> tuple[bytes, float, str]:
    log, mon = work / f"{name}.in_asm", work / f"{name}.qmp"
    argv, sock, console = coldguest.guest_argv(
        qemu, DEFAULT_BIOS, "1,maxcpus=2,sockets=1,cores=2,threads=1", work, name, kernel,
        initrd, cmdline, layer)
    argv += ["-cpu", "max", "-qmp", f"unix:{mon},server=on,wait=off",
             "-d", "in_asm", "-D", str(log)]
    guest = Guest(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL), sock, console)
    try:
        chan = guest.connect()
        time.sleep(1.0)  # boot settles (the log is written by QEMU's own thread)
        monitor = _qmp(mon)
        monitor.monitor(name, {"execute": "human-monitor-command",
                               "arguments": {"command-line": "tcg-flush"}})
        # as the standby: its QEMU loaded the snapshot, then ran a RESEED (and a container)
        chan.send_raw(encode_json(MsgType.RESEED, 99, reseed_payload(os.urandom(RESEED_BYTES))))
        frame = chan.next_frame(30)
        assert frame.type == MsgType.OK and frame.id == 99, (frame, guest.console()[-2000:])
        _warm(chan, warm)
        time.sleep(0.3)
        mark = log.stat().st_size
        began = time.monotonic()
        if plug:
            monitor.monitor(name, {"execute": "device_add", "arguments": {  # raises on error
                "driver": "max-x86_64-cpu", "id": "vcpu1", "socket-id": 0, "core-id": 1,
                "thread-id": 0}})
        added = time.monotonic() - began
        chan.send_raw(encode_json(MsgType.RESEED, 100, reseed_payload(
            os.urandom(RESEED_BYTES), cpus=2 if plug else None)))
        frame = chan.next_frame(30)
        took = time.monotonic() - began
        assert frame.type == MsgType.OK and frame.id == 100, (frame, guest.console()[-2000:])
        if plug:
            print(f"device_add {added:.4f} s, RESEED OK at {took:.4f} s", file=sys.stderr)
        time.sleep(0.3)
        monitor.close()
    finally:
        guest.kill()
    data = log.read_bytes()
    log.unlink()
    return data[mark:], took, guest.console()


def measure(rounds: int, top: int, append: str, baseline: Path | None = None
            ) -> dict[str, object]:
    cfg = config_from_env()
    boot = resolve_boot(cfg)
    kernel = boot.kernel.path
    symbols = translated.kernel_symbols(kernel.parent / "vmlinux.debug")
    cmdline = " ".join(filter(None, [boot.cmdline, append]))
    work = Path(tempfile.mkdtemp(prefix="hypervm-bench-hotplugged-"))
    samples: dict[str, list[float]] = {}
    tops: collections.Counter[str] = collections.Counter()
    try:
        layer = _layer(work)
        inits = {"": INIT}
        if baseline is not None:
            inits = {"baseline ": baseline / "init" / "build" / "hypervm-init", **inits}
        initrds = {prefix: _cpio(work / f"initrd-{i}", {"init": init}, work / f"initrd-{i}.cpio")
                   for i, (prefix, init) in enumerate(inits.items())}
        runs = [(prefix, plug) for prefix in initrds for plug in (True, False)]
        for i in range(rounds):
            for prefix, plug in runs if i % 2 == 0 else runs[::-1]:
                what = prefix + ("hotplug" if plug else "reseed")
                run_log, took, _ = one_guest(work, f"g{i}{len(prefix)}{plug:d}",
                                             boot.qemu.path, initrds[prefix], kernel, layer,
                                             cmdline, plug, warm="true")
                by_fn = translated.count(run_log, symbols)
                if plug and not prefix:
                    tops.update(by_fn)
                subs = collections.Counter[str]()
                for fn, n in by_fn.items():
                    sub = "user" if fn == translated.USER else next(
                        (s for s, rx in SUBSYSTEMS if __import__("re").search(rx, fn)), "other")
                    subs[sub] += n
                for key, value in {"s": took, "instructions": sum(by_fn.values()),
                                   **{f"{k}": v for k, v in subs.items()}}.items():
                    samples.setdefault(f"{what} {key}", []).append(float(value))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {k: {"p50": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}
               for k, v in sorted(samples.items())}
    return {"cmdline": cmdline, "summary": summary, "samples": samples,
            "top hotplug functions (sum over rounds)": dict(tops.most_common(top)),
            "load": list(os.getloadavg())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hotplugged")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--top", type=int, default=60)
    parser.add_argument("--append", default="", help="more kernel command line")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another tree (its init/build/hypervm-init), alternating")
    args = parser.parse_args(argv)
    out = measure(args.rounds, args.top, args.append, args.baseline)
    return results.emit(out, args.out)


if __name__ == "__main__":
    sys.exit(main())
