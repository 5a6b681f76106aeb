"""Where the time goes: ``python -m bench.profile [--out-dir DIR] [--rate HZ]``.

Writes, per case, ``profile-<case>.json`` (figures, top frames) and ``profile-<case>.txt``
(readable), so the next change can be compared with these:

- ``run-cold``, ``run-warm``: ``hypervm run --memory 128 IMAGE -- true`` under ``py-spy record
  --idle`` (wall-clock samples of every thread, waiting included), cold (``HYPERVM_POOL=off``)
  and with a VM from a warm pool of that shape; the raw collapsed stacks are kept beside;
- ``launch-cold``, ``launch-warm``: the launch path of the executor without Mesos (``boot_vm``
  then START of ``true``, as ``executor/launcher.py`` does) under cProfile in this process,
  cold and from the same pool (cumulative times); ``launch-warm-ports``: the same from an image
  pool (the VM ``warm_launch_p50_s`` takes) for a pod publishing one port (the pool's side
  of the claim, ``hostfwd_add`` included, runs in its own thread: inside ``claim.py(_request)``);
- ``guest``: one HyperVM booted without ``quiet``: host clock (libvirt/QEMU start, guest to
  READY) and the guest kernel's printk timestamps (kernel → ``Run /init``, largest gaps).
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import json
import logging
import os
import pstats
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench import images, profile, results
from bench.launch import free_port
from bench.runtrue import hypervm_argv
from bench.vmenv import GUEST_MIB, VMEnv, bench_name

log = logging.getLogger(__name__)

TOP = 25


def py_spy() -> str | None:
    found = shutil.which("py-spy") or Path(sys.executable).parent / "py-spy"
    return str(found) if Path(found).exists() else None


def collapsed_summary(text: str, top: int = TOP) -> dict[str, Any]:
    """Top frames of py-spy's raw (collapsed) output: ``frame;frame;leaf count`` lines.
    ``self``: samples whose leaf is the frame; ``inclusive``: samples with the frame anywhere
    on the stack (counted once per stack), as a share of all samples."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    main: collections.Counter[str] = collections.Counter()
    total = main_total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            incl[frame] += n
        if frames[0].startswith("<module>"):  # the main thread: the script's own stack
            main_total += n
            for frame in set(frames):
                main[frame] += n

    def rows(counter: collections.Counter[str], of: int) -> list[dict[str, Any]]:
        return [{"frame": f, "samples": n, "share": round(n / of, 4)}
                for f, n in counter.most_common(top)] if of else []
    return {"samples": total, "self": rows(own, total), "inclusive": rows(incl, total),
            "main_thread_samples": main_total, "main_thread": rows(main, main_total)}


def spy_run(ref: str, env: Mapping[str, str], out_dir: Path, case: str, rate: int
            ) -> dict[str, Any]:
    """``hypervm run … true`` under py-spy: wall time, top frames, the raw stacks file."""
    raw = out_dir / f"profile-{case}.collapsed.txt"
    argv = [*hypervm_argv(), "run", "--name", bench_name("prof"), "--quiet", "--cpus", "1",
            "--memory", str(GUEST_MIB), ref, "--", "true"]
    spy = py_spy()
    if spy is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    started = time.monotonic()
    proc = subprocess.run([spy, "record", "--idle", "--rate", str(rate), "--format", "raw",
                           "--output", str(raw), "--", *argv], capture_output=True, text=True,
                          env={**os.environ, **env}, check=False, timeout=300)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"py-spy/hypervm run failed: {proc.stderr[-2000:]}")
    summary = collapsed_summary(raw.read_text())
    return {"case": case, "argv": argv, "wall_s_under_py_spy": round(wall, 3),
            "py_spy_rate_hz": rate, "collapsed_stacks": raw.name, **summary}


