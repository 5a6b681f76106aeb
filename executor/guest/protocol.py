"""The host side of init/PROTOCOL.md: frame layout, message types, limits, codecs.

The only Python module that knows the bytes of the host↔guest protocol. Pure: no I/O.
"""

from __future__ import annotations

import enum
import json
import re
import struct
from collections.abc import Iterator
from dataclasses import field

from hypervm.errors import ProtocolError
from hypervm.frozen import frozen_dataclass
from hypervm.podspec import DEFAULT_PATH, Process

#: typing.TYPE_CHECKING without importing typing (~3 ms of a cold run's start)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

VERSION = 1
PORT_NAME = "org.hypervm.channel.0"
MAX_PAYLOAD = 1024 * 1024
HEADER = struct.Struct(">IHHI")  # length, type, flags, id
HEADER_SIZE = HEADER.size  # 12
#: the guest is hostile: what it sends is bounded in size, shape and number before use.
#: Its JSON replies are small flat objects; nesting is checked before json.loads recurses
MAX_GUEST_JSON = 64 * 1024
MAX_JSON_DEPTH = 16
#: text from the guest (error messages, kernel release) kept at most, control chars replaced
MAX_GUEST_TEXT = 1024
MAX_PID = 4 * 1024 * 1024  # the kernel's PID_MAX_LIMIT
MAX_SIGNAL = 64
MAX_ERRNO = 4095
_ERROR_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,31}")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


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
    RESIZE = 0x17
    RESEED = 0x18
    STDIN = 0x20
    STDOUT = 0x21
    STDERR = 0x22
    EXIT = 0x23


#: requests the host sends; each gets exactly one OK or ERROR with the same id
REQUESTS = frozenset({MsgType.START, MsgType.EXEC, MsgType.SIGNAL, MsgType.POWEROFF, MsgType.PING,
                      MsgType.NETWORK, MsgType.PREPARE, MsgType.RESIZE,
                      MsgType.RESEED})
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


