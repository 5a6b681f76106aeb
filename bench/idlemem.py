"""Private memory of idle HyperVMs, quickly: ``python -m bench.idlemem`` boots ``--count`` idle
128 MiB HyperVMs at once (the pod of ``idle_vm_private_mib``, with the warm-up busybox layer),
waits ``density.SETTLE_S``, and prints each QEMU's Private_Clean + Private_Dirty, its RSS, PSS and
where the private MiB are (by mapping), then destroys them; ``--rounds`` repeats that.
``--cmdline`` appends to the guest kernel command line of these VMs only, ``--env K=V`` sets
host settings (e.g. ``HYPERVM_TCG_TB_CACHE_MIB=8``) for them: one change measured against the
default back to back, in a minute, without the whole ``make bench``.
``--qemu DIR`` boots them on another HyperQEMU build (``<state>/qemu/<key>``, current or not:
its features from its ``meta.json``), ``--kernel DIR``
on another guest kernel (a directory with ``vmlinux`` and ``meta.json``, e.g. a HyperKernel
built from a changed fragment before it is published).
``--guest`` then runs ``cat /proc/meminfo`` in one more VM's container, after the settle (what
the guest kernel holds: the guest RAM mapping is what it touched).
Each VM's guest RAM is also read page by page (root): its resident MiB and how many of them
hold only zeros (``--ram-map``: by guest-physical MiB).
``--clones`` measures idle *clones* of one template instead (each a pod started with
HYPERVM_SNAPSHOT=on and no pool, as ``snapshot_clone_idle_private_mib``; the first makes the
template when the store has none).
``--pool`` measures idle generic *pool* VMs instead (a warm pool of ``--count`` 1 vCPU / 128 MiB
VMs of its own, each past its warm-up container, read ``--settle`` s after the pool is full;
the pool resolves its boot files itself, so ``--qemu``, ``--kernel`` and ``--cmdline`` do not
apply to them, ``--env`` does).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from bench import density
from bench.vmenv import VMEnv
from executor.vm import HyperVM
from hypervm.config import config_from_env
from hypervm.podspec import Container, Process
from vmimage.initrd import ensure_initrd
from vmimage.kernel import kernel_from_dir
from vmimage.qemu import hyperqemu_from_dir
from vmimage.rootfs import ensure_warmup_layer


def measure_round(env: VMEnv, count: int, settle_s: float, top: int,
                  clones: bool = False, pool: bool = False) -> list[dict[str, Any]]:
    """Each of ``count`` idle VMs booted at once (``clones``: started from the snapshot of
    their shape, clones of one template; ``pool``: idle VMs of a warm pool): private, RSS and
    PSS MiB, private by mapping."""
    layers = [ensure_warmup_layer(env.cfg.rootfs_dir)]
    if pool:
        measured = density.idle_pool_memory(env, count, settle_s, top)
    elif clones:
        measured = density.idle_clone_memory(env, layers, count, settle_s, top)
    else:
        measured = density.idle_qemu_memory(env, layers, count, settle_s, top,
                                            boot_files=env.boot)
    return [{"private_mib": round(m["private"], 2), "rss_mib": round(m["rss"], 2),
             "pss_mib": round(m["pss"], 2),
             "by_mapping": m["by_mapping"], "guest_ram": m["guest_ram"]}
            for m in measured]


def guest_meminfo(env: VMEnv, settle_s: float) -> str:
    """``/proc/meminfo`` of an idle VM read from a container after ``settle_s``."""
    layers = [ensure_warmup_layer(env.cfg.rootfs_dir)]
    pod = density.pod(layers, "idlemem")
    cat = dataclasses.replace(pod.containers[0], process=Process(
        args=("/bin/cat", "/proc/meminfo"), env=("PATH=/bin",)))
    pod = dataclasses.replace(pod, containers=(Container(cat.name, cat.rootfs, cat.process),))
    out: list[bytes] = []
    with HyperVM(env.cfg, pod, boot_files=env.boot) as vm:
        vm.boot()
        time.sleep(settle_s)
        done = threading.Event()
        vm.start(pod.containers[0], on_stdout=out.append, on_stderr=out.append,
                 on_exit=lambda _s: done.set())
        done.wait(60)
    return b"".join(out).decode(errors="replace")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.idlemem")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--settle", type=float, default=density.SETTLE_S)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--cmdline", default="", help="appended to the guest kernel cmdline")
    parser.add_argument("--env", action="append", default=[], help="K=V host setting")
    parser.add_argument("--qemu", type=Path, default=None,
                        help="another HyperQEMU build: its <state>/qemu/<key> directory")
    parser.add_argument("--kernel", type=Path, default=None,
                        help="another guest kernel: a directory with vmlinux and meta.json")
    parser.add_argument("--guest", action="store_true", help="print the guest's /proc/meminfo")
    parser.add_argument("--clones", action="store_true",
                        help="idle clones of one template (HYPERVM_SNAPSHOT=on), not cold VMs")
    parser.add_argument("--pool", action="store_true",
                        help="idle generic VMs of a warm pool (past their warm-up), not cold VMs")
    parser.add_argument("--ram-map", action="store_true",
                        help="print guest RAM's resident and zero KiB by guest-physical MiB")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    environ = dict(os.environ)
    environ.update(kv.split("=", 1) for kv in args.env)
    env = VMEnv.load()
    env = VMEnv(cfg=config_from_env(environ), boot=env.boot)
    if args.qemu:
        env = VMEnv(cfg=env.cfg, boot=dataclasses.replace(
            env.boot, qemu=hyperqemu_from_dir(args.qemu)))
    if args.kernel:
        kernel = kernel_from_dir(args.kernel)
        env = VMEnv(cfg=env.cfg, boot=dataclasses.replace(
            env.boot, kernel=kernel, initrd=ensure_initrd(env.cfg, kernel)))
    if args.cmdline:
        env = VMEnv(cfg=env.cfg, boot=env.with_cmdline(" " + args.cmdline.strip()))
    totals: list[float] = []
    for _ in range(args.rounds):
        for vm in measure_round(env, args.count, args.settle, args.top, args.clones,
                                args.pool):
            totals.append(vm["private_mib"])
            if args.json:
                print(json.dumps(vm))
                continue
            print(f"private {vm['private_mib']:6.2f} MiB  rss {vm['rss_mib']:6.2f} MiB  "
                  f"pss {vm['pss_mib']:6.2f} MiB")
            for row in vm["by_mapping"]:
                print(f"    {row['private_mib']:6.2f}  {row['name']}")
            ram = vm["guest_ram"]
            if ram:
                print(f"    guest RAM {ram['resident_kib'] / 1024:.2f} MiB resident, "
                      f"{ram['zero_kib'] / 1024:.2f} MiB of it zeros")
                if args.ram_map:
                    print("    by guest-physical MiB (resident/zero KiB): " + " ".join(
                        f"{mib}:{res}/{zero}" for mib, (res, zero) in ram["by_mib"].items()))
    print(f"median private {statistics.median(totals):.2f} MiB of {len(totals)}: "
          f"{sorted(totals)}")
    if args.guest:
        print(guest_meminfo(env, args.settle))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
