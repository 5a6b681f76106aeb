"""The host side of init/PROTOCOL.md: frame layout, message types, limits, codecs.

The only Python module that knows the bytes of the host↔guest protocol. Pure: no I/O.
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from executor.errors import ProtocolError

VERSION = 1
PORT_NAME = "org.hypervm.channel.0"
MAX_PAYLOAD = 1024 * 1024
HEADER = struct.Struct(">IHHI")  # length, type, flags, id
HEADER_SIZE = HEADER.size  # 12


class MsgType(enum.IntEnum):
    READY = 0x01
    OK = 0x02
    ERROR = 0x03
    START = 0x10
    EXEC = 0x11
    SIGNAL = 0x12
    POWEROFF = 0x13
    PING = 0x14
    NETWORK = 0x15
    PREPARE = 0x16
    STDIN = 0x20
    STDOUT = 0x21
    STDERR = 0x22
    EXIT = 0x23


#: requests the host sends; each gets exactly one OK or ERROR with the same id
REQUESTS = frozenset({MsgType.START, MsgType.EXEC, MsgType.SIGNAL, MsgType.POWEROFF, MsgType.PING,
                      MsgType.NETWORK, MsgType.PREPARE})
#: frames whose id is a process handle rather than a request id
PROCESS_FRAMES = frozenset({MsgType.STDIN, MsgType.STDOUT, MsgType.STDERR, MsgType.EXIT})
#: ERROR codes that mean "the command could not be executed", with the shell's exit status
EXEC_FAILURE_STATUS = {"ENOENT": 127, "EACCES": 126}
#: EXIT ``reason`` of a container's main process whose container the OOM killer hit
REASON_OOM = "oom"
MIB = 1024 * 1024
#: START ``limits`` bounds (init/src/parse.h)
MIN_MEMORY_LIMIT_MIB = 4
MIN_SCRATCH_LIMIT_MIB = 1
MAX_LIMIT_MIB = 1 << 30
MAX_PIDS_LIMIT = 4194304


@dataclass(frozen=True)
class Frame:
    type: MsgType
    id: int
    payload: bytes = b""

    def json(self) -> dict[str, Any]:
        """The payload as a JSON object; ProtocolError when it is not one."""
        try:
            value = json.loads(self.payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ProtocolError(f"{self.type.name} frame carries invalid JSON: {e}") from e
        if not isinstance(value, dict):
            raise ProtocolError(f"{self.type.name} frame payload is not a JSON object")
        return value


def encode(type_: MsgType, id_: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD} maximum")
    if not 0 <= id_ < 2**32:
        raise ProtocolError(f"frame id {id_} out of range")
    return HEADER.pack(len(payload), int(type_), 0, id_) + payload


def encode_json(type_: MsgType, id_: int, obj: dict[str, Any]) -> bytes:
    return encode(type_, id_, json.dumps(obj, separators=(",", ":")).encode())


def limits_payload(memory_mib: int | None = None, pids: int | None = None,
                   scratch_mib: int | None = None) -> dict[str, int] | None:
    """START's ``limits`` object (memory and scratch in bytes); None when nothing is limited.
    Values out of init's ranges raise ProtocolError (podspec validates them first)."""
    limits: dict[str, int] = {}
    for key, value, low, high, unit in (
            ("memory", memory_mib, MIN_MEMORY_LIMIT_MIB, MAX_LIMIT_MIB, MIB),
            ("pids", pids, 2, MAX_PIDS_LIMIT, 1),
            ("scratch", scratch_mib, MIN_SCRATCH_LIMIT_MIB, MAX_LIMIT_MIB, MIB)):
        if value is None:
            continue
        if not low <= value <= high:
            raise ProtocolError(f"limits.{key}: {value} is out of range {low}..{high}")
        limits[key] = value * unit
    return limits or None


def encode_stdin(handle: int, data: bytes) -> Iterator[bytes]:
    """STDIN frames for ``data``, split at the maximum payload; ``b""`` yields the EOF frame."""
    if not data:
        yield encode(MsgType.STDIN, handle, b"")
        return
    for start in range(0, len(data), MAX_PAYLOAD):
        yield encode(MsgType.STDIN, handle, data[start:start + MAX_PAYLOAD])


class FrameDecoder:
    """Incremental decoder: ``feed(bytes)`` returns the complete frames received so far.

    A header with an oversized length, non-zero flags or an unknown type raises ProtocolError;
    after that the stream cannot be trusted and the decoder refuses further input.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._broken = False

    def feed(self, data: bytes) -> list[Frame]:
        if self._broken:
            raise ProtocolError("channel stream is broken after an earlier framing error")
        self._buf += data
        frames: list[Frame] = []
        while len(self._buf) >= HEADER_SIZE:
            length, type_, flags, id_ = HEADER.unpack_from(self._buf)
            if length > MAX_PAYLOAD or flags != 0:
                self._broken = True
                raise ProtocolError(
                    f"bad frame header (length {length}, flags {flags:#x}): stream out of sync"
                )
            try:
                msg_type = MsgType(type_)
            except ValueError as e:
                self._broken = True
                raise ProtocolError(f"unknown frame type {type_:#x}") from e
            if len(self._buf) < HEADER_SIZE + length:
                break
            payload = bytes(self._buf[HEADER_SIZE:HEADER_SIZE + length])
            del self._buf[:HEADER_SIZE + length]
            frames.append(Frame(msg_type, id_, payload))
        return frames

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf)


@dataclass(frozen=True)
class ExitStatus:
    """How a guest process ended: ``status`` for a normal exit, ``signal`` when killed; both
    None when the VM (or its channel) went away before the process reported its exit.
    ``reason``: REASON_OOM when the kernel's OOM killer ended the process's container."""

    status: int | None
    signal: int | None
    reason: str | None = None

    @property
    def code(self) -> int:
        """The shell convention: the exit status, or 128 + the signal number."""
        if self.signal is not None:
            return 128 + self.signal
        return self.status if self.status is not None else 255

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> ExitStatus:
        status, signal = payload.get("status"), payload.get("signal")
        reason = payload.get("reason")
        if not (isinstance(status, int) or status is None) or not (
            isinstance(signal, int) or signal is None
        ) or (status is None) == (signal is None) or not (
            reason is None or isinstance(reason, str)
        ):
            raise ProtocolError(f"EXIT payload is invalid: {payload!r:.200}")
        # a reason this host does not know (a newer init's) is no reason
        return cls(status, signal, REASON_OOM if reason == REASON_OOM else None)

    @property
    def oom_killed(self) -> bool:
        return self.reason == REASON_OOM

    @property
    def lost(self) -> bool:
        return self.status is None and self.signal is None

    def describe(self) -> str:
        if self.signal is not None and self.oom_killed:
            return f"killed by signal {self.signal}: out of memory (the container's memory limit)"
        if self.signal is not None:
            return f"killed by signal {self.signal}"
        if self.lost:
            return "lost: the VM stopped before the process exited"
        return f"exited with status {self.status}"
