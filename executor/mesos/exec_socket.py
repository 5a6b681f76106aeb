"""``hypervm exec --task``: the executor serves exec into its tasks' containers on a unix
socket per task, ``HYPERVM_RUN_DIR/tasks/<task id>.sock`` (0600 in a 0700 directory: root
only), with the session protocol of executor.session. Mesos' own ``mesos task exec`` would
start a nested container of the executor's container: a process on the host, not in the VM.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from hypervm.config import HostConfig

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
