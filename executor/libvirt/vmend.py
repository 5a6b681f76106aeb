"""A VM's end left to the starter child that created it: what a cold foreground run's CLI asks
for once its workload has exited, and what the child does.

The CLI has the exit status and every byte of output once the guest's EXIT is in; what is left
is the VM's end: its QEMU's exit (~10 ms, most of it the kernel tearing down QEMU's memory),
then the VM's uid back to the range and its run directory removed. The CLI tells QEMU to exit
(SIGTERM on its pidfd) and hands the rest to the starter child (``executor.libvirt.starter``),
which owns the VM's libvirt connection and outlives the CLI anyway (it closes that connection
only once libvirtd has torn the domain down). The child destroys the domain if it still runs
after ``kill_after`` seconds, waits for libvirtd's teardown (the domain's pid file removed: its
QEMU has exited and been reaped), and only then frees the uid and removes the run directory:
a uid is never handed to another VM while a QEMU of it runs.

A VM with volumes or owned shares is never handed over (``executor.vm``): their grants and
owners go back once its QEMU is gone, and the CLI keeps doing that itself.

The message, parent → child (after the createXML answer, instead of ``gone``):

    {"end": {"run_dir": DIR, "release": BOOL, "kill_after": SECONDS}}

``run_dir`` must be an absolute path whose last part is the domain's name (the VM's run
directory, ``HostConfig.vms_dir / name``); anything else is no request, and the child only
destroys the domain (as for a parent that died without a word).
"""

from __future__ import annotations

import os

#: typing.TYPE_CHECKING without importing typing (the starter imports this on the console
#: script's start)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

#: an end request is a path and two values
MAX_END = 8 << 10
MAX_RUN_DIR = 4096
#: the longest a child waits for a QEMU told to exit before it destroys the domain
MAX_KILL_AFTER = 60.0


def end_message(run_dir: str, release: bool, kill_after: float) -> dict[str, Any]:
    """The parent's request: see the module's docstring."""
    return {"end": {"run_dir": run_dir, "release": release, "kill_after": kill_after}}


def parse_end(message: Mapping[str, Any] | None, name: str) -> dict[str, Any] | None:
    """The end request in ``message`` for the domain ``name``, or None (none, or malformed)."""
    end = message.get("end") if message is not None else None
    if not isinstance(end, dict) or set(end) != {"run_dir", "release", "kill_after"}:
        return None
    run_dir, release, kill_after = end["run_dir"], end["release"], end["kill_after"]
    if not (isinstance(run_dir, str) and len(run_dir) <= MAX_RUN_DIR and "\0" not in run_dir
            and os.path.isabs(run_dir) and os.path.basename(run_dir) == name
            and os.path.normpath(run_dir) == run_dir):
        return None
    if not isinstance(release, bool) or isinstance(kill_after, bool) or not isinstance(
            kill_after, (int, float)) or not 0 <= kill_after <= MAX_KILL_AFTER:
        return None
    return end


def finish(name: str, end: Mapping[str, Any]) -> None:
    """The domain ``name`` is gone (its QEMU exited and was reaped): its uid back to the range
    when ``release``, its run directory removed (what ``HyperVM.destroy`` does after it)."""
    # deferred: the child's, once its CLI has exited (shutil loads bz2 and lzma, identity the
    # domain values and logging: neither belongs on a cold run's way to createXML)
    import shutil

    if end["release"]:
        from executor.libvirt import identity  # deferred: see above

        identity.release(name)
    shutil.rmtree(end["run_dir"], ignore_errors=True)
