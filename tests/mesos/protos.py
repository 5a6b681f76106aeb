"""The official Mesos v1 protos, compiled at test time, and the checks a real agent applies.

``load()`` compiles ``<repo>/../shared/mesos/v1/**/*.proto`` with grpcio-tools into a temporary
directory once per process and imports the generated modules. ``parse()`` turns a JSON object
into a message with ``json_format.Parse(ignore_unknown_fields=False)``: unknown fields, bad enum
names, wrong types and missing required fields are violations. ``CallChecker`` adds the semantic
rules of the agent (src/slave/validation.cpp, src/slave/http.cpp) and records every violation;
tests assert that none was recorded.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import json
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED = REPO_ROOT.parent / "shared"
PROTO_DIR = SHARED / "mesos" / "v1"

_lock = threading.Lock()
_modules: dict[str, ModuleType] = {}


class ProtoViolation(Exception):
    """A message breaks the Mesos v1 protos or a rule the agent enforces."""


def _compile() -> dict[str, ModuleType]:
    out = Path(tempfile.mkdtemp(prefix="hypervm-mesos-protos-"))
    protos = sorted(str(p) for p in PROTO_DIR.rglob("*.proto"))
    if not protos:
        raise RuntimeError(f"no .proto files under {PROTO_DIR}")
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{SHARED}", f"--python_out={out}",
           *protos]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"protoc failed: {result.stderr}")
    sys.path.insert(0, str(out))
    importlib.invalidate_caches()
    return {
        "mesos": importlib.import_module("mesos.v1.mesos_pb2"),
        "executor": importlib.import_module("mesos.v1.executor.executor_pb2"),
        "scheduler": importlib.import_module("mesos.v1.scheduler.scheduler_pb2"),
    }


def load() -> dict[str, ModuleType]:
    """The generated modules: ``mesos`` (mesos_pb2), ``executor``, ``scheduler``."""
    with _lock:
        if not _modules:
            _modules.update(_compile())
        return _modules


def message_class(name: str) -> type[Message]:
    """``"executor.Call"``, ``"mesos.TaskGroupInfo"`` … → the generated class."""
    module, _, path = name.partition(".")
    obj: Any = load()[module]
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def parse(name: str, data: dict[str, Any] | str) -> Message:
    """Parse JSON into message ``name``; raise ProtoViolation for anything the protos forbid."""
    cls = message_class(name)
    text = data if isinstance(data, str) else json.dumps(data)
    try:
        msg = json_format.Parse(text, cls(), ignore_unknown_fields=False)
    except json_format.ParseError as e:
        raise ProtoViolation(f"{name}: {e}") from e
    missing = msg.FindInitializationErrors()
    if missing:
        raise ProtoViolation(f"{name}: missing required fields {missing}")
    return msg


def to_dict(msg: Message) -> dict[str, Any]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def valid_uuid(value: str) -> bool:
    """True when ``value`` is base64 of exactly 16 bytes (what ``id::UUID::fromBytes`` needs)."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(raw) == 16


@dataclass
class CallChecker:
    """Semantic rules of the agent's executor endpoint for one executor.

    ``check(call_json)`` returns the parsed Call or raises ProtoViolation with the message the
    agent would answer 400 with. Rules that a real agent does not reject but that the issue
    forbids (TASK_KILLING without the capability, updates for unknown tasks) go to ``soft``.
    """

    framework_id: str
    executor_id: str
    task_killing_state: bool = False
    launched_tasks: set[str] = field(default_factory=set)
    violations: list[str] = field(default_factory=list)

    def record(self, text: str) -> None:
        self.violations.append(text)

    def check(self, data: dict[str, Any] | str) -> Message:
        try:
            call = parse("executor.Call", data)
            self._check_semantics(call)
        except ProtoViolation as e:
            self.record(str(e))
            raise
        return call

    def _check_semantics(self, call: Any) -> None:
        executor_pb2 = load()["executor"]
        Call = executor_pb2.Call
        if not call.HasField("type"):
            raise ProtoViolation("Expecting 'type' to be present")
        if not call.HasField("framework_id") or not call.HasField("executor_id"):
            raise ProtoViolation("Expecting 'framework_id' and 'executor_id' to be present")
        if call.framework_id.value != self.framework_id:
            raise ProtoViolation(f"Framework {call.framework_id.value} cannot be found")
        if call.executor_id.value != self.executor_id:
            raise ProtoViolation(f"Executor {call.executor_id.value} cannot be found")
        set_fields = {f.name for f, _ in call.ListFields()} - {"type", "framework_id",
                                                                "executor_id"}
        expected = {Call.SUBSCRIBE: "subscribe", Call.UPDATE: "update", Call.MESSAGE: "message",
                    Call.HEARTBEAT: None}.get(call.type, "?")
        if expected == "?":
            raise ProtoViolation(f"unknown call type {call.type}")
        if expected and expected not in set_fields:
            raise ProtoViolation(f"Expecting '{expected}' to be present")
        extra = set_fields - ({expected} if expected else set())
        if extra:
            raise ProtoViolation(f"{Call.Type.Name(call.type)} call carries {sorted(extra)}")
        if call.type == Call.UPDATE:
            self.check_status(call.update.status)
        if call.type == Call.SUBSCRIBE:
            for update in call.subscribe.unacknowledged_updates:
                self.check_status(update.status)

    def check_status(self, status: Any) -> None:
        mesos_pb2 = load()["mesos"]
        if not status.HasField("uuid"):
            raise ProtoViolation("Expecting 'uuid' to be present")
        if len(status.uuid) != 16:
            raise ProtoViolation(f"Invalid UUID: {len(status.uuid)} bytes instead of 16")
        if status.HasField("executor_id") and status.executor_id.value != self.executor_id:
            raise ProtoViolation(
                f"ExecutorID in Call: {self.executor_id} does not match ExecutorID in "
                f"TaskStatus: {status.executor_id.value}")
        if status.source != mesos_pb2.TaskStatus.SOURCE_EXECUTOR:
            raise ProtoViolation(f"Received Call from executor {self.executor_id} with invalid "
                                 "source, expecting 'SOURCE_EXECUTOR'")
        if status.state == mesos_pb2.TASK_STAGING:
            raise ProtoViolation(f"Received TASK_STAGING from executor {self.executor_id} "
                                 "which is not allowed")
        # Not rejected by a real agent, but forbidden for us: recorded, the call is accepted.
        if status.state == mesos_pb2.TASK_KILLING and not self.task_killing_state:
            self.record(f"TASK_KILLING for {status.task_id.value} without the framework's "
                        "TASK_KILLING_STATE capability")
        if status.task_id.value not in self.launched_tasks:
            self.record(f"update for task {status.task_id.value} that the agent never launched")


def recordio_chunk(event: dict[str, Any]) -> bytes:
    """One event as Mesos streams it: a RecordIO record (``<len>\n<json>``) in an HTTP chunk."""
    raw = json.dumps(event).encode()
    record = f"{len(raw)}\n".encode() + raw
    return f"{len(record):x}\r\n".encode() + record + b"\r\n"
