"""Cold and warm launch: LAUNCH through the Mesos agent double to the real ``hypervm-executor``
→ TASK_RUNNING (the guest process started), one fresh executor and VM per run. The executor is
started and subscribed before the clock starts, the image is already in the shared cache. Cold:
the executor boots a VM (HYPERVM_POOL=off); warm: it claims one from the benchmark's pool;
snapshot: no pool, it starts the VM from the snapshot of the task's shape (HYPERVM_SNAPSHOT=on;
the first such launch on a host makes the snapshot, so the suite runs one untimed first)."""

from __future__ import annotations

import logging
import re
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.images import scratch_dir
from bench.vmenv import bench_name
from tests.mesos.agent import AgentDouble

log = logging.getLogger(__name__)

#: the source tree the bench runs from: its executor is the one launched
REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 180.0
#: the task's cpus: with the executor's 0.1 they make one whole vCPU, so no CFS quota throttles
#: the VM (below a whole vCPU the executor caps it, and the boot slows in proportion)
CPUS = 0.9
#: the task's mem: with the executor's 32 MiB the VM has 128 MiB (the warm pool's shape)
TASK_MEM = 96
MEMORY_MIB = TASK_MEM + 32
_READY_RE = re.compile(r"ready in ([0-9.]+) s")


@dataclass(frozen=True)
class Launch:
    running_s: float
    #: the executor took a pool VM
    warm: bool
    #: ... an image pool VM, with the task's layers attached already
    warm_layers: bool
    #: HyperVM.boot() as the executor logged it (kernel lookup, domain create, READY)
    vm_boot_s: float | None
    #: phases from the executor log's timestamps (ms resolution), see :func:`phases`
    phases: dict[str, float]
    #: the executor started the VM from a snapshot
    snapshot: bool = False
    #: ... on a standby clone the pool daemon had started (executor.snapshot.keeper)
    standby: bool = False


_STAMP = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) "
_MARKS = {
    "starting": re.compile(_STAMP + r".*TASK_STARTING", re.M),
    "image": re.compile(_STAMP + r".*vmimage\.images\.store: .*layers\)", re.M),
    "created": re.compile(_STAMP + r".*executor\.libvirt\.hypervisor: started ", re.M),
    "claimed": re.compile(_STAMP + r".*executor\.pool\.adopt: .*: warm VM .* ready in ", re.M),
    "restored": re.compile(_STAMP + r".*executor\.snapshot\.start: .* started from snapshot ",
                           re.M),
    "ready": re.compile(_STAMP + r".*executor\.vm: hypervm-\S+ ready in ", re.M),
    "running": re.compile(_STAMP + r".*TASK_RUNNING", re.M),
}


def phases(executor_log: str) -> dict[str, float]:
    """Where a launch goes, from the executor's log: STARTING sent → image resolved (cache
    hit) → cold: domain created (kernel/initrd lookup, libvirt, QEMU start) → READY (guest
    boot); warm: pool VM claimed and given the pod (disks, mounts, metadata) → RUNNING sent
    (START, container setup in the guest). Missing marks are skipped."""
    from datetime import datetime

    times = {}
    for name, pattern in _MARKS.items():
        match = pattern.search(executor_log)
        if match:
            times[name] = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    names = [n for n in _MARKS if n in times]
    return {f"{a}->{b}": round(times[b] - times[a], 3) for a, b in zip(names, names[1:],
                                                                          strict=False)}


_STANDBY_RE = re.compile(r"executor\.snapshot\.start: .* started from snapshot \S+ \(standby\)")
_SPANS_RE = re.compile(r"executor\.snapshot\.start: .* started from snapshot .* in [0-9.]+ s "
                       r"\(([^)]*)\)$", re.M)


def clone_spans(executor_log: str) -> dict[str, float]:
    """The start from a snapshot split as executor.snapshot.start logs it (``clone: load``
    etc.: snapshot lookup, clone created or standby taken, state loaded, RESEED and layers,
    the pod's ports, NIC and binds)."""
    match = _SPANS_RE.search(executor_log)
    if match is None:
        return {}
    spans = {}
    for part in match.group(1).split(", "):
        name, _, seconds = part.rpartition(" ")
        try:
            spans[f"clone: {name}"] = float(seconds)
        except ValueError:
            continue
    return spans


