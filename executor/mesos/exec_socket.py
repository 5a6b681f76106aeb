"""``hypervm exec --task``: the executor serves exec into its tasks' containers on a unix
socket per task, ``HYPERVM_RUN_DIR/tasks/<task id>.sock`` (0600 in a 0700 directory: root
only), with the session protocol of executor.session. Mesos' own ``mesos task exec`` would
start a nested container of the executor's container: a process on the host, not in the VM.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
from pathlib import Path
from typing import Any

from executor.session import REPLY, ExecSession, SessionServer, encode_json
from executor.vm import HyperVM
from hypervm.config import HostConfig
from hypervm.podspec import Container

log = logging.getLogger(__name__)

_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")


def tasks_dir(cfg: HostConfig) -> Path:
    return cfg.run_dir / "tasks"


def socket_path(cfg: HostConfig, task_id: str) -> Path:
    """The socket of ``task_id``; an id that is not a safe file name is hashed."""
    if _SAFE.match(task_id) and task_id not in (".", ".."):
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
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        _remove_stale(path)
        session = ExecSession(vm, container.name, container.process)

        def dispatch(sock: socket.socket, request: dict[str, Any]) -> None:
            if request.get("op") != "exec":
                sock.sendall(encode_json(REPLY, {"error": "only exec is served for a task"}))
                return
            log.info("exec into task %s: %s", task_id, request.get("args"))
            session.serve(sock, request)

        return SessionServer(path, dispatch)
    except OSError as e:
        log.warning("no exec socket for task %s at %s: %s", task_id, path, e)
        return None


def _remove_stale(path: Path) -> None:
    """A socket nobody answers on (its executor died) is removed; a live one is kept."""
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise OSError(f"{path} is served by another process")
