"""Issue 2's acceptance through the real CLI: real VMs under libvirt, torn down every time."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import (
    HYPERVM,
    REPO,
    TEST_TAG,
    domains_after_teardown,
    live_qemus,
    our_domains,
)

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.usefixtures("no_leaked_domains")]


def test_demo_prints_the_guest_kernel(hypervm) -> None:  # noqa: ANN001
    result = hypervm("demo")
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    guest = next(line for line in out.splitlines() if line.startswith("guest kernel:"))
    assert guest.split()[-1] != platform.release()
    assert "Hello from inside a HyperVM" in out
    assert "this line goes to stderr" in result.stderr.decode()


def test_stdout_stderr_and_exit_status(hypervm, busybox_rootfs: Path) -> None:  # noqa: ANN001
    result = hypervm("run", "--rootfs", str(busybox_rootfs), "--",
                     "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (result.stdout, result.stderr, result.returncode) == (b"out\n", b"err\n", 3)


def test_env_workdir_user_and_signal_exit(hypervm, busybox_rootfs: Path) -> None:  # noqa: ANN001
    result = hypervm("run", "--rootfs", str(busybox_rootfs), "-e", "GREETING=hi", "-w", "/tmp",
                     "-u", "1000:1001", "--", "sh", "-c",
                     'echo "$GREETING $(pwd) $(id -u):$(id -g)"; kill -USR1 $$')
    assert result.stdout == b"hi /tmp 1000:1001\n"
    assert result.returncode == 128 + signal.SIGUSR1


def test_command_not_found_is_127(hypervm, busybox_rootfs: Path) -> None:  # noqa: ANN001
    result = hypervm("run", "--rootfs", str(busybox_rootfs), "--", "no-such-command")
    assert result.returncode == 127
    assert b"no-such-command: command not found" in result.stderr
    assert result.stderr.count(b"\n") == 1


def test_not_executable_is_126(hypervm, busybox_rootfs: Path) -> None:  # noqa: ANN001
    result = hypervm("run", "--rootfs", str(busybox_rootfs), "--", "/etc/passwd")
    assert result.returncode == 126
    assert result.stderr.count(b"\n") == 1


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--rootfs", "/nonexistent", "--", "true"], {}, b"--rootfs"),
        (["--memory", "16", "--rootfs", "/", "--", "true"], {}, b"below the minimum"),
        (["--rootfs", "ROOTFS", "--", "true"],
         {"HYPERVM_LIBVIRT_URI": "qemu+unix:///system?socket=/nonexistent/libvirt-sock"},
         b"libvirtd"),
    ],
)
def test_wrong_input_is_one_clear_line(hypervm, busybox_rootfs: Path, args: list[str],  # noqa: ANN001
                                       env: dict[str, str], message: bytes) -> None:
    args = [str(busybox_rootfs) if a == "ROOTFS" else a for a in args]
    result = hypervm("run", *args, env=env)
    assert result.returncode not in (0, 127)
    assert message in result.stderr
    assert result.stderr.count(b"\n") == 1 and b"Traceback" not in result.stderr


def _start(busybox_rootfs: Path, script: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([*HYPERVM, "run", "--name", TEST_TAG, "--rootfs",
                             str(busybox_rootfs), *extra, "--",
                             "sh", "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _wait_for_line(proc: subprocess.Popen, marker: bytes, timeout: float = 120) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if marker in line:
            return
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"no {marker!r} from the guest; stderr: {proc.stderr.read()!r}")


def test_run_returns_once_qemu_exited_and_leaves_nothing(hypervm, busybox_rootfs: Path,  # noqa: ANN001
                                                          host_cfg) -> None:  # noqa: ANN001
    """``hypervm run`` returns once its VM's QEMU has exited (a pidfd says so), without
    waiting for libvirtd's teardown of the domain; nothing of ours is left at that moment, and
    libvirtd ends the domain by itself soon after."""
    name = f"{TEST_TAG}-quick"
    result = hypervm("run", "--name", name, "--rootfs", str(busybox_rootfs), "--", "true")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""
    assert live_qemus(f"hypervm-{name}-") == [], "hypervm run returned before QEMU exited"
    assert list(host_cfg.vms_dir.glob(f"hypervm-{name}-*")) == [], "its run dir is left"
    assert not domains_after_teardown(f"hypervm-{name}-"), "libvirtd did not end the domain"


def test_sigterm_ignoring_process_is_killed_after_grace(busybox_rootfs: Path) -> None:
    proc = _start(busybox_rootfs, "trap '' TERM; echo started; while :; do sleep 1; done",
                  "--grace", "2")
    _wait_for_line(proc, b"started")
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    status = proc.wait(timeout=60)
    elapsed = time.monotonic() - sent
    assert status == 128 + signal.SIGKILL
    assert elapsed >= 2.0
    assert not domains_after_teardown()


def test_ctrl_c_kills_the_task_and_the_vm(busybox_rootfs: Path) -> None:
    proc = _start(busybox_rootfs, "echo started; sleep 1000")
    _wait_for_line(proc, b"started")
    proc.send_signal(signal.SIGINT)
    status = proc.wait(timeout=60)
    assert status == 128 + signal.SIGTERM  # sleep dies of the SIGTERM we forward
    assert not domains_after_teardown()


def test_sigkill_of_hypervm_leaves_no_domain(busybox_rootfs: Path) -> None:
    proc = _start(busybox_rootfs, "echo started; sleep 1000")
    _wait_for_line(proc, b"started")
    assert our_domains()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while our_domains() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not our_domains(), "libvirt did not auto-destroy the VM of a SIGKILLed owner"


def test_two_containers_one_vm(vm_factory, busybox_rootfs: Path, host_cfg,  # noqa: ANN001
                               tmp_path: Path) -> None:
    """Separate root filesystems (a file written by one is absent in the other), one netns."""
    import threading

    from hypervm.podspec import Container, PodSpec, Process, Rootfs
    from vmimage.rootfs import build_layer_image

    image = host_cfg.rootfs_dir / f"test-{os.getpid()}.erofs"
    host_cfg.rootfs_dir.mkdir(parents=True, exist_ok=True)
    build_layer_image(busybox_rootfs, image)
    try:
        layer = Rootfs(layers=(image,))
        writer = Container("writer", layer, Process(args=(
            "sh", "-c", "echo secret > /written-by-writer; readlink /proc/self/ns/net; "
                        "readlink /proc/self/ns/mnt; cat /written-by-writer")))
        reader = Container("reader", layer, Process(args=(
            "sh", "-c", "sleep 1; readlink /proc/self/ns/net; readlink /proc/self/ns/mnt; "
                        "test -e /written-by-writer && echo present || echo absent")))
        vm = vm_factory(PodSpec(name=f"{TEST_TAG}-two", containers=(writer, reader)))
        outputs: dict[str, list[bytes]] = {"writer": [], "reader": []}
        done = {name: threading.Event() for name in outputs}
        statuses = {}
        for container in (writer, reader):
            name = container.name
            vm.start(container, on_stdout=outputs[name].append,
                     on_exit=lambda s, n=name: (statuses.__setitem__(n, s), done[n].set()))
        assert all(event.wait(60) for event in done.values())
        assert all(s.code == 0 for s in statuses.values()), statuses
        w = b"".join(outputs["writer"]).decode().split()
        r = b"".join(outputs["reader"]).decode().split()
        assert w[2] == "secret" and r[2] == "absent"
        assert w[0] == r[0], "containers must share the network namespace"
        assert w[1] != r[1], "containers must have their own mount namespaces"
    finally:
        image.unlink(missing_ok=True)


def test_exec_into_running_container(vm_factory, busybox_rootfs: Path, host_cfg) -> None:  # noqa: ANN001
    import threading

    from hypervm.podspec import Container, PodSpec, Process, Rootfs
    from vmimage.rootfs import build_layer_image

    image = host_cfg.rootfs_dir / f"test-exec-{os.getpid()}.erofs"
    host_cfg.rootfs_dir.mkdir(parents=True, exist_ok=True)
    build_layer_image(busybox_rootfs, image)
    try:
        main = Container("main", Rootfs(layers=(image,)), Process(args=(
            "sh", "-c", "echo inside > /state; sleep 1000")))
        vm = vm_factory(PodSpec(name=f"{TEST_TAG}-exec", containers=(main,)))
        exited = threading.Event()
        proc = vm.start(main, on_exit=lambda s: exited.set())
        out: list[bytes] = []
        done = threading.Event()
        deadline = time.monotonic() + 30
        while True:
            out.clear()
            done.clear()
            vm.exec("main", Process(args=("cat", "/state")), on_stdout=out.append,
                    on_exit=lambda s: done.set())
            assert done.wait(30)
            if out or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert b"".join(out) == b"inside\n"
        vm.signal(proc, signal.SIGKILL)
        assert exited.wait(30)
    finally:
        image.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
