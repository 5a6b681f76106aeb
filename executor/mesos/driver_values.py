"""The executor's settings from the agent's environment (MESOS_* variables, as Mesos' executor
library reads them) and the values of a status update; pure."""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from executor.mesos.fields import valid_id
from hypervm.errors import InvalidSpec
from hypervm.frozen import frozen_dataclass

_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "secs": 1.0, "mins": 60.0, "hrs": 3600.0,
          "days": 86400.0, "weeks": 604800.0}
#: matched whole (fullmatch), ASCII only (``\d`` alone is any Unicode digit; float() reads them)
_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ns|us|ms|secs|mins|hrs|days|weeks)\s*",
                          re.ASCII)

#: Mesos' defaults (src/slave/constants.hpp)
DEFAULT_SHUTDOWN_GRACE_S = 5.0
DEFAULT_RECOVERY_TIMEOUT_S = 15 * 60.0
DEFAULT_BACKOFF_MAX_S = 2.0
#: the executor API's path on an agent known only by MESOS_AGENT_ENDPOINT
PLAIN_API_PATH = "/api/v1/executor"
#: a libprocess UPID: ``id@ip:port`` (the id may hold parentheses: ``slave(1)``), matched
#: whole: its id becomes the API's path, host:port the address the executor connects to
_UPID_RE = re.compile(r"([A-Za-z0-9_.()\-]+)@([^:@/\s]+):([0-9]{1,5})")
_ENDPOINT_RE = re.compile(r"[^:/\s]+:[0-9]{1,5}")


def parse_duration(text: str, name: str) -> float:
    """A Mesos Duration string ("5secs", "15mins", "100ms" …) in seconds."""
    match = _DURATION_RE.fullmatch(text)
    if not match:
        raise InvalidSpec(name, f"{text!r} is not a duration",
                          hint="use a number and a unit: ns, us, ms, secs, mins, hrs, days, weeks")
    return float(match.group(1)) * _UNITS[match.group(2)]


@frozen_dataclass
class ExecutorSettings:
    framework_id: str
    executor_id: str
    agent_endpoint: str
    sandbox: Path
    checkpoint: bool
    shutdown_grace_s: float
    recovery_timeout_s: float
    backoff_max_s: float
    auth_token: str | None = None
    #: the path of the agent's executor API on ``agent_endpoint``
    api_path: str = PLAIN_API_PATH


def agent_address(env: Mapping[str, str]) -> tuple[str, str]:
    """``(host:port, path)`` of the agent's executor API, as Mesos' executor library builds it:
    from ``MESOS_SLAVE_PID`` (``slave(1)@127.0.0.1:5051`` -> ``127.0.0.1:5051``,
    ``/slave(1)/api/v1/executor``), else ``MESOS_AGENT_ENDPOINT`` and ``/api/v1/executor``."""
    pid = env.get("MESOS_SLAVE_PID", "")
    if pid:
        match = _UPID_RE.fullmatch(pid)
        if not match:
            raise InvalidSpec("MESOS_SLAVE_PID", f"{pid!r} is not a libprocess PID id@ip:port",
                              hint="hypervm-executor must be started by a Mesos agent")
        upid_id, host, port = match.groups()
        return f"{host}:{port}", f"/{upid_id}{PLAIN_API_PATH}"
    endpoint = env.get("MESOS_AGENT_ENDPOINT", "")
    if not endpoint:
        raise InvalidSpec("MESOS_AGENT_ENDPOINT", "is not set (nor MESOS_SLAVE_PID)",
                          hint="hypervm-executor must be started by a Mesos agent")
    if not _ENDPOINT_RE.fullmatch(endpoint):
        raise InvalidSpec("MESOS_AGENT_ENDPOINT", f"{endpoint!r} is not host:port")
    return endpoint, PLAIN_API_PATH


def settings_from_env(env: Mapping[str, str]) -> ExecutorSettings:
    """What the agent tells its executor through the environment; InvalidSpec names the var."""
    def required(name: str) -> str:
        value = env.get(name, "")
        if not value:
            raise InvalidSpec(name, "is not set",
                              hint="hypervm-executor must be started by a Mesos agent")
        return value

    def mesos_id(name: str) -> str:  # logged; names the executor's groups
        value = required(name)
        if not valid_id(value):
            raise InvalidSpec(name, f"{value!r} is not a Mesos ID",
                              hint="use 1-255 characters without '/', '\\' or control characters")
        return value

    checkpoint_text = env.get("MESOS_CHECKPOINT", "0")
    if checkpoint_text not in ("0", "1"):
        raise InvalidSpec("MESOS_CHECKPOINT", f"{checkpoint_text!r} is not 0 or 1")

    def duration(name: str, default: float) -> float:
        return parse_duration(env[name], name) if env.get(name) else default

    endpoint, api_path = agent_address(env)
    return ExecutorSettings(
        framework_id=mesos_id("MESOS_FRAMEWORK_ID"),
        executor_id=mesos_id("MESOS_EXECUTOR_ID"),
        agent_endpoint=endpoint,
        sandbox=Path(env.get("MESOS_SANDBOX") or env.get("MESOS_DIRECTORY") or "."),
        checkpoint=checkpoint_text == "1",
        shutdown_grace_s=duration("MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD",
                                  DEFAULT_SHUTDOWN_GRACE_S),
        recovery_timeout_s=duration("MESOS_RECOVERY_TIMEOUT", DEFAULT_RECOVERY_TIMEOUT_S),
        backoff_max_s=duration("MESOS_SUBSCRIPTION_BACKOFF_MAX", DEFAULT_BACKOFF_MAX_S),
        auth_token=env.get("MESOS_EXECUTOR_AUTHENTICATION_TOKEN") or None,
        api_path=api_path,
    )


def new_status_fields() -> dict[str, Any]:
    """uuid (base64 of 16 bytes), timestamp and source for a TaskStatus."""
    return {"uuid": base64.b64encode(uuid.uuid4().bytes).decode("ascii"),
            "timestamp": time.time(), "source": "SOURCE_EXECUTOR"}



def uuid_of(status: Mapping[str, Any]) -> uuid.UUID:
    return uuid.UUID(bytes=base64.b64decode(status["uuid"]))


def describe(status: Mapping[str, Any]) -> str:
    """One line for the log."""
    fields = {k: status[k] for k in ("state", "reason", "message", "healthy") if k in status}
    return f"{status['task_id']['value']}: {json.dumps(fields)}"