@frozen_dataclass
class Frame:
    """One frame of the guest channel: its type, request id and raw payload."""

    type: MsgType
    id: int
    payload: bytes = b""

    def json(self, max_bytes: int = MAX_PAYLOAD) -> dict[str, Any]:
        """The payload as a JSON object; ProtocolError when it is not one, is larger than
        ``max_bytes`` or nests deeper than MAX_JSON_DEPTH (checked before parsing)."""
        if len(self.payload) > max_bytes:
            raise ProtocolError(f"{self.type.name} frame carries {len(self.payload)} bytes of "
                                f"JSON, more than the {max_bytes} allowed")
        if json_depth(self.payload) > MAX_JSON_DEPTH:
            raise ProtocolError(f"{self.type.name} frame carries JSON nested deeper than "
                                f"{MAX_JSON_DEPTH}")
        try:
            value = json.loads(self.payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ProtocolError(f"{self.type.name} frame carries invalid JSON: {e}") from e
        if not isinstance(value, dict):
            raise ProtocolError(f"{self.type.name} frame payload is not a JSON object")
        return value


    def guest_json(self) -> dict[str, Any]:
        """A JSON payload the guest sent: at most MAX_GUEST_JSON bytes."""
        return self.json(MAX_GUEST_JSON)


def json_depth(data: bytes) -> int:
    """How deep arrays/objects nest in ``data`` (brackets inside strings do not count), without
    recursing: a cheap count first, the scan only when there are enough brackets to matter."""
    if data.count(b"[") + data.count(b"{") <= MAX_JSON_DEPTH:
        return data.count(b"[") + data.count(b"{")
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _int_in(value: Any, low: int, high: int, what: str) -> int:
    """``value`` as an int in [low, high] (bools are not ints here); else ProtocolError."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ProtocolError(f"{what} from the guest is not an integer in {low}..{high}: "
                            f"{clip_text(repr(value), 40)}")
    return value


def clip_text(value: Any, limit: int = MAX_GUEST_TEXT) -> str:
    """Guest text made safe to log and report: a str, control chars replaced, at most
    ``limit`` characters (with a marker when cut)."""
    text = _CONTROL.sub("?", value if isinstance(value, str) else str(value))
    return text if len(text) <= limit else text[:limit] + "…[truncated]"


def reply_pid(reply: dict[str, Any]) -> int:
    """The ``pid`` of a START/EXEC OK reply, range-checked (0 when the guest sent none)."""
    if reply.get("pid") is None:
        return 0
    return _int_in(reply["pid"], 1, MAX_PID, "pid")


def error_fields(body: dict[str, Any]) -> tuple[str, str, int | None]:
    """(code, message, errno) of an ERROR payload: code [A-Z][A-Z0-9_]*, message clipped,
    errno 1..4095 or None; ProtocolError when the shape is wrong."""
    code = body.get("code", "EUNKNOWN")
    if not isinstance(code, str) or not _ERROR_CODE.fullmatch(code):
        raise ProtocolError(f"ERROR code from the guest is invalid: {clip_text(repr(code), 40)}")
    errno = body.get("errno")
    if errno is not None:
        errno = _int_in(errno, 1, MAX_ERRNO, "errno")
    return code, clip_text(body.get("message", "")), errno


def ready_fields(body: dict[str, Any]) -> dict[str, Any]:
    """A READY payload with its strings clipped (the version is checked by the channel)."""
    return {key: clip_text(value, 256) if isinstance(value, str) else value
            for key, value in body.items() if key in ("version", "kernel", "init")}


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


@frozen_dataclass
class ExitStatus:
    """How a guest process ended: ``status`` for a normal exit, ``signal`` when killed; both
    None when the VM (or its channel) went away before the process reported its exit.
    ``reason``: REASON_OOM when the kernel's OOM killer ended the process's container; for a
    lost process, why it was lost (e.g. the guest channel broke). Not part of equality."""

    status: int | None
    signal: int | None
    reason: str | None = field(default=None, compare=False)

    @property
    def code(self) -> int:
        """The shell convention: the exit status, or 128 + the signal number."""
        if self.signal is not None:
            return 128 + self.signal
        return self.status if self.status is not None else 255

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> ExitStatus:
        """From a guest's EXIT: exactly one of status (0..255) and signal (1..64), and an
        optional ``reason`` (only "oom" means anything: a newer init's reason is no reason)."""
        status, signal = payload.get("status"), payload.get("signal")
        reason = payload.get("reason")
        if (status is None) == (signal is None) or not (reason is None or isinstance(reason, str)):
            raise ProtocolError(f"EXIT payload is invalid: {clip_text(repr(payload), 200)}")
        known = REASON_OOM if reason == REASON_OOM else None
        if status is not None:
            return cls(_int_in(status, 0, 255, "exit status"), None, known)
        return cls(None, _int_in(signal, 1, MAX_SIGNAL, "exit signal"), known)

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
            return f"lost: {self.reason or 'the VM stopped before the process exited'}"
        return f"exited with status {self.status}"


def decode_header(header: bytes) -> tuple[int, MsgType | int, int, int]:
    """(payload length, type, flags, request id) of a frame header of HEADER_SIZE bytes."""
    length, type_, flags, id_ = HEADER.unpack(header)
    try:
        return length, MsgType(type_), flags, id_
    except ValueError:
        return length, type_, flags, id_


# --- request payloads (init/PROTOCOL.md, "Messages"): the only place that builds them --------

#: how long init waits for hot-added layer disks to appear (START rootfs.wait_ms)
LAYER_WAIT_MS = 10_000
#: the warm-up layer's disk serial in a pool VM; a pod's layers are l0, l1, …
WARMUP_SERIAL = "hvwarmup"
#: the 9p tag of a pool VM's single share; a pod's START mounts ``subdir``s of it
POOL_SHARE_TAG = "pool"
#: the pool's own requests on a VM's channel; the claimer's GuestChannel numbers its requests
#: and process handles from 1, and every reply and EXIT is consumed before the hand-over
POOL_REQUEST_ID = 0x7FFF_0000
WARMUP_HANDLE = 0x7FFF_0001


def layer_serial(index: int) -> str:
    """The disk serial of a pod's ``index``-th distinct layer (cold and warm VMs alike)."""
    return f"l{index}"


#: a PCI address as the guest's sysfs names it (START rootfs.pci): "dddd:bb:ss.f", lowercase
_PCI_ADDRESS = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[01][0-9a-f]\.[0-7]")


def layer_pci_address(slot: int) -> str:
    """The address of a disk at ``slot`` of the root bus, as START's ``rootfs.pci`` names it."""
    if not 0 <= slot <= 31:
        raise ProtocolError(f"PCI slot {slot!r} is out of range 0..31")
    return f"0000:00:{slot:02x}.0"


def process_payload(process: Process, defaults: tuple[str, ...] = (),
                    default_path: str = DEFAULT_PATH) -> dict[str, Any]:
    """The ``process`` object for a Process; ``defaults`` (KEY=VALUE, e.g. the
    PORT* variables) apply where the process's env does not set the key."""
    env = list(process.env)
    keys = {item.split("=", 1)[0] for item in env}
    env += [item for item in defaults if item.split("=", 1)[0] not in keys]
    if not any(item.startswith("PATH=") for item in env):
        env.insert(0, f"PATH={default_path}")
    return {
        "args": list(process.args),
        "env": env,
        "cwd": process.cwd,
        "uid": process.uid,
        "gid": process.gid,
        "additional_gids": list(process.additional_gids),
        "stdin": process.stdin,
        **({"tty": True} if process.tty else {}),
    }


def resize_payload(handle: int, rows: int, cols: int) -> dict[str, int]:
    """RESIZE: the window size of a ``tty`` process's terminal (1..65535 each)."""
    if not (0 < rows < 65536 and 0 < cols < 65536):
        raise ProtocolError(f"window size {rows}x{cols} is out of range 1..65535")
    return {"handle": handle, "rows": rows, "cols": cols}


#: RESEED's seed: bytes of fresh host entropy (init takes 32..512)
RESEED_BYTES = 64
#: RESEED's ``cpus``: init onlines at most this many (init/src/cpus.h CPUS_MAX)
MAX_RESEED_CPUS = 64


def reseed_payload(seed: bytes, cpus: int | None = None) -> dict[str, Any]:
    """RESEED: fresh host entropy the guest kernel's RNG is reseeded from (a VM restored from
    a snapshot starts with its template's RNG state); ``seed`` is 32..512 bytes. ``cpus``
    (init 0.6.0): the vCPUs the host hot-plugged, which init brings online first."""
    if not 32 <= len(seed) <= 512:
        raise ProtocolError(f"a RESEED seed has 32..512 bytes, not {len(seed)}")
    if cpus is not None and not 1 <= cpus <= MAX_RESEED_CPUS:
        raise ProtocolError(f"a RESEED brings 1..{MAX_RESEED_CPUS} vCPUs online, not {cpus}")
    return {"seed": seed.hex()} if cpus is None else {"seed": seed.hex(), "cpus": cpus}


def mount_payload(type_: str, destination: str, readonly: bool, source: str | None = None,
                  subdir: str | None = None) -> dict[str, Any]:
    """One entry of START's ``mounts``: a 9p tag (or a ``subdir`` of it), tmpfs, …"""
    item: dict[str, Any] = {"type": type_, "destination": destination, "readonly": readonly}
    if source is not None:
        item["source"] = source
    if subdir is not None:
        item["subdir"] = subdir
    return item


def start_payload(container: str, handle: int, layers: list[str], process: dict[str, Any], *,
                  readonly: bool = False, mounts: list[dict[str, Any]] | None = None,
                  hostname: str | None = None, wait_ms: int | None = None,
                  limits: dict[str, int] | None = None,
                  early_reply: bool = True, pci: list[str] | None = None) -> dict[str, Any]:
    """START: a container over the disks ``layers`` (serials, lowest first) running
    ``process``; ``wait_ms`` when the disks are hot-added and may not be there yet;
    ``limits`` from :func:`limits_payload`. ``early_reply``: init 0.5.0 replies OK once only
    the process's execve is left (its file found executable), not after it; an execve that
    fails then ends the process with status 126/127 (init/PROTOCOL.md, START). ``pci``: each
    layer disk's PCI address (:func:`layer_pci_address`; init 0.7.5 finds a cold VM's disks
    there, an older init ignores it)."""
    rootfs: dict[str, Any] = {"layers": layers, "readonly": readonly}
    if wait_ms is not None:
        rootfs["wait_ms"] = wait_ms
    if pci is not None:
        if len(pci) != len(layers) or not all(_PCI_ADDRESS.fullmatch(a) for a in pci):
            raise ProtocolError(f"rootfs.pci: {pci!r:.200} is not one PCI address a layer")
        rootfs["pci"] = pci
    payload = {"container": container, "handle": handle, "rootfs": rootfs,
               "mounts": mounts or [], "hostname": hostname or container, "process": process}
    if early_reply:
        payload["early_reply"] = True
    if limits is not None:
        payload["limits"] = limits
    return payload


def warmup_start(image_layers: int = 0, destination: str = "/mnt/pool",
                 share_tag: str = POOL_SHARE_TAG) -> dict[str, Any]:
    """The START of the throwaway container a pool VM runs before it is handed out: it walks
    the path every pod's first START takes (layer mount, overlay, namespaces, the pool share's
    9p mount, exec), so the guest kernel code is translated (TCG) and the pool share mounted
    before the claim rather than on the launch's clock. An image pool VM's ``image_layers``
    disks go under the warm-up layer (whose ``/bin/true`` runs), so init mounts them now and
    the pod's START finds them mounted."""
    layers = [layer_serial(i) for i in range(image_layers)] + [WARMUP_SERIAL]
    return start_payload("hypervm-warmup", WARMUP_HANDLE, layers,
                         {"args": ["/bin/true"], "env": ["PATH=/bin"]},
                         mounts=[mount_payload("9p", destination, True, share_tag)],
                         hostname="warmup", wait_ms=LAYER_WAIT_MS)


def prepare_request(image_layers: int, warmup: bool = False,
                    share_tag: str = POOL_SHARE_TAG) -> dict[str, Any]:
    """A PREPARE for an image pool VM: a container over the image's ``image_layers`` disks,
    carrying the pool share, made ahead of the pod's START (which then only adds its mounts,
    hostname, /etc files and process: init/PROTOCOL.md). With ``warmup``, for the warm-up
    container (the warm-up layer on top), so the warm-up walks the prepared path too."""
    rootfs = warmup_start(image_layers, share_tag=share_tag)["rootfs"] if warmup else {
        "layers": [layer_serial(i) for i in range(image_layers)], "readonly": False,
        "wait_ms": LAYER_WAIT_MS}
    return {"rootfs": rootfs, "shares": [share_tag]}
