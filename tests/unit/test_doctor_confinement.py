"""hypervm doctor reports the confinement in force: per-VM identity, QEMU's seccomp filter,
the network policy (issue 15 "must show")."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from executor import netpolicy
from executor.cli.doctor import CHECKS
from executor.cli.doctor_confinement import (
    check_network_policy,
    check_qemu_user,
    check_seccomp,
    host_users_in,
    namespaces_off,
    qemu_conf_identity,
    qemu_seccomp_modes,
    root_in_qemu_conf,
    seccomp_setting,
)
from hypervm.config import config_from_env


def test_doctor_runs_the_confinement_checks() -> None:
    names = {check.__name__ for check in CHECKS}
    assert {"check_vm_identity", "check_qemu_user", "check_seccomp",
            "check_network_policy"} <= names


def test_seccomp_setting_is_read_from_qemu_conf() -> None:
    assert seccomp_setting("#seccomp_sandbox = 1\n") is None
    assert seccomp_setting("seccomp_sandbox = 0\n") == 0
    assert seccomp_setting("seccomp_sandbox = 1\n# x\nseccomp_sandbox=0\n") == 0


def test_seccomp_off_in_qemu_conf_fails(tmp_path: Path) -> None:
    conf = tmp_path / "qemu.conf"
    conf.write_text("seccomp_sandbox = 0\n")
    result = check_seccomp(config_from_env({}), conf, tmp_path)
    assert not result.ok and "seccomp_sandbox = 0" in result.detail


def test_a_running_qemu_without_a_filter_fails(tmp_path: Path) -> None:
    # this test process has no seccomp filter: a "QEMU" that is this process is unfiltered
    (tmp_path / "hypervm-x.pid").write_text(str(os.getpid()))
    (tmp_path / "other.pid").write_text(str(os.getpid()))  # not ours: ignored
    assert qemu_seccomp_modes(tmp_path) == {"hypervm-x": "none"}
    result = check_seccomp(config_from_env({}), tmp_path / "none.conf", tmp_path)
    assert not result.ok and "hypervm-x" in result.detail
    (tmp_path / "hypervm-x.pid").unlink()
    result = check_seccomp(config_from_env({}), tmp_path / "none.conf", tmp_path)
    assert result.ok and "no VM runs" in result.detail


def test_network_policy_is_reported_honestly(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.setattr(netpolicy, "installed", lambda: None)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/sbin/nft")
    result = check_network_policy(config_from_env({"HYPERVM_NET_ALLOW_HOST": "127.0.0.1:5000"}),
                                  tmp_path)
    assert result.ok and not result.warn
    assert "installed when the next VM boots" in result.detail
    assert "refused: the host" in result.detail and "127.0.0.1:5000/tcp" in result.detail
    assert "200000-265535" in result.detail
    (tmp_path / "hypervm-x.pid").write_text(str(os.getpid()))  # a VM runs, the table is gone
    gone = check_network_policy(config_from_env({}), tmp_path)
    assert not gone.ok and "1 VM(s) run" in gone.detail and "is gone" in gone.detail
    monkeypatch.setattr(netpolicy, "installed", lambda: "table inet hypervm {}")
    assert "policy in force" in check_network_policy(config_from_env({}), tmp_path).detail
    off = check_network_policy(config_from_env({"HYPERVM_NET_POLICY": "off"}))
    assert off.ok and off.warn and "policy off" in off.detail
    monkeypatch.setattr(shutil, "which", lambda name: None)
    missing = check_network_policy(config_from_env({}))
    assert not missing.ok and "nftables" in missing.fix


def test_host_users_in_the_vm_range_are_found() -> None:
    assert host_users_in(0, 0) == ["root"]
    assert host_users_in(200000, 265535) == []


def test_qemu_in_the_hosts_mount_namespace_is_found() -> None:
    assert namespaces_off("namespaces = [ ]\n")
    assert not namespaces_off('#namespaces = []\nnamespaces = [ "mount" ]\n')


# -- QEMU as root (qemu.conf user/group) -----------------------------------------------------

_USERS = {"root": 0, "toor": 0, "libvirt-qemu": 64055, "100": 4242}


def _user_id(name: str) -> int:
    return _USERS[name]


@pytest.mark.parametrize(("text", "expected"), [
    ('#user = "libvirt-qemu"\n#group = "libvirt-qemu"\n', []),  # Debian's shipped file
    ('user = "libvirt-qemu"\ngroup = "kvm"\n', []),
    ('user = "root"\n', ['user = "root"']),
    ('  user="+0"\n', ['user = "+0"']),
    ('user = "toor"\n', ['user = "toor"']),  # another name for uid 0
    ('user = "0"\n', ['user = "0"']),  # no user named "0": libvirt takes the uid
    ('user = "100"\n', []),  # a user named "100" comes first
    ('user = "root"\nuser = "libvirt-qemu"\n', []),  # the last one counts
    ('user = "libvirt-qemu"\ngroup = "root"\n', ['group = "root"']),
    ('# user = "root"\n', []),
])
def test_qemu_conf_running_qemu_as_root_is_found(text: str, expected: list[str]) -> None:
    assert root_in_qemu_conf(text, _user_id, _user_id) == expected


def test_qemu_conf_user_and_group_are_read() -> None:
    assert qemu_conf_identity('user = "a"\n#group = "b"\ngroup = "c"\n') == {
        "user": "a", "group": "c"}


def test_qemu_as_root_fails_the_doctor_with_the_fix(tmp_path: Path) -> None:
    conf = tmp_path / "qemu.conf"
    conf.write_text('user = "root"\ngroup = "root"\n')
    result = check_qemu_user(config_from_env({}), conf, tmp_path)
    assert not result.ok and 'user = "root"' in result.detail
    assert "network policy" in result.detail and "restart libvirtd" in result.fix
    conf.write_text('#user = "root"\n')
    result = check_qemu_user(config_from_env({}), conf, tmp_path)
    assert result.ok and "no VM runs" in result.detail


def test_a_running_qemu_as_root_fails_the_doctor(tmp_path: Path) -> None:
    # this test runs as root: a "QEMU" that is this process runs as root
    assert os.getuid() == 0
    (tmp_path / "hypervm-x.pid").write_text(str(os.getpid()))
    result = check_qemu_user(config_from_env({}), tmp_path / "none.conf", tmp_path)
    assert not result.ok and "hypervm-x runs as root" in result.detail
