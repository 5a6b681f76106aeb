"""What each device of the cold run's domain adds to the guest's boot, in code translated:
``python -m bench.devicecode [--rounds 3] [--variants "base;blk;net;blk:queue-size=64"]
[--top 40] [--out FILE]``.

Under TCG a boot's time is mostly QEMU translating guest code that never ran before
(DEVELOPERS.md, "A cold `hypervm run`"), and timings of a few ms drown in a shared machine's
noise, so this counts the code instead, as bench.translated does for init's path. Each round
boots one guest per variant straight on QEMU (no libvirt; the Debian QEMU, whose ``-d in_asm``
log has one line per instruction; HyperQEMU, built without a disassembler, logs one per
translated block), with the HyperKernel, the boot files' initrd and command line and the raw
boot's devices (virtio-serial with the guest channel, the free-page-reporting balloon, the RNG),
until init's READY; ``base`` is those alone. A variant adds ``blk`` (the layer disk as the cold
run's domain has it: read-only raw virtio-blk) and/or ``net`` (its user-mode virtio-net NIC),
each optionally with QEMU properties (``blk:queue-size=64``, ``net:status=off``), joined by
``+``. Samples: READY (s after QEMU's spawn, slow: the log is written as it goes) and the
instructions translated before READY; ``top`` lists each variant's functions against the
first variant's (mean over the rounds). Counts move by 1-2k between boots of one variant
(timers, scheduling): compare medians of several rounds.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import images, results
from bench.rawboot import _wait_ready
from bench.translated import count, kernel_symbols
from bench.vmenv import GUEST_MIB, VMEnv

#: the Debian QEMU: its in_asm log has every instruction (HyperQEMU's only each block's first)
QEMU = "qemu-system-x86_64"
MAC = "52:54:00:12:34:56"
READY_TIMEOUT = 120.0


def device_args(variant: str, layer: Path) -> list[str]:
    """QEMU arguments of ``variant``'s devices beyond the raw boot's."""
    args: list[str] = []
    for part in filter(None, variant.split("+")):
        kind, _, props = part.partition(":")
        extra = f",{props}" if props else ""
        if kind == "blk":
            args += ["-drive", f"file={layer},if=none,id=d0,format=raw,readonly=on",
                     "-device", f"virtio-blk-pci,drive=d0,serial=l0{extra}"]
        elif kind == "net":
            args += ["-netdev", "user,id=n0,ipv6=off",
                     "-device", f"virtio-net-pci,netdev=n0,mac={MAC},romfile={extra}"]
        elif kind != "base":
            raise ValueError(f"unknown device {kind!r} in {variant!r}: base, blk or net")
    return args


def guest_argv(env: VMEnv, work: Path, variant: str, layer: Path) -> list[str]:
    boot = env.boot
    if boot.bios is None:
        raise RuntimeError("the boot files have no firmware (qboot)")
    return [QEMU, "-M", "pc", "-accel", "tcg", "-cpu", "max", "-bios", str(boot.bios),
            "-m", str(GUEST_MIB), "-smp", "1", "-nographic", "-nodefaults", "-no-reboot",
            "-serial", f"file:{work}/console", "-kernel", str(boot.kernel.path),
            "-initrd", str(boot.initrd), "-append", boot.cmdline,
            "-device", "virtio-serial-pci,max_ports=2",
            "-chardev", f"socket,id=ch0,path={work}/channel.sock,server=on,wait=off",
            "-device", "virtserialport,chardev=ch0,name=org.hypervm.channel.0",
            "-device", "virtio-balloon-pci,free-page-reporting=on",
            "-object", "rng-random,filename=/dev/urandom,id=rng0",
            "-device", "virtio-rng-pci,rng=rng0",
            "-d", "in_asm", "-D", f"{work}/in_asm", *device_args(variant, layer)]


def boot_once(env: VMEnv, variant: str, layer: Path) -> tuple[float, bytes]:
    """(READY after the spawn, the in_asm log up to READY) of one guest; ended at once."""
    work = Path(tempfile.mkdtemp(prefix="hypervm-bench-devicecode-"))
    try:
        proc = subprocess.Popen(guest_argv(env, work, variant, layer),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        spawned = time.monotonic()
        try:
            _wait_ready(work / "channel.sock", spawned + READY_TIMEOUT)
            ready = time.monotonic() - spawned
            mark = (work / "in_asm").stat().st_size
        finally:
            proc.terminate()  # not SIGKILL: QEMU flushes its log when it exits
            proc.wait(timeout=30)
        return ready, (work / "in_asm").read_bytes()[:mark]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(rounds: int, variants: list[str], top: int) -> dict[str, object]:
    env = VMEnv.load()
    symbols = kernel_symbols(env.boot.kernel.path.parent / "vmlinux.debug")
    samples: dict[str, list[float]] = {}
    by_fn: dict[str, collections.Counter[str]] = {v: collections.Counter() for v in variants}
    with images.serve_images(None) as imgs:
        layer = images.warm_shared_cache(env.cfg, imgs.busybox_ref, 0)[0][0]
        for i in range(rounds):
            for variant in variants if i % 2 == 0 else variants[::-1]:
                ready, log = boot_once(env, variant, layer)
                counted = count(log, symbols)
                by_fn[variant].update(counted)
                samples.setdefault(f"{variant} READY", []).append(ready)
                samples.setdefault(f"{variant} instructions", []).append(
                    float(sum(counted.values())))
    first = variants[0]
    diffs: dict[str, dict[str, float]] = {}
    for variant in variants[1:]:
        diff = collections.Counter(by_fn[variant])
        diff.subtract(by_fn[first])
        diffs[f"{variant} - {first}"] = {fn: round(n / rounds, 1)
                                         for fn, n in diff.most_common(top)}
    summary = {k: {"p50": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}
               for k, v in samples.items()}
    return {"summary": summary, "samples": samples, "top (mean per boot)": diffs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.devicecode")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="base;blk;net;blk+net",
                        help="';'-separated, the first the reference: base, blk[:PROPS], "
                             "net[:PROPS], joined by '+'")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    doc = measure(args.rounds, args.variants.split(";"), args.top)
    doc["commit"] = results.git_commit(Path(__file__).resolve().parent.parent)
    return results.emit(doc, args.out)


if __name__ == "__main__":
    sys.exit(main())
