"""``hypervm run`` end to end (libvirt, our initrd): the container is confined and bounded as
init/PROTOCOL.md says, and an OOM kill is one clear line and exit 137 (issue 15, finding 9)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.usefixtures("no_leaked_domains")]

#: a cold VM with this tree's init (a pool VM may run another one)
COLD = {"HYPERVM_POOL": "off"}


def test_the_container_is_confined_and_bounded(hypervm, busybox_rootfs: Path) -> None:  # noqa: ANN001
    result = hypervm("run", "--rootfs", str(busybox_rootfs), "--", "sh", "-c",
                     "grep -E '^(CapEff|CapBnd|Seccomp):' /proc/self/status; "
                     "cat /sys/fs/cgroup/pids.max; df -k / | tail -1; "
                     "echo 1 > /proc/sys/vm/drop_caches || echo refused",
                     env={**COLD, "HYPERVM_CONTAINER_PIDS": "300",
                          "HYPERVM_WRITABLE_LAYER_MIB": "16"})
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert lines[:3] == ["CapEff:\t00000000a80425fb", "CapBnd:\t00000000a80425fb",
                         "Seccomp:\t2"], lines
    assert lines[3] == "300" and lines[4].split()[1] == "16384", lines
    assert lines[5] == "refused" and b"Read-only file system" in result.stderr


def test_out_of_memory_is_one_clear_line_and_137(hypervm, busybox_rootfs: Path) -> None:  # noqa: ANN001
    result = hypervm("run", "--rootfs", str(busybox_rootfs), "--memory", "128", "--", "sh", "-c",
                     "awk 'BEGIN { s = \"x\"; while (1) s = s s }'", env=COLD, timeout=300)
    assert result.returncode == 137, result.stderr.decode()
    assert b"killed: out of memory in the container (exit 137" in result.stderr
