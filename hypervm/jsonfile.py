"""A small JSON record replaced atomically: a reader sees the old file or the new one, whole
(executor.netpolicy's record of the installed table, executor.libvirt.daclabel's QEMU user)."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path


def replace_json(path: Path, doc: object, mode: int = 0o600) -> None:
    """Write ``doc`` to a temporary file beside ``path`` (never through a link; ``mode``
    whatever the umask), then rename it over ``path``. OSError when it cannot; the temporary
    file is then gone."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode)
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), mode)
            json.dump(doc, f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