def task(tid: str, ref: str, port: int | None = None, cpus: float = CPUS,
         mem: int = TASK_MEM) -> dict[str, Any]:
    """The benchmark's task; ``port``: a host port in its ``ports`` resources (published to the
    same port in the VM, as the executor maps ports without DiscoveryInfo)."""
    resources = [{"name": "cpus", "type": "SCALAR", "scalar": {"value": cpus}},
                 {"name": "mem", "type": "SCALAR", "scalar": {"value": mem}}]
    if port is not None:
        resources.append({"name": "ports", "type": "RANGES",
                          "ranges": {"range": [{"begin": port, "end": port}]}})
    return {"task_id": {"value": tid}, "name": tid,
            "container": {"type": "MESOS",
                          "mesos": {"image": {"type": "DOCKER", "docker": {"name": ref}}}},
            "resources": resources, "command": {"value": "true"}}


def free_port() -> int:
    """A host port nothing listens on now (for a launch that publishes one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_once(ref: str, pool_socket: Path | None = None, port: int | None = None, *,
                snapshot: bool = False, executor_tree: Path | None = None,
                cpus: float = CPUS, mem: int = TASK_MEM, tasks: int = 1) -> Launch:
    """One launch; warm from the pool at ``pool_socket``, else from a snapshot (``snapshot``),
    else cold; with ``port``, the task publishes that host port; ``cpus``: the task's (with the
    executor's 0.1: the VM's vCPUs, rounded up), ``mem`` its MiB; ``tasks`` > 1: a LAUNCH_GROUP
    of that many such tasks (one pod: the VM has their sum; the first publishes ``port``), timed
    until the last is RUNNING. ``executor_tree``: run the
    executor from that source tree (e.g. a baseline commit's), not this one (the bench's own:
    without it on PYTHONPATH, the venv's editable install, e.g. /work/main, would run)."""
    work = scratch_dir("agent")
    env = ({"HYPERVM_POOL_SOCKET": str(pool_socket)} if pool_socket is not None
           else {"HYPERVM_POOL": "off"})
    env["HYPERVM_SNAPSHOT"] = "on" if snapshot else "off"
    env["PYTHONPATH"] = str(executor_tree or REPO)
    kind = "snap" if snapshot else "warm" if pool_socket else "cold"
    agent = AgentDouble(work / "agent", runtime=None, env=env, executor_id=bench_name(kind))
    try:
        agent.start_executor()
        agent.wait_subscribed(timeout=60)
        ids = ["t"] if tasks == 1 else [f"t{i}" for i in range(tasks)]
        group = [task(tid, ref, port if i == 0 else None, cpus, mem) for i, tid in enumerate(ids)]
        started = time.monotonic()
        if tasks == 1:
            agent.launch(group[0])
        else:
            agent.launch_group(group)
        for tid in ids:
            agent.wait_state(tid, "TASK_RUNNING", TIMEOUT)
        took = time.monotonic() - started
        for tid in ids:
            final = agent.wait_terminal(tid, TIMEOUT)
            if final["state"] != "TASK_FINISHED":
                raise RuntimeError(f"benchmark task ended {final['state']}: "
                                   f"{final.get('message')}")
        agent.wait_executor_exit(60)
        text = agent.executor_log()
        match = _READY_RE.search(text)
        claimed = _MARKS["claimed"].search(text)
        restored = _MARKS["restored"].search(text)
        if (restored is not None) != snapshot:
            raise RuntimeError(f"a {kind} launch {'not ' if snapshot else ''}from a snapshot "
                               "(see the executor log)")
        return Launch(took, claimed is not None,
                      claimed is not None and "(layers attached)" in claimed.group(0),
                      float(match.group(1)) if match else None,
                      {**phases(text), **clone_spans(text)}, snapshot=restored is not None,
                      standby=_STANDBY_RE.search(text) is not None)
    except BaseException:
        log.error("executor log:\n%s", agent.executor_log()[-4000:])
        raise
    finally:
        agent.stop()
        shutil.rmtree(work, ignore_errors=True)

