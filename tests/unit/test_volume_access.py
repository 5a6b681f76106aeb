"""``run -v`` ACL entries (executor.volume_access): one per VM, taken off when its VM ends
without touching another VM's, recorded so that ``hypervm gc`` takes off those of a VM whose
owner (the CLI, a detached run's supervisor) was SIGKILLed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from executor import volume_access as va
from hypervm.config import HostConfig
from hypervm.podspec import Mount

A, B = 200001, 200002  # two VMs' QEMU uids
OPERATOR = 1234  # a host user the operator gave access


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    path = tmp_path / "shared"
    path.mkdir()
    path.chmod(0o700)  # root's: no VM uid can enter it without its entry
    return path


@pytest.fixture
def cfg(tmp_path: Path) -> HostConfig:
    return HostConfig(state_dir=tmp_path / "state", run_dir=tmp_path / "run",
                      libvirt_uri="test:///default", accel="tcg")


def _users(path: Path) -> dict[int, int]:
    """uid -> perm of the named users in ``path``'s ACL."""
    try:
        raw = os.getxattr(path, va.ACL_XATTR)
    except OSError:
        return {}
    return {ident: perm for tag, perm, ident in va.acl_entries(raw, 0) if tag == va._USER}


def _grant(cfg: HostConfig, uid: int, domain: str, path: Path, readonly: bool = False):  # noqa: ANN202
    mounts = [Mount(type="9p", destination="/d", source=path, readonly=readonly)]
    return va.granted(uid, mounts, domain, va.keeper(cfg))