def cprofile_launch(env: VMEnv, layers: list[Path], case: str, port: int | None = None
                    ) -> dict[str, Any]:
    """boot_vm + START of ``true`` (the executor's path) under cProfile, in this process;
    ``port``: the pod publishes that host port (on 127.0.0.1) to its port 80."""
    import dataclasses

    from bench import density
    from executor.launcher import boot_vm
    from hypervm.netspec import NetworkSpec, PortMapping

    spec = density.pod(layers, "prof")
    if port is not None:
        spec = dataclasses.replace(spec, network=NetworkSpec(
            ports=(PortMapping(port, 80, "tcp", "127.0.0.1"),)))
    prof = cProfile.Profile()
    started = time.monotonic()
    prof.enable()
    vm = boot_vm(env.cfg, spec, accel=env.accel)
    try:
        booted = time.monotonic()
        vm.start(spec.containers[0])
    finally:
        prof.disable()
        ended = time.monotonic()
        vm.destroy()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf).sort_stats("cumulative")
    stats.print_stats(TOP)
    rows = []
    for (path, line, func), (_, calls, _tt, ct, _) in sorted(
            stats.stats.items(), key=lambda kv: -kv[1][3])[:TOP]:  # type: ignore[attr-defined]
        rows.append({"function": f"{Path(path).name}:{line}({func})", "calls": calls,
                     "cumulative_s": round(ct, 4)})
    return {"case": case, "boot_vm_s": round(booted - started, 4),
            "start_s": round(ended - booted, 4), "vm": vm.name,
            "from_pool": vm.warm, "layers_attached": vm.warm_layers,
            "ports": [m.describe() for m in spec.network.ports],
            "top_cumulative": rows, "pstats_text": buf.getvalue()}


def write_case(out_dir: Path, case: str, doc: dict[str, Any], text: str) -> None:
    doc = {**doc, "commit": results.git_commit(Path(__file__).resolve().parents[1]),
           "loadavg": [round(x, 2) for x in os.getloadavg()],
           "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (out_dir / f"profile-{case}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out_dir / f"profile-{case}.txt").write_text(text)
    log.info("wrote %s", out_dir / f"profile-{case}.json")


def spy_text(doc: Mapping[str, Any]) -> str:
    lines = [f"{doc['case']}: {' '.join(doc['argv'][-6:])}",
             f"wall {doc['wall_s_under_py_spy']} s under py-spy (--idle, {doc['py_spy_rate_hz']}"
             f" Hz), {doc['samples']} samples (all threads)", "",
             "main thread, inclusive (share of its samples ~ share of the wall time):"]
    lines += [f"  {r['share']:7.1%}  {r['frame']}" for r in doc["main_thread"]]
    lines += ["", "all threads, inclusive (share of samples):"]
    lines += [f"  {r['share']:7.1%}  {r['frame']}" for r in doc["inclusive"]]
    lines += ["", "self (leaf frames):"]
    lines += [f"  {r['share']:7.1%}  {r['frame']}" for r in doc["self"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from bench import suite
    from executor.libvirt.hypervisor import Hypervisor

    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=results.RESULTS_DIR)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("vmimage", "executor", "tests"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    env = VMEnv.load()
    with images.serve_images(None) as imgs:
        layers, _ = images.warm_shared_cache(env.cfg, imgs.busybox_ref, 0)
        ref = imgs.busybox_ref
        cold = spy_run(ref, {"HYPERVM_POOL": "off"}, args.out_dir, "run-cold", args.rate)
        write_case(args.out_dir, "run-cold", cold, spy_text(cold))
        launch = cprofile_launch(env.with_pool(False), layers, "launch-cold")
        write_case(args.out_dir, "launch-cold", launch, launch.pop("pstats_text"))
        with suite.warm_pool(env, "profpool") as pool:
            sock = str(pool.cfg.pool_socket)
            suite.fill_pool(pool)
            warm = spy_run(ref, {"HYPERVM_POOL": "auto", "HYPERVM_POOL_SOCKET": sock},
                           args.out_dir, "run-warm", args.rate)
            write_case(args.out_dir, "run-warm", warm, spy_text(warm))
            suite.fill_pool(pool)
            launch = cprofile_launch(env.with_pool(True, pool.cfg.pool_socket), layers,
                                     "launch-warm")
            write_case(args.out_dir, "launch-warm", launch, launch.pop("pstats_text"))
        with suite.warm_pool(env, "profipool", ref) as pool:
            suite.fill_pool(pool)
            launch = cprofile_launch(env.with_pool(True, pool.cfg.pool_socket), layers,
                                     "launch-warm-ports", port=free_port())
            write_case(args.out_dir, "launch-warm-ports", launch, launch.pop("pstats_text"))
        with Hypervisor(env.cfg.libvirt_uri):
            guest = profile.hypervm_boot(env, layers)
        write_case(args.out_dir, "guest", {"case": "guest", **guest},
                   json.dumps(guest, indent=2) + "\n")
    return 0
