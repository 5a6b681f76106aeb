"""One launch path (executor.launcher) for the CLI and the Mesos executor: the gc hold from the
image resolve until the VM runs, and the same registry settings everywhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from executor.launcher import Launcher
from executor.mesos import runtime
from executor.mesos.runtime import PodPlan, VMPod, load_runtime
from executor.mesos.taskinfo import parse_task
from hypervm.config import MesosPolicy, config_from_env
from hypervm.errors import HyperVMError
from tests.conftest import REPO
from vmimage.images.layout import layout_from_rootfs
from vmimage.rootfs import make_busybox_rootfs


def _env(tmp_path: Path) -> dict[str, str]:
    return {"HYPERVM_STATE_DIR": str(tmp_path / "state"), "HYPERVM_RUN_DIR": str(tmp_path / "run"),
            "HYPERVM_POOL": "off", "HYPERVM_IMAGE_LOCK_TIMEOUT": "2",
            # gc lists domains; libvirt's test driver has none of ours
            "HYPERVM_LIBVIRT_URI": "test:///default"}


def _task(image: str) -> dict[str, Any]:
    return {"name": "t", "task_id": {"value": "t1"}, "agent_id": {"value": "a"},
            "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}},
                          {"name": "mem", "type": "SCALAR", "scalar": {"value": 64}}],
            "command": {"value": "true"}, "labels": {"labels": [
                {"key": "hypervm.image", "value": image}]}}


def test_gc_during_a_mesos_launch_cannot_remove_its_layers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``hypervm gc --images`` run while the executor launches (image resolved, VM not yet
    running) must not delete the launch's layers: the launch holds gc off until its VM runs."""
    env = _env(tmp_path)
    cfg = config_from_env(env)
    rootfs = make_busybox_rootfs(tmp_path / "rootfs")
    ref = layout_from_rootfs(rootfs, tmp_path / "oci", "busybox", cmd=("true",))
    spec = parse_task(_task(ref), "task", policy=MesosPolicy(local_image_sources=True))
    (tmp_path / "sandbox").mkdir()
    plan = PodPlan("p", (spec,), 1, 128, tmp_path / "sandbox", {"t1": tmp_path / "sandbox"})
    seen: dict[str, Any] = {}

    def boot_vm_running_gc(_cfg: Any, pod: Any, **_: Any) -> Any:
        layers = pod.containers[0].rootfs.layers
        gc = subprocess.run([sys.executable, "-m", "executor.cli", "gc", "--images"], cwd=REPO,
                            env={**os.environ, **env, "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=120, check=False)
        seen.update(layers=layers, gc=gc, left=[Path(p).exists() for p in layers])
        raise HyperVMError("stop the launch here")

    monkeypatch.setattr(runtime, "boot_vm", boot_vm_running_gc)
    with pytest.raises(HyperVMError, match="stop the launch here"):
        VMPod(cfg, plan, launcher=Launcher(cfg, env)).boot()
    assert seen["layers"] and all(seen["left"]), seen["gc"].stdout + seen["gc"].stderr
    assert seen["gc"].returncode != 0 and "removed" not in seen["gc"].stdout
    # once the launch is over (it failed), gc may take the unused layers
    gc = subprocess.run([sys.executable, "-m", "executor.cli", "gc", "--images"], cwd=REPO,
                        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
                        capture_output=True, text=True, timeout=120, check=False)
    assert gc.returncode == 0, gc.stderr
    assert not any(Path(p).exists() for p in seen["layers"])


def test_the_executor_honours_insecure_registries_as_the_cli_does(tmp_path: Path) -> None:
    env = {**_env(tmp_path), "HYPERVM_INSECURE_REGISTRIES": "registry.test:5000"}
    vm_runtime = load_runtime(env)
    launcher = vm_runtime.launcher  # type: ignore[attr-defined]
    assert "registry.test:5000" in launcher.images.insecure_registries
    cli = Launcher(config_from_env(env), env)
    assert cli.images.insecure_registries == launcher.images.insecure_registries
    plan = PodPlan("p", (), 1, 128, tmp_path)
    assert vm_runtime.create_pod(plan)._launcher is launcher  # type: ignore[attr-defined]
