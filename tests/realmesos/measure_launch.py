"""LAUNCH -> TASK_RUNNING through the real Mesos agent beside the same through the agent double,
with real HyperVMs (cold boots, no pool): ``python -m tests.realmesos.measure_launch [RUNS]``.

Two figures each: ``executor`` = TASK_RUNNING's timestamp - TASK_STARTING's (both stamped by
hypervm-executor: its LAUNCH-received -> process-running), ``end to end`` = the framework's
ACCEPT (real) or the double's LAUNCH (double) -> TASK_RUNNING seen by the caller. Through the
real agent the end-to-end figure includes the agent starting the executor process; the double's
executor is already subscribed.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.integration import imagebuild
from tests.integration.registry import running_registry
from tests.mesos.agent import AgentDouble
from tests.realmesos.cluster import RealMesos
from tests.realmesos.fixtures import app_task, launch_op, new_executor_id, wait_no_domains
from tests.realmesos.scheduler import TestScheduler


def executor_delta(statuses: list[dict]) -> float:
    stamp = {s["state"]: s["timestamp"] for s in statuses}
    return float(stamp["TASK_RUNNING"] - stamp["TASK_STARTING"])


def real(ref: str, work: Path, runs: int) -> list[tuple[float, float]]:
    mesos = RealMesos(work / "mesos")
    mesos.start()
    out = []
    try:
        sched = TestScheduler(mesos.master)
        for _ in range(runs):
            offer = sched.take_full_offer(2.0)
            eid = new_executor_id("p")
            tid = f"{eid}.t"
            started = time.monotonic()
            sched.accept(offer, [launch_op(app_task(tid, "true", ref, offer, eid))])
            sched.wait_state(tid, "TASK_RUNNING", 240)
            e2e = time.monotonic() - started
            sched.wait_terminal(tid, 60)
            out.append((executor_delta(sched.statuses(tid)), e2e))
            wait_no_domains(eid, 60)
        sched.teardown()
    finally:
        mesos.stop()
    return out


def double(ref: str, work: Path, runs: int) -> list[tuple[float, float]]:
    out = []
    for i in range(runs):
        eid = new_executor_id("d")
        agent = AgentDouble(work / f"double{i}", runtime=None, executor_id=eid,
                            env={"HYPERVM_POOL": "off"})
        try:
            agent.start_executor()
            agent.wait_subscribed(30)
            task = {"task_id": {"value": f"{eid}.t"}, "name": "t",
                    "labels": {"labels": [{"key": "hypervm.image", "value": ref}]},
                    "command": {"value": "true"},
                    "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.2}},
                                  {"name": "mem", "type": "SCALAR", "scalar": {"value": 64}}]}
            started = time.monotonic()
            agent.launch(task)
            agent.wait_state(f"{eid}.t", "TASK_RUNNING", 240)
            e2e = time.monotonic() - started
            agent.wait_terminal(f"{eid}.t", 60)
            out.append((executor_delta(agent.statuses(f"{eid}.t")), e2e))
            agent.wait_executor_exit(60)
        finally:
            agent.stop()
    return out


def report(name: str, results: list[tuple[float, float]]) -> None:
    ex = [r[0] for r in results]
    e2e = [r[1] for r in results]
    print(f"{name:7} runs={len(results)}  executor LAUNCH->RUNNING p50 "
          f"{statistics.median(ex):.2f} s "
          f"(min {min(ex):.2f}, max {max(ex):.2f});  end to end p50 "
          f"{statistics.median(e2e):.2f} s (min {min(e2e):.2f}, max {max(e2e):.2f})")


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    work = Path(tempfile.mkdtemp(prefix="hypervm-measure-"))
    work.chmod(0o755)
    try:
        with running_registry(work / "registry") as reg:
            ref = imagebuild.push(imagebuild.busybox_base(work / "layout"), reg.host, "busybox",
                                  "1")
            results = {"double": double(ref, work, runs), "real": real(ref, work, runs)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name, values in results.items():
        report(name, values)


if __name__ == "__main__":
    main()
