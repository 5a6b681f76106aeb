"""A cold ``hypervm run``'s starter child (executor.libvirt.starter) in real runs: the VM never
outlives the CLI or its child, and libvirt's errors read as they did without the child."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import HYPERVM, REPO, TEST_TAG, our_domains
from tests.integration.imagebuild import make_state_dir

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.usefixtures("no_leaked_domains")]


@pytest.fixture
def image_env() -> Iterator[dict[str, str]]:
    cache = make_state_dir()
    yield {"HYPERVM_IMAGE_DIR": str(cache), "HYPERVM_POOL": "off", "HYPERVM_SNAPSHOT": "off"}
    shutil.rmtree(cache, ignore_errors=True)


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait(what: str, check, timeout: float) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _booted_run(hypervm, image_ref: str, env: dict[str, str],  # noqa: ANN001
                name: str) -> tuple[subprocess.Popen, int, str]:
    """A cold ``run … sleep 60`` once its domain exists: (the CLI, its starter child, the
    domain)."""
    assert hypervm("run", "-q", image_ref, "--", "true", env=env).returncode == 0  # the pull
    cli = subprocess.Popen([*HYPERVM, "run", "-q", "--name", name, image_ref, "--", "sleep", "60"],
                           cwd=REPO, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    prefix = f"hypervm-{name}"
    children: list[int] = []

    def starter_alone() -> bool:  # the network policy's nft, run once the domain is created,
        children[:] = [pid for pid in _children(cli.pid) if _alive(pid)]  # comes and goes
        return len(children) == 1

    try:
        _wait("the run's domain is created", lambda: our_domains(prefix), 60)
        (domain,) = our_domains(prefix)
        # the starter, holding the domain's auto-destroy
        _wait(f"one child of the CLI (the starter): {children}", starter_alone, 20)
    except BaseException:
        cli.kill()
        cli.wait()
        raise
    return cli, children[0], domain


@pytest.mark.parametrize("killed", ["cli", "starter"])
def test_a_killed_cli_or_starter_leaves_no_vm(hypervm, image_ref: str,  # noqa: ANN001
                                              image_env: dict[str, str], killed: str) -> None:
    """SIGKILL of the CLI after createXML: its starter child sees its pipe's EOF, destroys the
    domain and ends (its connection closed only once the domain is gone). SIGKILL of the
    child: its connection's auto-destroy ends the VM, and the CLI fails instead of waiting."""
    name = f"{TEST_TAG}-k{killed}"
    cli, child, domain = _booted_run(hypervm, image_ref, image_env, name)
    try:
        os.kill(cli.pid if killed == "cli" else child, signal.SIGKILL)
        _wait(f"{domain} gone after SIGKILL of the {killed}",
              lambda: domain not in our_domains(f"hypervm-{name}"), 20)
        _wait("the starter child ended", lambda: not _alive(child), 35)
        if killed == "starter":
            assert cli.wait(60) != 0  # its VM was destroyed under it
    finally:
        if cli.poll() is None:
            cli.kill()
        cli.wait()


def _error_line(result: subprocess.CompletedProcess) -> str:
    text = result.stderr.decode()
    return re.sub(r"hypervm-[\w-]+", "VM", text.strip().splitlines()[0] if text.strip() else "")


@pytest.mark.parametrize("uri", [
    "test:///default",  # createXML refused: test:/// has no auto-destroy
    "qemu+unix:///system?socket=/nonexistent/libvirt-sock",  # libvirt unreachable
])
def test_libvirts_errors_read_as_without_the_starter(hypervm, image_ref: str,  # noqa: ANN001
                                                     image_env: dict[str, str],
                                                     uri: str) -> None:
    assert hypervm("run", "-q", image_ref, "--", "true", env=image_env).returncode == 0
    env = {**image_env, "HYPERVM_LIBVIRT_URI": uri}
    started = hypervm("run", "-q", image_ref, "--", "true", env=env)
    own = hypervm("run", "-q", image_ref, "--", "true", env={**env, "HYPERVM_STARTER": "off"})
    assert started.returncode == own.returncode == 125, started.stderr.decode()
    assert b"Traceback" not in started.stderr
    assert _error_line(started) == _error_line(own)
    assert ("cannot start VM" if uri.startswith("test") else "cannot connect to libvirt") \
        in _error_line(started)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_boot_still_destroys_the_vm(hypervm, image_ref: str,  # noqa: ANN001
                                                 image_env: dict[str, str], signum: int) -> None:
    """SIGINT/SIGTERM of the CLI once its domain exists (the guest still booting): the CLI
    destroys the VM through its own connection, tells its starter, and both end (the child
    ignores the terminal's SIGINT: the CLI decides)."""
    name = f"{TEST_TAG}-s{int(signum)}"
    cli, child, domain = _booted_run(hypervm, image_ref, image_env, name)
    try:
        os.kill(cli.pid, signum)
        assert cli.wait(60) == 128 + signum
        _wait(f"{domain} gone", lambda: domain not in our_domains(f"hypervm-{name}"), 20)
        _wait("the starter child ended", lambda: not _alive(child), 35)
    finally:
        if cli.poll() is None:
            cli.kill()
        cli.wait()


def test_a_runs_vm_ends_after_its_cli_by_its_starter(hypervm, image_ref: str,  # noqa: ANN001
                                                     image_env: dict[str, str]) -> None:
    """A cold run's exit status and output are complete when it exits; its VM's end (QEMU's
    exit, told at the EXIT) is its starter child's (executor.libvirt.vmend), which frees the
    VM's uid and removes its run directory once libvirtd has torn the domain down."""
    from executor.libvirt import identity
    from hypervm.config import config_from_env

    assert hypervm("run", "-q", image_ref, "--", "true", env=image_env).returncode == 0  # pull
    name = f"{TEST_TAG}-end"
    done = hypervm("run", "-q", "--name", name, image_ref, "--", "sh", "-c", "echo out; exit 3",
                   env=image_env)
    assert done.returncode == 3 and done.stdout == b"out\n", done.stderr.decode()[-2000:]
    prefix = f"hypervm-{name}-"
    vms_dir = config_from_env({**os.environ, **image_env}).vms_dir

    def ended() -> bool:
        return (not our_domains(prefix) and not list(vms_dir.glob(prefix + "*"))
                and not any(d.startswith(prefix) for d in identity.in_use().values()))

    _wait("the VM's end: domain, run dir and uid reservation gone", ended, 30)
