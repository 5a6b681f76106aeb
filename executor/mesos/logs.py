"""Task output files in the sandbox, rotated by size, and the executor's own log file."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 5
EXECUTOR_LOG = "hypervm-executor.log"


class RotatingFile:
    """Appends bytes to ``path``; past ``max_bytes`` it becomes ``path.1`` (``.1`` → ``.2`` …,
    ``backups`` kept) and a new file starts. Thread-safe; never raises on write (logs once)."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES,
                 backups: int = DEFAULT_BACKUPS) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "ab")  # noqa: SIM115 - closed in close()
        self._size = self._file.tell()
        self._failed = False

    def write(self, data: bytes) -> None:
        with self._lock:
            try:
                if self._size and self._size + len(data) > self.max_bytes:
                    self._rotate()
                self._file.write(data)
                self._file.flush()
                self._size += len(data)
            except (OSError, ValueError) as e:
                if not self._failed:
                    logging.getLogger(__name__).error("cannot write %s: %s", self.path, e)
                self._failed = True

    def _rotate(self) -> None:
        self._file.close()
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._file = open(self.path, "ab")  # noqa: SIM115
        self._size = 0

    def close(self) -> None:
        with self._lock:
            self._file.close()


def rotation_from_env(env: Mapping[str, str]) -> tuple[int, int]:
    """(max bytes, backups) from HYPERVM_LOG_MAX_BYTES / HYPERVM_LOG_BACKUPS."""
    from hypervm.errors import InvalidSpec

    out = []
    for name, default in (("HYPERVM_LOG_MAX_BYTES", DEFAULT_MAX_BYTES),
                          ("HYPERVM_LOG_BACKUPS", DEFAULT_BACKUPS)):
        text = env.get(name, "")
        if not text:
            out.append(default)
        elif text.isdigit():
            out.append(int(text))
        else:
            raise InvalidSpec(name, f"{text!r} is not a number of bytes/files")
    return out[0], out[1]


def setup_executor_logging(sandbox: Path, level: int = logging.INFO) -> None:
    """The executor's own log goes to ``<sandbox>/hypervm-executor.log`` (its stderr is the
    agent's ``<sandbox>/stderr``, shared with a lone task's output, so it only gets errors)."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    handler = logging.FileHandler(sandbox / EXECUTOR_LOG)
    handler.setFormatter(fmt)
    stderr = logging.StreamHandler()
    stderr.setLevel(logging.ERROR)
    stderr.setFormatter(fmt)
    root = logging.getLogger()
    root.handlers[:] = [handler, stderr]
    root.setLevel(level)
