"""A detached container's output: JSON lines ``{"t": unix time, "s": "stdout"|"stderr",
"d": text}`` (docker's json-file shape), one record per line of output (a partial line is a
record of its own), rotated at MAX_BYTES into ``output.log.1`` (one old file kept), so what a
hostile guest prints costs the host at most twice MAX_BYTES."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

MAX_BYTES = 8 * 1024 * 1024


def rotated(path: Path) -> Path:
    return path.with_name(path.name + ".1")


class LogWriter:
    def __init__(self, path: Path, max_bytes: int = MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._file = self._open()

    def _open(self) -> BinaryIO:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return os.fdopen(fd, "ab")

    def write(self, stream: str, data: bytes) -> None:
        stamp = time.time()
        text = data.decode("utf-8", errors="replace")
        records = b"".join(
            json.dumps({"t": stamp, "s": stream, "d": part}).encode() + b"\n"
            for part in text.splitlines(keepends=True))
        with self._lock:
            if self._file.tell() + len(records) > self.max_bytes and self._file.tell() > 0:
                self._file.close()
                os.replace(self.path, rotated(self.path))
                self._file = self._open()
            self._file.write(records)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("d"), str) else None


def read_records(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Every record kept, oldest first (the rotated file, then the current one), and how many
    bytes of the current file they cover (where :func:`follow` goes on)."""
    records: list[dict[str, Any]] = []
    offset = 0
    for part in (rotated(path), path):
        try:
            data = part.read_bytes()
        except FileNotFoundError:
            continue
        data = data[:data.rfind(b"\n") + 1]  # a record being written is follow's
        offset = len(data) if part == path else 0
        records += [r for r in map(_parse, data.splitlines()) if r is not None]
    return records, offset


def follow(path: Path, offset: int, stop: Any) -> Iterator[dict[str, Any]]:
    """Records appended to ``path`` after byte ``offset``, until ``stop()`` is true and
    nothing more came (a rotation starts the new file from 0)."""
    inode = path.stat().st_ino if path.exists() else None
    pending = b""
    while True:
        finished = stop()
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                if st.st_ino != inode:
                    inode, offset, pending = st.st_ino, 0, b""
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            data = b""
        offset += len(data)
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            record = _parse(line)
            if record is not None:
                yield record
        if finished and not data:
            return
        if not data:
            time.sleep(0.2)


def format_record(record: dict[str, Any], timestamps: bool) -> str:
    if not timestamps:
        return record["d"]
    stamp = datetime.fromtimestamp(float(record.get("t", 0)), UTC)
    return f"{stamp.isoformat(timespec='microseconds').replace('+00:00', 'Z')} {record['d']}"
