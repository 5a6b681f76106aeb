"""Accelerator detection: the decision, the per-boot cache and the override, with fakes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hypervm.config import HostConfig
from vmimage import accel
from vmimage.accel import Check, Verdict, choose_accel, detect_accel, load_cached, probe_command

DEVICE_OK = Check(True, "/dev/kvm speaks KVM API 12")
DEVICE_BAD = Check(False, "/dev/kvm does not exist")


def cfg(tmp_path: Path, mode: str = "auto") -> HostConfig:
    return HostConfig(
        state_dir=tmp_path / "state",
        run_dir=tmp_path / "run",
        libvirt_uri="test:///default",
        accel=mode,
    )


class Probe:
    def __init__(self, result: Check) -> None:
        self.result = result
        self.calls: list[Path] = []

    def __call__(self, kernel: Path) -> Check:
        self.calls.append(kernel)
        return self.result


def test_kvm_needs_a_working_device_and_a_booting_guest() -> None:
    assert choose_accel(DEVICE_OK, lambda: Check(True, "booted")).accel == "kvm"
    hung = choose_accel(DEVICE_OK, lambda: Check(False, "printed nothing"))
    assert hung == Verdict("tcg", "/dev/kvm speaks KVM API 12, but printed nothing")
    assert choose_accel(DEVICE_OK, None).accel == "tcg"


def test_a_bad_device_is_not_probed() -> None:
    def probe() -> Check:
        raise AssertionError("probed")

    assert choose_accel(DEVICE_BAD, probe) == Verdict("tcg", "/dev/kvm does not exist")


@pytest.mark.parametrize("mode", ["kvm", "tcg"])
def test_override_wins_without_probing(tmp_path: Path, mode: str) -> None:
    probe = Probe(Check(True, "booted"))
    got = detect_accel(
        cfg(tmp_path, mode),
        kernel=Path("/k"),
        probe=probe,
        device_check=lambda: DEVICE_BAD,
        boot_id="b1",
    )
    assert got == mode and probe.calls == []
    assert not (tmp_path / "run" / "accel.json").exists()


def test_verdict_is_cached_per_boot(tmp_path: Path) -> None:
    c = cfg(tmp_path)
    probe = Probe(Check(True, "booted"))
    assert (
        detect_accel(
            c, kernel=Path("/k"), probe=probe, device_check=lambda: DEVICE_OK, boot_id="b1"
        )
        == "kvm"
    )
    assert probe.calls == [Path("/k")]
    data = json.loads((tmp_path / "run" / "accel.json").read_text())
    assert data == {"boot_id": "b1", "accel": "kvm", "reason": "booted"}
    # same boot: no new probe, even if it would now say otherwise
    probe.result = Check(False, "hung")
    assert (
        detect_accel(
            c, kernel=Path("/k"), probe=probe, device_check=lambda: DEVICE_OK, boot_id="b1"
        )
        == "kvm"
    )
    assert len(probe.calls) == 1
    # another boot: probe again
    assert (
        detect_accel(
            c, kernel=Path("/k"), probe=probe, device_check=lambda: DEVICE_OK, boot_id="b2"
        )
        == "tcg"
    )
    assert len(probe.calls) == 2


def test_no_kernel_means_tcg_and_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "_find_probe_kernel", lambda _cfg: None)
    probe = Probe(Check(True, "booted"))
    assert (
        detect_accel(cfg(tmp_path), probe=probe, device_check=lambda: DEVICE_OK, boot_id="b1")
        == "tcg"
    )
    assert probe.calls == []
    assert not (tmp_path / "run" / "accel.json").exists()  # probe once a kernel exists


def test_bad_device_verdict_is_cached_without_a_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accel, "_find_probe_kernel", lambda _cfg: None)
    assert detect_accel(cfg(tmp_path), device_check=lambda: DEVICE_BAD, boot_id="b1") == "tcg"
    assert load_cached(tmp_path / "run" / "accel.json", "b1") == Verdict("tcg", DEVICE_BAD.reason)


@pytest.mark.parametrize(
    "content",
    [
        "",
        "not json",
        "[]",
        '{"boot_id": "b1", "accel": "hvf"}',
        '{"boot_id": "b0", "accel": "kvm"}',
    ],
)
def test_unusable_cache_is_ignored(tmp_path: Path, content: str) -> None:
    cache = tmp_path / "accel.json"
    cache.write_text(content)
    assert load_cached(cache, "b1") is None


def test_empty_boot_id_never_hits_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "accel.json"
    cache.write_text('{"boot_id": "", "accel": "kvm"}')
    assert load_cached(cache, "") is None


def test_device_check_on_missing_and_wrong_devices(tmp_path: Path) -> None:
    assert not accel.check_kvm_device(tmp_path / "kvm").ok
    plain = tmp_path / "plain"
    plain.write_text("")
    result = accel.check_kvm_device(plain)  # a regular file: the ioctl fails
    assert not result.ok and "KVM_GET_API_VERSION" in result.reason


@pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="no /dev/kvm")
def test_device_check_on_this_host() -> None:
    result = accel.check_kvm_device()
    assert result.reason  # ok or not, it says why


def test_probe_command_boots_the_kernel_under_kvm_without_initrd() -> None:
    cmd = probe_command(Path("/k/vmlinux"), bios=None)
    assert cmd[:3] == ["qemu-system-x86_64", "-accel", "kvm"]
    assert cmd[cmd.index("-kernel") + 1] == "/k/vmlinux"
    assert "-initrd" not in cmd and "-no-reboot" in cmd
    assert "console=ttyS0" in cmd[cmd.index("-append") + 1]


def test_probe_of_a_qemu_that_prints_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "qemu"
    fake.write_text("#!/bin/sh\necho 'qemu: starting'\nexec sleep 30\n")
    fake.chmod(0o755)
    monkeypatch.setattr(accel, "QEMU", str(fake))
    result = accel.probe_kvm_boot(Path("/k"), timeout=0.5)
    assert not result.ok and "qemu: starting" in result.reason
    assert result.reason.startswith("a guest kernel printed nothing")


def test_probe_of_a_booting_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "qemu"
    fake.write_text("#!/bin/sh\necho 'Linux version 6.1.0 (x)'\nexec sleep 30\n")
    fake.chmod(0o755)
    monkeypatch.setattr(accel, "QEMU", str(fake))
    assert accel.probe_kvm_boot(Path("/k"), timeout=5).ok


def test_probe_of_a_qemu_that_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "qemu"
    fake.write_text("#!/bin/sh\necho 'kvm.c: kvm_buf_set_msrs: Assertion failed' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(accel, "QEMU", str(fake))
    result = accel.probe_kvm_boot(Path("/k"), timeout=5)
    assert not result.ok and result.reason.startswith("QEMU failed")
    assert "Assertion" in result.reason


def test_probe_without_qemu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "QEMU", "/nonexistent/qemu")
    assert not accel.probe_kvm_boot(Path("/k"), timeout=1).ok
