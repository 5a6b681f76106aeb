"""bench.warmfast --stamps: the stamps module wraps what a tree has (a baseline tree of another
commit may lack a stamped function) and read_stamps names each arm's samples; bench.tocreate's
stop at createXML."""

from __future__ import annotations

import importlib.util
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest

from bench import stampfiles, tocreate, warmfast


def _stamps_module() -> Any:
    spec = importlib.util.spec_from_file_location("bench_stamps_under_test",
                                                  warmfast.STAMPS / "sitecustomize.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # HYPERVM_BENCH_STAMPS unset: installs nothing
    return module


def test_functions_a_tree_lacks_are_skipped(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("fake_launch_path")

    class ExecutorCore:
        def on_launch(self) -> str:
            return "launched"

    fake.ExecutorCore = ExecutorCore  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_launch_path", fake)
    stamps = _stamps_module()
    monkeypatch.setattr(stamps, "STAMPED", (
        ("fake_launch_path", "ExecutorCore.on_launch"),
        ("fake_launch_path", "ExecutorCore.gone"),  # a method of a newer commit
        ("fake_launch_path", "Gone.f"),  # a class of a newer commit
    ))
    stamps._install(str(tmp_path))
    assert ExecutorCore().on_launch() == "launched"
    (record,) = tmp_path.glob("t-*.txt")
    name, began, took = record.read_text().split()
    assert (name, float(began)) == ("ExecutorCore.on_launch", 0.0)
    assert float(took) >= 0


def test_read_stamps_names_the_arm(tmp_path: Path) -> None:
    (tmp_path / "t-1.txt").write_text("VMPod.boot 1.000 20.000\nVMPod.boot 30.000 5.000\n")
    samples: dict[str, list[float]] = {}
    stampfiles.read_stamps(tmp_path, samples, "baseline ")
    assert samples == {"baseline stamp: VMPod.boot began": [0.001],
                       "baseline stamp: VMPod.boot took": [0.02]}
    assert not list(tmp_path.glob("t-*.txt"))


def test_a_cold_runs_stamps_count_from_its_exec(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """bench.runfast --stamps: the CLI stamps COLD_STAMPED (not the executor's launch path)
    from the parent's clock at its exec, with no on_launch to start the clock."""
    fake = types.ModuleType("fake_cold_path")
    fake.run_command = lambda: 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_cold_path", fake)
    stamps = _stamps_module()
    monkeypatch.setattr(stamps, "COLD_STAMPED", (("fake_cold_path", "run_command"),))
    stamps._install(str(tmp_path), repr(time.perf_counter() - 1.0))  # exec'd 1 s ago
    assert fake.run_command() == 0  # type: ignore[attr-defined]
    (record,) = tmp_path.glob("t-*.txt")
    name, began, _ = record.read_text().split()
    assert name == "run_command"
    assert 1000 <= float(began) < 60_000


def test_a_run_stopped_at_createxml_reports_when_and_creates_no_vm(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bench.tocreate: the hook replaces createXML by a record (ms after the exec, CPU ms),
    releases the VM's uid reservation and ends the process: no domain is created."""
    created: list[str] = []
    released: list[str] = []

    class Hypervisor:
        def create(self, spec: Any) -> None:
            created.append(spec.name)

    hypervisor = types.ModuleType("fake_hypervisor")
    hypervisor.Hypervisor = Hypervisor  # type: ignore[attr-defined]
    identity = types.ModuleType("fake_identity")
    identity.release = released.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "executor.libvirt.hypervisor", hypervisor)
    monkeypatch.setitem(sys.modules, "executor.libvirt.identity", identity)

    def exit_now(code: int) -> None:
        raise SystemExit(code)

    stamps = _stamps_module()
    monkeypatch.setattr(stamps.os, "_exit", exit_now)
    out = tmp_path / "at-create"
    stamps._stop_at_create(str(out), time.perf_counter() - 0.25)
    with pytest.raises(SystemExit) as ended:
        Hypervisor().create(types.SimpleNamespace(name="hypervm-bench-x-1"))
    assert ended.value.code == 0 and created == [] and released == ["hypervm-bench-x-1"]
    at, cpu = (float(v) for v in out.read_text().split())
    assert at >= 250 and cpu > 0


def test_tocreate_pairs_each_sample_with_the_baselines() -> None:
    out = tocreate.summary({"exec to createXML ms": [150.0, 160.0, 170.0],
                            "baseline exec to createXML ms": [170.0, 165.0, 200.0]})
    assert out["exec to createXML ms"] == {"p50": 160.0, "min": 150.0, "n": 3}
    assert out["exec to createXML ms: this - baseline, paired p50"] == -20.0
    assert "CPU to createXML ms: this - baseline, paired p50" not in out


def test_a_module_not_imported_yet_is_wrapped_as_the_run_imports_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cold run's stamps and stop are installed when the run itself imports their module
    (its imports keep their order: nothing imported at site time), and before a
    ``from module import name`` binds the name."""
    (tmp_path / "fake_lazy_cold.py").write_text("def run_command():\n    return 0\n")
    (tmp_path / "fake_lazy_user.py").write_text("from fake_lazy_cold import run_command\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("fake_lazy_cold", "fake_lazy_user"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    stamps = _stamps_module()
    monkeypatch.setattr(stamps, "COLD_STAMPED", (("fake_lazy_cold", "run_command"),))
    finders = list(sys.meta_path)
    try:
        stamps._install(str(tmp_path), repr(time.perf_counter()))
        assert "fake_lazy_cold" not in sys.modules
        user = importlib.import_module("fake_lazy_user")
        assert user.run_command() == 0
        assert list(sys.meta_path) == finders  # the finder stepped aside
    finally:
        sys.meta_path[:] = finders
    (record,) = tmp_path.glob("t-*.txt")
    assert record.read_text().split()[0] == "run_command"


def test_a_cold_run_stamps_its_vcpus_time_at_ready(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``vcpu.run_at_READY``/``vcpu.wait_at_READY``: the channel's domain's thread named as
    QEMU names a vCPU (here a thread of this process, the domain's pid file naming it)."""
    import os
    import threading

    stamps = _stamps_module()
    (tmp_path / "hypervm-other.pid").write_text("1\n")
    (tmp_path / "hypervm-ours.pid").write_text(f"{os.getpid()}\n")
    channel = types.SimpleNamespace(socket_path=Path("/run/hypervm/vms/hypervm-ours/channel.sock"))
    monkeypatch.setattr(stamps, "_PID_DIR", str(tmp_path))
    got: list[tuple[str, float]] = []
    named, done = threading.Event(), threading.Event()

    def vcpu() -> None:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as comm:
            comm.write("CPU 0/TCG")
        named.set()
        done.wait(10)

    thread = threading.Thread(target=vcpu)
    thread.start()
    try:
        named.wait(10)
        stamps._stamp_vcpu(lambda what, secs: got.append((what, secs)),
                           stamps._domain_of(channel))
    finally:
        done.set()
        thread.join()
    assert [what for what, _ in got] == ["vcpu.run_at_READY", "vcpu.wait_at_READY"]
    assert all(secs >= 0 for _, secs in got)
    got.clear()
    for domain in ("hypervm-gone", None):  # no such domain, or no channel: nothing
        stamps._stamp_vcpu(lambda what, secs: got.append((what, secs)), domain)
    assert got == []
