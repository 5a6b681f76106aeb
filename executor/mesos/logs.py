"""Task output files in the sandbox, rotated by size, and the executor's own log file."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path

from executor.mesos import sandbox_files
from hypervm.errors import HyperVMError, InvalidSpec

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 5
EXECUTOR_LOG = "hypervm-executor.log"


class RotatingFile:
    """Appends bytes to ``path``; past ``max_bytes`` it becomes ``path.1`` (``.1`` → ``.2`` …,
    ``backups`` kept) and a new file starts. Thread-safe; never raises on write (logs once).

    ``path`` lies in a directory the guest writes (the task's sandbox), so it is never resolved
    by name: ``root`` (default: ``path``'s directory) is trusted, everything below it is opened
    relative to a directory fd with O_NOFOLLOW (executor.mesos.sandbox_files), rotation renames
    relative to that fd, and a symlink/FIFO/foreign file planted at ``path`` is replaced, never
    followed."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES,
                 backups: int = DEFAULT_BACKUPS, root: Path | None = None) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self.name = path.name
        root = path.parent if root is None else root
        self._lock = threading.Lock()
        self._dir = sandbox_files.open_dir(root, path.parent.relative_to(root), create=True)
        try:
            self._fd: int | None = sandbox_files.open_append(self._dir, self.name)
        except BaseException:
            os.close(self._dir)
            raise
        self._size = os.fstat(self._fd).st_size
        self._failed = False

    def write(self, data: bytes) -> None:
        with self._lock:
            try:
                if self._fd is None:
                    return
                if self._size and self._size + len(data) > self.max_bytes:
                    self._rotate()
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view):]
                self._size += len(data)
            except (OSError, HyperVMError) as e:
                if not self._failed:
                    logging.getLogger(__name__).error("cannot write %s: %s", self.path, e)
                self._failed = True

    def _rotate(self) -> None:
        assert self._fd is not None
        os.close(self._fd)
        self._fd = None
        for i in range(self.backups - 1, 0, -1):
            sandbox_files.rename_in(self._dir, f"{self.name}.{i}", f"{self.name}.{i + 1}")
        if self.backups > 0:
            sandbox_files.rename_in(self._dir, self.name, f"{self.name}.1")
        else:
            sandbox_files.remove_in(self._dir, self.name)
        self._fd = sandbox_files.open_append(self._dir, self.name)
        self._size = os.fstat(self._fd).st_size

    def close(self) -> None:
        with self._lock:
            for fd in (self._fd, self._dir):
                if fd is not None and fd >= 0:
                    os.close(fd)
            self._fd, self._dir = None, -1


class RotatingLogHandler(logging.Handler):
    """logging's RotatingFileHandler, on a RotatingFile: the executor's log lives in the
    sandbox, which the guest writes, so it is opened and rotated as task output is."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        super().__init__()
        self.file = RotatingFile(path, max_bytes, backups)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.file.write((self.format(record) + "\n").encode("utf-8", "replace"))
        except Exception:  # noqa: BLE001 - logging must not raise
            self.handleError(record)

    def close(self) -> None:
        self.file.close()
        super().close()


def rotation_from_env(env: Mapping[str, str]) -> tuple[int, int]:
    """(max bytes, backups) from HYPERVM_LOG_MAX_BYTES / HYPERVM_LOG_BACKUPS."""
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


def setup_executor_logging(sandbox: Path, level: int = logging.INFO,
                           rotation: tuple[int, int] = (DEFAULT_MAX_BYTES, DEFAULT_BACKUPS)
                           ) -> None:
    """The executor's own log goes to ``<sandbox>/hypervm-executor.log``, rotated as task
    output (its stderr is the agent's ``<sandbox>/stderr``, shared with a lone task's output,
    so it only gets errors)."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    handler = RotatingLogHandler(sandbox / EXECUTOR_LOG, *rotation)
    handler.setFormatter(fmt)
    stderr = logging.StreamHandler()
    stderr.setLevel(logging.ERROR)
    stderr.setFormatter(fmt)
    root = logging.getLogger()
    root.handlers[:] = [handler, stderr]
    root.setLevel(level)
