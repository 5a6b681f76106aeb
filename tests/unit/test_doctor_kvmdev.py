"""``hypervm doctor``'s libvirt-caps check: a /dev/kvm that libvirt's probes (CAP_DAC_OVERRIDE)
can use and its QEMU user cannot makes libvirt re-probe every QEMU at every domain start."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from executor.cli import doctor_kvmdev

QEMU_UID, KVM_GID = 64055, 107


def _device(tmp_path: Path, mode: int, gid: int) -> Path:
    path = tmp_path / "kvm"
    path.write_bytes(b"")
    path.chmod(mode)
    if os.geteuid() == 0:
        os.chown(path, 0, gid)
    return path


@pytest.mark.parametrize(("mode", "gid", "usable"), [
    (0o600, 0, False),           # the kernel's default without udev: root's alone
    (0o660, KVM_GID, True),      # Debian's udev rule, the QEMU user in group kvm
    (0o666, 0, True),            # systemd's newer default
    (0o660, 0, False),           # group root: not the QEMU user's
    (0o640, KVM_GID, False),     # read, no write
])
def test_the_qemu_user_needs_read_and_write_by_its_bits(mode: int, gid: int, usable: bool) -> None:
    st = os.stat_result((0o020000 | mode, 0, 0, 1, 0, gid, 0, 0, 0, 0))
    assert doctor_kvmdev.read_write(st, QEMU_UID, {QEMU_UID, KVM_GID}) is usable
    assert doctor_kvmdev.read_write(st, 0, {0})  # root: always


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to group kvm needs root")
def test_a_root_only_device_is_reported_with_its_fix(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeHypervisor:
        def __init__(self, *_a: object, **_k: object) -> None: ...
        def __enter__(self) -> FakeHypervisor:
            return self
        def __exit__(self, *_: object) -> None: ...
        def qemu_user(self) -> tuple[int, int]:
            return QEMU_UID, QEMU_UID

    monkeypatch.setattr(doctor_kvmdev, "Hypervisor", FakeHypervisor)
    monkeypatch.setattr(doctor_kvmdev.fsmode, "process_groups", lambda uid, gid: {gid, KVM_GID})
    cfg: Any = SimpleNamespace(libvirt_uri="qemu:///system")
    bad = doctor_kvmdev.check_kvm_device(cfg, _device(tmp_path, 0o600, 0))
    assert bad.warn and "re-probes" in bad.detail and "chmod 0660" in bad.fix
    good = doctor_kvmdev.check_kvm_device(cfg, _device(tmp_path, 0o660, KVM_GID))
    assert good.ok and not good.warn
    gone = doctor_kvmdev.check_kvm_device(cfg, tmp_path / "none")
    assert gone.ok and not gone.warn