def test_a_vm_ending_leaves_another_vms_entry(cfg: HostConfig, shared: Path) -> None:
    first, second = _grant(cfg, A, "hypervm-a", shared), _grant(cfg, B, "hypervm-b", shared, True)
    first.__enter__()
    second.__enter__()
    assert _users(shared) == {A: 7, B: 5}
    first.__exit__(None, None, None)  # A ends while B runs: B keeps its way in
    assert _users(shared) == {B: 5}
    second.__exit__(None, None, None)
    assert va.ACL_XATTR not in os.listxattr(shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o700
    assert not list((cfg.state_dir / "volume-grants").glob("*.json"))


def test_the_operators_acl_and_mask_come_back(cfg: HostConfig, shared: Path) -> None:
    operator = va._encode([(va._USER_OBJ, 7, va._UNDEFINED_ID), (va._USER, 7, OPERATOR),
                           (va._GROUP_OBJ, 0, va._UNDEFINED_ID), (va._MASK, 4, va._UNDEFINED_ID),
                           (va._OTHER, 0, va._UNDEFINED_ID)])
    os.setxattr(shared, va.ACL_XATTR, operator)
    first, second = _grant(cfg, A, "hypervm-a", shared), _grant(cfg, B, "hypervm-b", shared)
    first.__enter__()
    second.__enter__()  # B's grant sees A's widened mask: the operator's is kept from A's record
    first.__exit__(None, None, None)
    second.__exit__(None, None, None)
    assert os.getxattr(shared, va.ACL_XATTR) == operator


def test_gc_takes_off_the_entry_of_a_vm_whose_owner_was_killed(cfg: HostConfig,
                                                               shared: Path) -> None:
    abandoned = _grant(cfg, A, "hypervm-a", shared)
    abandoned.__enter__()  # its owner is SIGKILLed: it never exits the block
    assert va.release_stale(cfg, runs=lambda domain: True, grace=0) == []  # the VM still runs
    assert _users(shared) == {A: 7}
    [grant] = va.release_stale(cfg, runs=lambda domain: False, dry_run=True, grace=0)
    assert (grant.domain, grant.uid, grant.path) == ("hypervm-a", A, str(shared))
    assert _users(shared) == {A: 7}
    assert va.release_stale(cfg, runs=lambda domain: False, grace=0) == [grant]
    assert va.ACL_XATTR not in os.listxattr(shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o700
    assert va.release_stale(cfg, runs=lambda domain: False, grace=0) == []
    # the uid comes round to another VM sharing the same directory; the first owner's late
    # exit (its record gone) must not take the new VM's entry off
    with _grant(cfg, A, "hypervm-c", shared):
        abandoned.__exit__(None, None, None)
        assert _users(shared) == {A: 7}
    assert _users(shared) == {}


def test_gc_leaves_a_replaced_directory_alone(cfg: HostConfig, shared: Path,
                                              tmp_path: Path) -> None:
    abandoned = _grant(cfg, A, "hypervm-a", shared)
    abandoned.__enter__()
    shared.rename(tmp_path / "moved")
    shared.mkdir()
    os.setxattr(shared, va.ACL_XATTR, os.getxattr(tmp_path / "moved", va.ACL_XATTR))
    assert len(va.release_stale(cfg, runs=lambda domain: False, grace=0)) == 1
    assert _users(shared) == {A: 7}  # another directory now: not ours to change
    assert not list((cfg.state_dir / "volume-grants").glob("*.json"))


def test_without_user_keeps_other_vms_and_the_operators() -> None:
    u, g, o, mask = va._USER_OBJ, va._GROUP_OBJ, va._OTHER, va._MASK
    x = va._UNDEFINED_ID
    base = [(u, 7, x), (g, 5, x), (o, 0, x)]
    is_vm = lambda uid: uid >= 200000  # noqa: E731
    acl = [*base, (va._USER, 7, A), (va._USER, 5, B), (mask, 7, x)]
    assert va.without_user(acl, A, is_vm, None) == [*base, (va._USER, 5, B), (mask, 7, x)]
    assert va.without_user([*base, (va._USER, 7, A), (mask, 7, x)], A, is_vm, None) is None
    assert va.mode_bits(base) == 0o750
    acl = [*base, (va._USER, 7, A), (va._USER, 6, OPERATOR), (mask, 7, x)]
    assert va.without_user(acl, A, is_vm, 4) == [*base, (va._USER, 6, OPERATOR), (mask, 4, x)]
    assert va.without_user(acl, A, is_vm, None) == [*base, (va._USER, 6, OPERATOR), (mask, 7, x)]


def test_a_vm_holds_its_entries_from_before_its_qemu_starts(
        cfg: HostConfig, shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(va.identity, "in_use", lambda: {A: "hypervm-a"})
    mounts = [Mount(type="9p", destination="/d", source=shared)]
    with va.VolumeHold(cfg, mounts) as hold:
        hold.before_shares(None)  # QEMU as libvirt's shared user: the operator's modes rule
        assert _users(shared) == {}
        hold.before_shares((A, A))  # boot_vm calls this before QEMU opens the share
        assert _users(shared) == {A: 7}
        assert va.release_stale(cfg, runs=lambda domain: domain == "hypervm-a", grace=0) == []
    assert _users(shared) == {} and stat.S_IMODE(shared.stat().st_mode) == 0o700


def test_gc_leaves_a_fresh_entry_whose_qemu_has_not_started(cfg: HostConfig,
                                                            shared: Path) -> None:
    with _grant(cfg, A, "hypervm-booting", shared):  # the entry comes before QEMU starts
        assert va.release_stale(cfg, runs=lambda domain: False) == []
        assert _users(shared) == {A: 7}
        [record] = (cfg.state_dir / "volume-grants").glob("*.json")
        os.utime(record, (0, 0))  # long ago: its VM never came, or is gone
        assert len(va.release_stale(cfg, runs=lambda domain: False)) == 1
        assert _users(shared) == {}


def test_one_directory_shared_read_only_and_read_write_gets_one_rwx_entry(
        cfg: HostConfig, shared: Path) -> None:
    mounts = [Mount(type="9p", destination="/ro", source=shared, readonly=True),
              Mount(type="9p", destination="/rw", source=shared)]
    with va.granted(A, mounts, "hypervm-a", va.keeper(cfg)):
        assert _users(shared) == {A: 7}
    assert _users(shared) == {}
