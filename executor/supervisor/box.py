"""A detached container's box: ``HYPERVM_RUN_DIR/containers/NAME/`` (0700, root), holding

- ``state.json``: name, VM id, image, command, status, exit code, supervisor pid, events;
- ``output.log`` (+ ``output.log.1``): the rotated output (executor.supervisor.logfile);
- ``supervisor.sock``: the supervisor's session socket (executor.session), 0600;
- ``pod.pickle``: the pod the CLI hands to the supervisor (removed once read);
- ``supervisor.log``: the supervisor's own log.

The directory's name is the container's name: ``mkdir`` makes names unique. The state outlives
the supervisor and the CLI; ``hypervm rm`` removes the box.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from hypervm.config import HostConfig
from hypervm.errors import HyperVMError, InvalidSpec
from hypervm.frozen import frozen_dataclass

STATE = "state.json"
#: events kept in the state (the oldest go first)
MAX_EVENTS = 100
SUPERVISOR_MODULE = "executor.supervisor"


class NoSuchContainer(HyperVMError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no such container: {name} (see hypervm ps -a)")


def containers_dir(cfg: HostConfig) -> Path:
    return cfg.run_dir / "containers"


def default_name() -> str:
    return f"run-{os.urandom(3).hex()}"


def now() -> float:
    return time.time()


@frozen_dataclass
class Box:
    """The state directory of one detached VM's supervisor."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def state_file(self) -> Path:
        return self.path / STATE

    @property
    def socket(self) -> Path:
        return self.path / "supervisor.sock"

    @property
    def log_file(self) -> Path:
        return self.path / "output.log"

    @property
    def pod_file(self) -> Path:
        return self.path / "pod.pickle"

    @property
    def supervisor_log(self) -> Path:
        return self.path / "supervisor.log"

    @classmethod
    def create(cls, cfg: HostConfig, name: str) -> Box:
        """A new box for ``name``; InvalidSpec naming --name when it is taken."""
        parent = containers_dir(cfg)
        parent.mkdir(parents=True, exist_ok=True)
        os.chmod(parent, 0o700)
        try:
            (parent / name).mkdir(mode=0o700)
        except FileExistsError as e:
            raise InvalidSpec("--name", f"the name {name!r} is in use",
                              hint=f"choose another, or remove it: hypervm rm -f {name}") from e
        return cls(parent / name)

    def read(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {"name": self.name, "status": "created", "events": []}
        except ValueError:
            return {"name": self.name, "status": "unknown", "events": []}

    def write(self, state: dict[str, Any]) -> None:
        tmp = self.path / f".{STATE}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(state, f, indent=1)
        os.replace(tmp, self.state_file)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def supervisor_alive(self, state: dict[str, Any] | None = None) -> bool:
        """Whether the state's supervisor pid is still our supervisor (not a reused pid)."""
        pid = (state or self.read()).get("supervisor_pid")
        if not isinstance(pid, int) or pid <= 0:
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return SUPERVISOR_MODULE.encode() in cmdline and str(self.path).encode() in cmdline

    def current(self) -> dict[str, Any]:
        """The state, with a running container whose supervisor died reported as exited."""
        state = self.read()
        if state.get("status") in ("created", "running") and not self.supervisor_alive(state):
            if state.get("status") == "running" or time.time() - state.get("created", 0) > 300:
                state["status"] = "exited"
                state.setdefault("exit_code", 255)
                state["error"] = "the supervisor is gone (the VM went with it)"
        return state


def add_event(state: dict[str, Any], event: str, **fields: Any) -> None:
    events = state.setdefault("events", [])
    events.append({"time": now(), "event": event, **fields})
    del events[:-MAX_EVENTS]


def all_boxes(cfg: HostConfig) -> list[Box]:
    parent = containers_dir(cfg)
    if not parent.is_dir():
        return []
    return sorted((Box(p) for p in parent.iterdir() if p.is_dir()),
                  key=lambda b: b.read().get("created", 0))


def find(cfg: HostConfig, ref: str) -> Box:
    """The box named ``ref``, or whose VM id is ``ref``; NoSuchContainer otherwise."""
    if not ref or "/" in ref or ref in (".", ".."):
        raise NoSuchContainer(ref)
    box = Box(containers_dir(cfg) / ref)
    if box.path.is_dir():
        return box
    for other in all_boxes(cfg):
        if other.read().get("id") == ref:
            return other
    raise NoSuchContainer(ref)
