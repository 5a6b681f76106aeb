"""A fake pod runtime for executor tests: every "container" is a local process group.

Selected in the executor process by ``HYPERVM_EXECUTOR_RUNTIME=tests.mesos.fake_runtime:factory``
(the agent double sets it). Images are a small table (:data:`IMAGES`); any other ref behaves like
a plain image with ``Cmd ["/bin/sh"]``, refs containing ``unknown`` fail to pull, and
``fake/boot-fails`` fails to boot, ``fake/deaf`` ignores every signal request (a guest that
ignores kills); in a ``fake/oom`` image a SIGKILL death is reported as an OOM kill (EXIT reason
"oom", as init reports a container whose cgroup ran out of memory). The
containers are built with the executor's real pure code
(:func:`executor.mesos.runtime.build_container`) and run on the host with the task's sandbox as
the working directory. Every boot/start/destroy is appended as JSON to
``$MESOS_SANDBOX/fake-runtime.jsonl`` so tests can check what the executor asked for.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from executor.guest.protocol import REASON_OOM, ExitStatus
from executor.mesos.health import http_status
from executor.mesos.runtime import (
    OnExit,
    Output,
    PodPlan,
    build_container,
    container_names,
    pod_network,
)
from hypervm.config import config_from_env
from hypervm.errors import BootError, GuestError, ImageError
from hypervm.limits import task_limits
from vmimage.images.config import ImageConfig

HOST_PATH = os.environ.get("PATH", "/usr/bin:/bin")
IMAGES = {
    "fake/entrypoint": ImageConfig(entrypoint=("/bin/echo", "entry"), cmd=("default",)),
    "fake/empty": ImageConfig(),
}
PLAIN = ImageConfig(cmd=("/bin/sh",))


def factory(env: Mapping[str, str]) -> FakeRuntime:
    return FakeRuntime(Path(env.get("MESOS_SANDBOX", ".")))


class FakeRuntime:
    def __init__(self, sandbox: Path) -> None:
        self.journal = sandbox / "fake-runtime.jsonl"
        self.lock = threading.Lock()

    def record(self, **event: Any) -> None:
        with self.lock, open(self.journal, "a") as f:
            f.write(json.dumps(event) + "\n")

    def create_pod(self, plan: PodPlan) -> FakePod:
        return FakePod(self, plan)


class FakePod:
    def __init__(self, runtime: FakeRuntime, plan: PodPlan) -> None:
        self.runtime, self.plan = runtime, plan
        self.network = pod_network(plan.tasks)  # the same validation as the VM runtime
        self.containers: dict[str, Any] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.destroyed = False

    def boot(self) -> None:
        names = container_names(self.plan.tasks)
        for task in self.plan.tasks:
            if "unknown" in task.image:
                raise ImageError(task.image, "manifest unknown: the registry has no such image")
            config = IMAGES.get(task.image.split(":")[0], PLAIN)
            self.containers[task.task_id] = build_container(
                task, names[task.task_id], (Path("/fake/layer0"),), config, lambda _: (0, 0, ()),
                self.plan, task_limits(task, config_from_env()))
        if any(t.image.startswith("fake/boot-fails") for t in self.plan.tasks):
            raise BootError("hypervm-fake did not boot: no READY from the guest within 1 s")
        if any(t.image.startswith("fake/slow-boot") for t in self.plan.tasks):
            time.sleep(2)
        self.runtime.record(event="boot", pod=self.plan.name, vcpus=self.plan.vcpus,
                            memory_mib=self.plan.memory_mib, tenant=self.network.tenant,
                            ports=[[m.host_port, m.container_port, m.protocol]
                                   for m in self.network.ports],
                            containers={
                                tid: {"args": list(c.process.args), "env": list(c.process.env),
                                      "mounts": [[m.destination, str(m.source), m.readonly]
                                                 for m in c.mounts],
                                      "limits": [c.limits.memory_mib, c.limits.pids,
                                                 c.limits.scratch_mib]}
                                for tid, c in self.containers.items()})

    def _spawn(self, task_id: str, argv: tuple[str, ...], env: tuple[str, ...],
               **kwargs: Any) -> subprocess.Popen[bytes]:
        environ = dict(item.partition("=")[::2] for item in env)
        environ.setdefault("PATH", HOST_PATH)
        cwd = self.plan.task_sandboxes.get(task_id, self.plan.sandbox)
        try:
            return subprocess.Popen(list(argv), env=environ, cwd=cwd, start_new_session=True,
                                    stdin=subprocess.DEVNULL, **kwargs)
        except FileNotFoundError as e:
            raise GuestError("ENOENT", f"{argv[0]}: command not found") from e
        except PermissionError as e:
            raise GuestError("EACCES", f"{argv[0]}: permission denied") from e

    def send_start(self, task_id: str, on_stdout: Output, on_stderr: Output,
                   on_exit: OnExit) -> Callable[[], None]:
        """The process starts in the wait (no guest to send to): as :meth:`start`."""
        return functools.partial(self.start, task_id, on_stdout, on_stderr, on_exit)

    def start(self, task_id: str, on_stdout: Output, on_stderr: Output, on_exit: OnExit) -> None:
        process = self.containers[task_id].process
        task_image = next(t.image for t in self.plan.tasks if t.task_id == task_id)
        proc = self._spawn(task_id, process.args, process.env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
        self.procs[task_id] = proc
        self.runtime.record(event="start", task=task_id, pid=proc.pid)
        readers = [threading.Thread(target=_pump, args=(proc.stdout, on_stdout), daemon=True),
                   threading.Thread(target=_pump, args=(proc.stderr, on_stderr), daemon=True)]
        for reader in readers:
            reader.start()

        def wait() -> None:
            code = proc.wait()
            for reader in readers:
                reader.join()
            status = ExitStatus(code, None) if code >= 0 else ExitStatus(None, -code)
            if code == -signal.SIGKILL and task_image.startswith("fake/oom"):
                status = ExitStatus(None, signal.SIGKILL, REASON_OOM)
            self.runtime.record(event="exit", task=task_id, code=status.code)
            on_exit(status)

        threading.Thread(target=wait, daemon=True).start()

    def signal(self, task_id: str, signum: int) -> None:
        proc = self.procs[task_id]
        self.runtime.record(event="signal", task=task_id, signal=signum)
        if any(t.image.startswith("fake/deaf") for t in self.plan.tasks):
            return  # a hostile guest: it takes signal requests and does nothing
        with contextlib.suppress(ProcessLookupError):
            if signum == signal.SIGKILL:
                os.killpg(proc.pid, signum)
            else:
                os.kill(proc.pid, signum)

    def run_check(self, task_id: str, argv: tuple[str, ...], env: tuple[str, ...],
                  timeout: float) -> int:
        base = self.containers[task_id].process
        proc = self._spawn(task_id, argv, (*base.env, *env), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise TimeoutError(f"the check did not finish within {timeout:g} s") from None

    def probe_tcp(self, task_id: str, port: int, timeout: float) -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True

    def probe_http(self, task_id: str, scheme: str, port: int, path: str,
                   timeout: float) -> int:
        # the executor's own probe (health.http_status), against the host's loopback
        return http_status(scheme, "127.0.0.1", port, path, timeout)

    def destroy(self) -> None:
        if self.destroyed:
            return
        self.destroyed = True
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        self.runtime.record(event="destroy", pod=self.plan.name)


def _pump(stream: Any, sink: Output) -> None:
    for chunk in iter(lambda: stream.read1(65536), b""):
        sink(chunk)


def journal(sandbox: Path) -> list[dict[str, Any]]:
    path = sandbox / "fake-runtime.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]
