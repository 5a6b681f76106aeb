"""``hypervm run IMAGE -- true`` end to end: the CLI as a user runs it (Python start-up, cache
hit on the image, boot, START, exit, poweroff), wall clock from exec to exit."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bench.vmenv import GUEST_MIB, bench_name
from executor.libvirt.starter import LIBVIRT_PID_DIR
from hypervm.config import config_from_env

TIMEOUT = 180.0
#: how long a run's domain may take to be torn down by libvirtd after its CLI's exit
TEARDOWN_TIMEOUT = 30.0
#: the checkout this bench belongs to: its ``hypervm`` runs this tree's code, not the one the
#: venv's editable install points at (a worktree's bench measured the main tree's run path)
REPO = Path(__file__).resolve().parents[1]
#: bench/stamps: a sitecustomize that stamps the cold run's path (``bench.runfast --stamps``)
STAMPS = REPO / "bench" / "stamps"


def hypervm_argv() -> list[str]:
    script = Path(sys.executable).parent / "hypervm"
    return [str(script)] if script.exists() else [sys.executable, "-m", "executor.cli"]


def tree_env(tree: Path = REPO) -> dict[str, str]:
    """Our environment with this checkout (or ``tree``) first on the import path."""
    paths = [str(tree), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


def run_once(ref: str, tree: Path = REPO, stamps: Path | None = None) -> float:
    """Seconds of one cold ``hypervm run REF -- true`` with the code of ``tree``; ``stamps``:
    a directory the CLI writes the stamps of its path into (bench/stamps/sitecustomize.py)."""
    name = bench_name("run")
    argv = [*hypervm_argv(), "run", "--name", name, "--quiet",
            "--memory", str(GUEST_MIB), ref, "--", "true"]
    env = tree_env(tree)
    if stamps is not None:
        env["PYTHONPATH"] = os.pathsep.join((str(STAMPS), env["PYTHONPATH"]))
        env["HYPERVM_BENCH_STAMPS"] = str(stamps)
    started = time.monotonic()
    if stamps is not None:
        env["HYPERVM_BENCH_STAMPS_T0"] = repr(time.perf_counter())
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False,
                          env=env)
    took = time.monotonic() - started
    wait_teardown(name)
    if proc.returncode != 0:
        raise RuntimeError(f"hypervm run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return took


def wait_teardown(name: str, timeout: float = TEARDOWN_TIMEOUT,
                  vms_dir: Path | None = None) -> None:
    """Off the clock, until libvirtd has torn down the run's domain (``hypervm-NAME-*``: its
    pid file gone, what the CLI's starter child waits for after the CLI exits) and the child
    has removed its run directory (under ``vms_dir``, the host's by default: the last step of
    a VM's end it took over from the CLI, executor.libvirt.vmend), so that the next sample's
    boot does not run beside the end of this one."""
    deadline = time.monotonic() + timeout
    runs = vms_dir or config_from_env().vms_dir
    while time.monotonic() < deadline and (
            any(Path(LIBVIRT_PID_DIR).glob(f"hypervm-{name}-*.pid"))
            or any(runs.glob(f"hypervm-{name}-*"))):
        time.sleep(0.02)
