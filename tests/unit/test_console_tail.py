"""The tail of a VM's console log that the host logs when a boot fails. The log lies in the
VM's run dir, which belongs to the VM's own uid: a guest that escaped into its QEMU can put a
link, a FIFO or a huge file in its place, and root must not follow, block on or swallow it."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from executor.guest import console
from executor.vm import HyperVM
from hypervm.config import config_from_env
from hypervm.podspec import Container, PodSpec, Process, Rootfs


@pytest.fixture
def vm(tmp_path: Path) -> HyperVM:
    container = Container("main", Rootfs(layers=(tmp_path / "l.erofs",)), Process(args=("true",)))
    booted = HyperVM(config_from_env({}), PodSpec(name="p", containers=(container,)))
    booted.run_dir = tmp_path / "run"
    booted.run_dir.mkdir()
    return booted


def test_the_tail_of_the_console(vm: HyperVM) -> None:
    vm.console_log.write_text("".join(f"line {i}\x1b\n" for i in range(100)))
    assert vm.console_tail(3) == "line 97?\nline 98?\nline 99?"


def test_a_link_in_place_of_the_console_log_is_not_followed(vm: HyperVM,
                                                            tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$secret\n")
    vm.console_log.symlink_to(secret)
    assert vm.console_tail() == ""


def test_a_fifo_in_place_of_the_console_log_does_not_block(vm: HyperVM) -> None:
    os.mkfifo(vm.console_log)
    tails: list[str] = []
    reader = threading.Thread(target=lambda: tails.append(vm.console_tail()), daemon=True)
    reader.start()
    reader.join(timeout=5)
    if reader.is_alive():  # blocked in open(): a writer lets it go before the test fails
        os.close(os.open(vm.console_log, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(timeout=5)
        pytest.fail("reading the console log blocked on a FIFO")
    assert tails == [""]


def test_only_the_end_of_a_huge_console_log_is_read(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    with open(log, "wb") as f:
        f.truncate(1 << 40)  # a sparse TiB: read whole, it would take the host's memory
        f.seek(0, os.SEEK_END)
        f.write(b"\nkernel panic\npanic: the end\n")
    assert console.tail(log, 2) == "kernel panic\npanic: the end"
    assert console.TAIL_BYTES <= 64 * 1024
