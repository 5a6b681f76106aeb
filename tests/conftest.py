"""Shared fixtures: host config, busybox rootfs, VM factory with leak checks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
HYPERVM = [sys.executable, "-m", "executor.cli"]


#: pod names of this test session start with it, so leak checks never see other sessions' VMs
TEST_TAG = f"t{os.getpid()}"


def our_domains(prefix: str = f"hypervm-{TEST_TAG}") -> set[str]:
    """Names of domains libvirt knows (running or defined) whose name starts with ``prefix``."""
    if shutil.which("virsh") is None:
        return set()
    out = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                         capture_output=True, text=True, check=False).stdout
    return {line.strip() for line in out.splitlines() if line.strip().startswith(prefix)}


def run_to_exit(vm, container, timeout: float = 60.0) -> tuple[int, str]:  # noqa: ANN001
    """START ``container`` in the booted ``vm`` and wait for its exit: (exit code, stdout and
    stderr as they came)."""
    import threading

    output: list[bytes] = []
    done = threading.Event()
    status: dict[str, Any] = {}

    def exited(s: Any) -> None:
        status["s"] = s
        done.set()

    vm.start(container, on_stdout=output.append, on_stderr=output.append, on_exit=exited)
    assert done.wait(timeout), "the container did not exit"
    return status["s"].code, b"".join(output).decode()


@pytest.fixture(scope="session")
def host_cfg():  # noqa: ANN201
    from hypervm.config import config_from_env

    return config_from_env()


def finish_grants_of(prefix: str) -> list[Any]:
    """What ``hypervm gc`` does after an owner's SIGKILL, for the VMs named ``prefix…`` only:
    their volume grants finished (entry off, an owned share handed back to root, the record
    removed). A test that kills an owner must call it before its directories go: a record whose
    directory is gone stays for good (its uid out of reuse, read by every later VM's start)."""
    from executor import volume_access
    from executor.libvirt import grants
    from hypervm.config import config_from_env

    cfg = config_from_env()
    kept = grants.keeper(cfg).records
    names = {grant.domain for _, grant in grants.records(kept) if grant.domain.startswith(prefix)} \
        if kept.is_dir() else set()
    released = []
    for name in sorted(names):
        released += volume_access.release_stale(cfg, only=name, grace=0.0)
    left = [g.domain for _, g in grants.records(kept) if g.domain.startswith(prefix)]
    assert not left, f"grant records left after gc: {left}"
    return released


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vmimage.rootfs import make_busybox_rootfs

    dest = tmp_path_factory.mktemp("rootfs") / "busybox"
    make_busybox_rootfs(dest)
    return dest


#: a VM whose QEMU has exited is still listed while libvirtd tears it down (1-2 s where PID 1
#: reaps late: executor.libvirt.qemu_process); a leaked VM runs on and is still there after it
TEARDOWN_GRACE_S = 15.0


def console_text(path: Path, marker: str, count: int = 1, timeout: float = 15.0) -> str:
    """A VM's console log once ``marker`` is in it ``count`` times, the last of them on a whole
    line (or at ``timeout``): the guest's tty and virtlogd write it after the guest's reply to
    the request that logged it, and may have written only part of that line when it is read."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        if _whole_lines_hold(text, marker, count) or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def _whole_lines_hold(text: str, marker: str, count: int) -> bool:
    """Whether ``marker`` is in ``text`` ``count`` times and the line of its last one ended."""
    end = 0
    for _ in range(count):
        at = text.find(marker, end)
        if at < 0:
            return False
        end = at + len(marker)
    return "\n" in text[end:]


def domains_left(before: set[str], grace: float = TEARDOWN_GRACE_S) -> set[str]:
    """Domains of this session (or a demo) not in ``before`` that are still there after
    ``grace`` seconds."""
    deadline = time.monotonic() + grace
    while True:
        left = (our_domains() | our_domains("hypervm-demo-")) - before
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.2)


def domains_after_teardown(prefix: str = f"hypervm-{TEST_TAG}",
                           grace: float = TEARDOWN_GRACE_S) -> set[str]:
    """``our_domains(prefix)`` once libvirtd had ``grace`` seconds to tear exited VMs down
    (``hypervm run`` returns once its VM's QEMU has exited)."""
    deadline = time.monotonic() + grace
    while (left := our_domains(prefix)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def live_qemus(prefix: str) -> list[int]:
    """Pids of QEMU processes of domains named ``prefix``… that have not exited (a zombie has:
    only its reaping is left)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if f"guest={prefix}".encode() in cmdline and stat[stat.rfind(")") + 2] != "Z":
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def no_leaked_domains() -> Iterator[None]:
    """Fails the test if it leaves a domain of this session (or a demo) behind, and removes it."""
    before = our_domains() | our_domains("hypervm-demo-")
    yield
    leaked = domains_left(before)
    for name in leaked:
        subprocess.run(["virsh", "-c", "qemu:///system", "destroy", name], capture_output=True,
                       check=False)
    assert not leaked, f"test leaked domains: {sorted(leaked)}"


@pytest.fixture
def vm_factory(host_cfg, request: pytest.FixtureRequest,  # noqa: ANN001
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable]:
    """Boots HyperVMs for a test; destroys every one at teardown and keeps the console log of
    a failed test under the pytest temp dir (path printed in the report)."""
    from executor.vm import HyperVM

    vms: list[HyperVM] = []

    def boot(pod, timeout: float = 90.0) -> HyperVM:  # noqa: ANN001
        vm = HyperVM(host_cfg, pod)
        vms.append(vm)
        vm.boot(timeout=timeout)
        return vm

    yield boot
    failed = getattr(request.node, "rep_call", None)
    for vm in vms:
        if failed is not None and failed.failed and vm.console_log.exists():
            keep = tmp_path_factory.mktemp("console") / f"{vm.name}.log"
            shutil.copy(vm.console_log, keep)
            print(f"console log of {vm.name} kept at {keep}", file=sys.stderr)
        vm.destroy()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome: Any = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def run_hypervm(*args: str, timeout: float = 180, env: dict[str, str] | None = None,
                **kwargs: object) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.update(env or {})
    if args and args[0] == "run" and "--name" not in args:
        args = ("run", "--name", TEST_TAG, *args[1:])
    return subprocess.run([*HYPERVM, *args], capture_output=True, timeout=timeout, cwd=REPO,
                          env=full_env, check=False, **kwargs)  # type: ignore[call-overload]


@pytest.fixture
def hypervm() -> Callable[..., subprocess.CompletedProcess]:
    return run_hypervm


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No VM outlives the test session: destroy leftovers of this session and fail the run."""
    if hasattr(session.config, "workerinput"):
        return
    leaked = domains_after_teardown()
    for name in leaked:
        subprocess.run(["virsh", "-c", "qemu:///system", "destroy", name], capture_output=True,
                       check=False)
    if leaked:
        print(f"\nERROR: the test session leaked domains: {sorted(leaked)}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
