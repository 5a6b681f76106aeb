"""What a cold run's guest translates for the first time: ``python -m bench.translated [--rounds
N] [--baseline DIR] [--top N] [--out FILE]``.

Under TCG a cold guest's time is QEMU translating code that never ran in that QEMU process
(DEVELOPERS.md, "A cold `hypervm run`"): its vCPU thread is busy 95-98 % of NETWORK -> EXIT, 74 %
of that in the translator. So the amount of new guest code is the measure of a change to the
guest's path that timings, noisy on a shared machine, show only after many rounds. Each round
boots a ``bench.coldguest`` guest per init binary (this tree's and, with ``--baseline DIR``,
DIR's, the order alternating) with QEMU's ``-d in_asm`` log, notes the log's size when READY
arrives, does the cold run's NETWORK + START of ``true`` + EXIT, and counts the guest
instructions translated before READY (``boot``) and after (``run``), by kernel function (the
HyperKernel's ``vmlinux.debug`` symbols; user code is ``<user>``) and by subsystem. Counts move
by 1-2k between guests (scheduling, fault order): compare medians of several rounds.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import coldguest, results
from bench.preparefast import _layer
from vmimage.boot import BASE_CMDLINE

USER = "<user>"
#: kernel subsystems by function name (the first match wins); the rest is "other"
SUBSYSTEMS = [
    ("overlay", r"^ovl_"), ("erofs", r"^erofs_|^z_erofs"),
    ("iomap/readahead", r"^iomap|readahead|^read_pages|^filemap_read|page_cache_ra"),
    ("block", r"^blk_|^__blk|^bio|^__bio|^virtblk|^submit_bio|^__sg|^sg_|^virtio_queue_rqs"),
    ("cgroup/memcg", r"cgroup|^css|memcg|^mem_cgroup|objcg|obj_stock|^pids_|^kernfs|rstat"),
    ("seccomp/bpf", r"bpf|seccomp"), ("per-cpu/vmalloc", r"^pcpu|vmap|vmalloc|^__vunmap"),
    ("net", r"^virtnet|^fib|^devinet|^inet|^ip_|^__ip|^addrconf|^netif|^__netif|^dev_|^rtnl|"
            r"^rtm|^neigh|^arp|^igmp|^skb|^__skb|^napi|^__napi|^qdisc|^linkwatch"),
    ("exit/wait", r"exit|^release_task|wait|^zap_|^unmap_|^free_pgtables|^tlb_|^__tlb"),
    ("fork", r"^copy_|^dup_|^kernel_clone|^alloc_pid|^copy_process"),
    ("faults/mmap", r"fault|^wp_page|^do_anon|^mmap|^do_mmap|^vma|^__vma|mprotect|^change_|"
                    r"^filemap_map|^next_uptodate|^folio|^__folio|^xas_"),
]


def kernel_symbols(debug: Path) -> tuple[list[int], list[str]]:
    """Text symbols of ``vmlinux.debug``, sorted by address (``nm -n``)."""
    listing = subprocess.run(["nm", "-n", str(debug)], capture_output=True, text=True,
                             check=True).stdout
    addrs, names = [], []
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] in "tTwW":
            addrs.append(int(parts[0], 16))
            names.append(parts[2])
    return addrs, names


def count(log: bytes, symbols: tuple[list[int], list[str]]) -> collections.Counter[str]:
    """Translated instructions of a ``-d in_asm`` log, by kernel function (USER below the
    kernel's half of the address space)."""
    addrs, names = symbols
    by_fn: collections.Counter[str] = collections.Counter()
    for m in re.finditer(rb"^0x([0-9a-f]+):", log, re.M):
        pc = int(m.group(1), 16)
        if pc < 0xFFFF800000000000:
            by_fn[USER] += 1
        else:
            i = bisect.bisect_right(addrs, pc) - 1
            by_fn[names[i] if i >= 0 else "?"] += 1
    return by_fn


def subsystems(by_fn: collections.Counter[str]) -> dict[str, int]:
    out: collections.Counter[str] = collections.Counter()
    for name, n in by_fn.items():
        if name == USER:
            out["user"] += n
            continue
        out[next((s for s, rx in SUBSYSTEMS if re.search(rx, name)), "other")] += n
    return dict(out)


def one_guest(work: Path, name: str, initrd: Path, kernel: Path, layer: Path
              ) -> tuple[bytes, bytes]:
    """Boot with the log, do the cold run, kill: (the log until READY, the log after it)."""
    log = work / f"{name}.in_asm"
    spawned = time.monotonic()
    guest = coldguest._boot(work, name, initrd, kernel, layer, BASE_CMDLINE,
                            extra=["-d", "in_asm", "-D", str(log)])
    try:
        guest.connect()
        time.sleep(0.3)  # the log is written by QEMU's own thread: let READY's part land
        mark = log.stat().st_size
        coldguest.run_once(guest, spawned)
        time.sleep(0.3)
    finally:
        guest.kill()
    data = log.read_bytes()
    log.unlink()
    return data[:mark], data[mark:]


def measure(rounds: int, baseline: Path | None, top: int) -> dict[str, object]:
    kernel = coldguest.hyperkernel()
    symbols = kernel_symbols(kernel.parent / "vmlinux.debug")
    work = Path(tempfile.mkdtemp(prefix="hypervm-bench-translated-"))
    samples: dict[str, list[float]] = {}
    tops: dict[str, collections.Counter[str]] = {}
    try:
        layer = _layer(work)
        for i, prefix, initrd in coldguest.alternating(work, rounds, baseline):
            boot_log, run_log = one_guest(work, f"g{i}{len(prefix)}", initrd, kernel, layer)
            boot, run = count(boot_log, symbols), count(run_log, symbols)
            tops.setdefault(prefix, collections.Counter()).update(run)
            took = {"boot": sum(boot.values()), "run": sum(run.values()),
                    **{f"run {k}": v for k, v in subsystems(run).items()}}
            for key, value in took.items():
                samples.setdefault(prefix + key, []).append(float(value))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {k: {"p50": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}
               for k, v in samples.items()}
    return {"summary (instructions)": summary, "samples": samples,
            "top run functions (sum over rounds)": {
                prefix or "this": dict(c.most_common(top)) for prefix, c in tops.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.translated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--top", type=int, default=40, help="functions listed per init")
    parser.add_argument("--out", type=Path, default=None)
    results.baseline_option(parser)
    args = parser.parse_args(argv)
    doc = measure(args.rounds, args.baseline, args.top)
    doc["commit"] = results.git_commit(Path(__file__).resolve().parent.parent)
    return results.emit(doc, args.out)


if __name__ == "__main__":
    sys.exit(main())
