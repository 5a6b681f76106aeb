"""A real Apache Mesos 1.11 master + agent (``../shared/realmesos``, one ``mesos-local`` process)
for the tests: start/stop/restart through its ``run-local.sh``, and what the master and the agent
report over HTTP (``/state``, ``/tasks``, ``/files/read``, the agent's ``/containers``).

Each :class:`RealMesos` has its own work dir and port (several can run at once), and runs
``hypervm-executor`` from the venv the tests run in, importing this checkout (``PYTHONPATH``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[2]
#: setup.sh's prefix (the Makefile's `realmesos` target builds it there)
DEFAULT_PREFIX = Path("/var/lib/hypervm/realmesos")
AGENT_ID = "slave(1)"
EXECUTOR_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def source_dir() -> Path:
    """../shared/realmesos (CI clones the project beside ../shared); REALMESOS_SRC overrides."""
    if os.environ.get("REALMESOS_SRC"):
        return Path(os.environ["REALMESOS_SRC"])
    return REPO_ROOT.parent / "shared" / "realmesos"


def prefix() -> Path:
    return Path(os.environ.get("REALMESOS_PREFIX") or DEFAULT_PREFIX)


def missing() -> str | None:
    """Why the real Mesos cannot run here, or None."""
    if os.geteuid() != 0:
        return "the real Mesos agent runs executors as root"
    if not (source_dir() / "run-local.sh").is_file():
        return f"no {source_dir()}/run-local.sh (set REALMESOS_SRC)"
    if not (prefix() / "bin" / "mesos-local").is_file():
        return f"no {prefix()}/bin/mesos-local: run `make realmesos`"
    return None


def executor_command() -> str:
    """The absolute path of hypervm-executor in the venv running the tests (HYPERVM_TEST_EXECUTOR
    overrides it: a worktree run with another checkout's venv needs a script of its own)."""
    return os.environ.get("HYPERVM_TEST_EXECUTOR") or str(Path(sys.executable).parent /
                                                       "hypervm-executor")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RealMesos:
    """One mesos-local. ``flags``: extra ``MESOS_*`` master/agent flags (environment names)."""

    def __init__(self, work: Path, flags: Mapping[str, str] | None = None,
                 executor_env: Mapping[str, str] | None = None) -> None:
        self.work = work
        self.port = free_port()
        self.master = f"127.0.0.1:{self.port}"
        self.flags = dict(flags or {})
        self.executor_env = self._executor_env(executor_env or {})

    @staticmethod
    def _executor_env(extra: Mapping[str, str]) -> dict[str, str]:
        """--executor_environment_variables: the agent gives executors only these (+ MESOS_*)."""
        env = {k: v for k, v in os.environ.items() if k.startswith("HYPERVM_") or k == "LANG"}
        env.pop("HYPERVM_EXECUTOR_RUNTIME", None)
        env.update({"PATH": EXECUTOR_PATH, "PYTHONPATH": str(REPO_ROOT), "HYPERVM_POOL": "off"})
        env.update(extra)
        return env

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MESOS_", "LIBPROCESS_"))}
        env.update({
            "REALMESOS_PREFIX": str(prefix()), "REALMESOS_WORK": str(self.work),
            "MESOS_PORT": str(self.port),
            "MESOS_EXECUTOR_ENVIRONMENT_VARIABLES": json.dumps(self.executor_env),
            # killing a task and destroying its VM takes seconds (DEVELOPERS.md)
            "MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD": "10secs",
        })
        env.update(self.flags)
        return env

    def run_local(self, *args: str, timeout: float = 60) -> str:
        proc = subprocess.run([str(source_dir() / "run-local.sh"), *args], env=self.env(),
                              capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"run-local.sh {' '.join(args)} failed ({proc.returncode}):\n"
                               f"{proc.stdout}{proc.stderr}\n{self.log_tail()}")
        log.info("run-local.sh %s: %s", " ".join(args), proc.stdout.strip())
        return proc.stdout

    def start(self, fresh: bool = True) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.work.chmod(0o755)  # QEMU (libvirt-qemu) must traverse to the sandboxes
        self.run_local("start", *(["--fresh"] if fresh else []))

    def stop(self, keep_executors: bool = False) -> None:
        self.run_local("stop", *(["--keep-executors"] if keep_executors else []))
        root = self.flags.get("MESOS_CGROUPS_ROOT")
        if root and not keep_executors:  # run-local.sh removes its containers' cgroups only
            for cgroup in Path("/sys/fs/cgroup").glob(f"*/{root}"):
                try:
                    cgroup.rmdir()
                except OSError as e:
                    log.warning("cannot remove %s: %s", cgroup, e)

    # ---------------------------------------------------------------- what Mesos reports

    def get(self, path: str, query: Mapping[str, Any] | None = None, timeout: float = 10) -> Any:
        url = f"http://{self.master}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())

    def state(self) -> Any:
        """The master's /state."""
        return self.get("/state")

    def agent_state(self) -> Any:
        return self.get(f"/{AGENT_ID}/state")

    def tasks(self) -> dict[str, Any]:
        """The master's /tasks, by task id."""
        return {t["id"]: t for t in self.get("/tasks", {"limit": 1000})["tasks"]}

    def containers(self) -> list[Any]:
        """The agent's /containers (resource statistics of each container)."""
        result: list[Any] = self.get(f"/{AGENT_ID}/containers")
        return result

    def executor_directory(self, executor_id: str) -> Path:
        """The executor's sandbox, as the agent's /state reports it."""
        state = self.agent_state()
        for framework in (*state["frameworks"], *state.get("completed_frameworks", [])):
            for ex in (*framework["executors"], *framework.get("completed_executors", [])):
                if ex["id"] == executor_id:
                    return Path(ex["directory"])
        raise KeyError(f"the agent knows no executor {executor_id!r}")

    def read_file(self, path: Path) -> str:
        """A sandbox file through the agent's /files/read (all of it, up to 1 MiB)."""
        for prefix_ in (f"/{AGENT_ID}/files/read", "/files/read"):
            try:
                data = self.get(prefix_, {"path": str(path), "offset": 0, "length": 1 << 20})
            except urllib.error.HTTPError as e:
                if e.code == 404:
                    continue
                raise
            return str(data["data"])
        raise FileNotFoundError(f"the agent's /files/read does not serve {path}")

    def teardown(self, framework_id: str) -> None:
        """The operator ends a framework (its executors, and so their VMs, go)."""
        req = urllib.request.Request(f"http://{self.master}/teardown",
                                     data=f"frameworkId={framework_id}".encode(),
                                     method="POST")
        with urllib.request.urlopen(req, timeout=10):
            pass

    def log_tail(self, n: int = 60) -> str:
        path = self.work / "mesos-local.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])

    def wait(self, predicate: Any, timeout: float, what: str, every: float = 0.2) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(every)
