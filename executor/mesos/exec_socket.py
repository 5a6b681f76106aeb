"""``hypervm exec --task``: the executor serves exec into its tasks' containers on a unix
socket per task, ``HYPERVM_RUN_DIR/tasks/<task id>.sock`` (0600 in a 0700 directory: root
only), with the session protocol of executor.session. Mesos' own ``mesos task exec`` would
start a nested container of the executor's container: a process on the host, not in the VM.

A SIGKILLed executor leaves its socket behind; the next executor of the same task id, and
``hypervm gc`` (:func:`remove_stale_sockets`), remove a socket nobody listens on. Both probe and
unlink under one flock of ``tasks/.lock``, under which an executor also binds: a socket found
refusing connections cannot be replaced by a live one before it is unlinked.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import re
import socket
import stat
from pathlib import Path
from typing import Any

from executor.session import REPLY, ExecSession, SessionServer, encode_json
from executor.vm import HyperVM
from hypervm.config import HostConfig
from hypervm.dirlock import locked_dir
from hypervm.podspec import Container

log = logging.getLogger(__name__)

#: a task id that may name its socket as it is (matched whole: "t\n" would be a file name)
_SAFE = re.compile(r"[A-Za-z0-9_.-]{1,80}")
#: how long a probe waits for a live executor to accept (a full backlog is not a dead one)
_PROBE_TIMEOUT_S = 2.0


def tasks_dir(cfg: HostConfig) -> Path:
    return cfg.run_dir / "tasks"


def socket_path(cfg: HostConfig, task_id: str) -> Path:
    """The socket of ``task_id``; an id that is not a safe file name is hashed."""
    if _SAFE.fullmatch(task_id) and task_id not in (".", ".."):
        name = task_id
    else:
        name = "sha256-" + hashlib.sha256(task_id.encode()).hexdigest()[:32]
    return tasks_dir(cfg) / f"{name}.sock"


def serve_task_exec(cfg: HostConfig, task_id: str, vm: HyperVM, container: Container
                    ) -> SessionServer | None:
    """Serve exec into ``container`` of ``vm`` for ``hypervm exec --task``; None (logged)
    when the socket cannot be made, e.g. another live executor serves the same task id."""
    path = socket_path(cfg, task_id)
    try:
        session = ExecSession(vm, container.name, container.process)

        def dispatch(sock: socket.socket, request: dict[str, Any]) -> None:
            if request.get("op") != "exec":
                sock.sendall(encode_json(REPLY, {"error": "only exec is served for a task"}))
                return
            log.info("exec into task %s: %s", task_id, request.get("args"))
            session.serve(sock, request)

        with locked_dir(path.parent):
            if path.exists() and not _unserved(path):
                raise OSError(f"{path} is served by another process")
            path.unlink(missing_ok=True)
            return SessionServer(path, dispatch)
    except OSError as e:
        log.warning("no exec socket for task %s at %s: %s", task_id, path, e)
        return None


def _unserved(path: Path) -> bool:
    """Nobody listens on the socket ``path`` (connection refused, or gone): its executor is
    dead. A live one that is slow to accept counts as served."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(_PROBE_TIMEOUT_S)
    try:
        probe.connect(str(path))
    except OSError as e:
        return e.errno in (errno.ECONNREFUSED, errno.ENOENT)
    finally:
        probe.close()
    return False


def remove_stale_sockets(cfg: HostConfig, dry_run: bool = False) -> list[Path]:
    """Remove the task sockets nobody serves (their executor was killed); the removed ones."""
    directory = tasks_dir(cfg)
    if not directory.is_dir():
        return []
    removed = []
    with locked_dir(directory):
        for path in sorted(directory.glob("*.sock")):
            try:
                if not stat.S_ISSOCK(path.lstat().st_mode) or not _unserved(path):
                    continue
                if not dry_run:
                    path.unlink()
            except OSError as e:
                log.warning("cannot remove the stale exec socket %s: %s", path, e)
                continue
            removed.append(path)
    return removed
