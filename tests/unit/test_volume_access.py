"""``run -v`` ACL entries (executor.volume_access): one per VM, taken off when its VM ends
without touching another VM's, recorded so that ``hypervm gc`` takes off those of a VM whose
owner (the CLI, a detached run's supervisor) was SIGKILLed."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

import pytest

from executor import volume_access as va
from executor import volume_files
from executor.libvirt.grants import granted_uids
from hypervm.config import HostConfig
from hypervm.errors import HyperVMError
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


def test_gc_leaves_a_replaced_directory_alone_and_keeps_its_uid_out_of_reuse(
        cfg: HostConfig, shared: Path, tmp_path: Path) -> None:
    """The directory was moved (or replaced) before gc: the entry (and A's files) may still be
    on it, wherever it went, so its record stays and the uid with it; once it is back, gc
    finishes."""
    abandoned = _grant(cfg, A, "hypervm-a", shared)
    abandoned.__enter__()
    shared.rename(tmp_path / "moved")
    shared.mkdir()
    os.setxattr(shared, va.ACL_XATTR, os.getxattr(tmp_path / "moved", va.ACL_XATTR))
    assert va.release_stale(cfg, runs=lambda domain: False, grace=0) == []
    assert _users(shared) == {A: 7}  # another directory now: not ours to change
    assert A in granted_uids(cfg.state_dir / "volume-grants")
    shared.rmdir()
    (tmp_path / "moved").rename(shared)
    assert len(va.release_stale(cfg, runs=lambda domain: False, grace=0)) == 1
    assert _users(shared) == {}
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
    monkeypatch.setattr(va.identity, "holder", {A: "hypervm-a"}.get)
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


def test_a_vm_that_failed_to_start_keeps_no_entry_while_the_next_one_runs(
        cfg: HostConfig, shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """boot_vm calls before_shares again only once the VM it was called for is destroyed (a
    claim or a snapshot start that failed, then a cold boot): that VM's uid goes back to the
    range, so its entry must go too, not stay for the whole run (days for ``run -d``)."""
    monkeypatch.setattr(va.identity, "holder", {A: "hypervm-claimed", B: "hypervm-cold"}.get)
    mounts = [Mount(type="9p", destination="/d", source=shared)]
    with va.VolumeHold(cfg, mounts) as hold:
        hold.before_shares((A, A))  # the claimed pool VM, destroyed when its adoption failed
        hold.before_shares((B, B))  # the cold boot that followed
        assert _users(shared) == {B: 7}
        assert [p.name.split(".")[0] for p in (cfg.state_dir / "volume-grants").glob("*.json")
                ] == ["hypervm-cold"]
    assert _users(shared) == {} and stat.S_IMODE(shared.stat().st_mode) == 0o700


def test_a_directory_gone_or_replaced_by_a_link_before_the_vm_starts_is_a_clear_error(
        cfg: HostConfig, shared: Path, tmp_path: Path) -> None:
    """``run -v`` resolved the directory when it parsed the flag; by the time the VM starts
    it may be gone or be a symlink: a HyperVMError naming it (no traceback), and root puts
    no entry on what the link points to."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    shared.rmdir()
    with pytest.raises(HyperVMError, match=f"{shared}.*share an existing directory"):
        with _grant(cfg, A, "hypervm-a", shared):
            pass
    shared.symlink_to(elsewhere)
    with pytest.raises(HyperVMError, match=f"{shared}.*symbolic link"):
        with _grant(cfg, A, "hypervm-a", shared):
            pass
    assert _users(elsewhere) == {}
    assert not list((cfg.state_dir / "volume-grants").glob("*.json"))


def test_a_grant_record_is_written_whole_or_not_at_all(cfg: HostConfig, shared: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed between writing the record and renaming it into place: no record gc would read
    (a truncated one is dropped as unreadable, and its ACL entry never taken off), no entry."""
    def killed(*a: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(va.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        _grant(cfg, A, "hypervm-a", shared).__enter__()
    records = cfg.state_dir / "volume-grants"
    assert sorted(p.name for p in records.iterdir()) in ([], [".lock"])
    assert _users(shared) == {}


def test_a_uid_whose_entry_outlived_its_vm_is_not_handed_out_again(
        cfg: HostConfig, shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The owner of A's grant is SIGKILLed and its VM is gone: until gc takes A's entry off the
    directory, the uid allocator must not give A to another (tenant's) VM, whose escaped QEMU
    would reach the first tenant's directory through it."""
    registry = tmp_path / "identities"
    monkeypatch.setattr(va.identity, "REGISTRY", registry)
    monkeypatch.setattr(va.identity, "LIBVIRT_PID_DIR", tmp_path / "no-qemu-runs")
    monkeypatch.setattr(va.identity, "open_libvirt_dir", lambda: None)
    monkeypatch.setattr(va.identity, "owner_alive", lambda owner: False)  # SIGKILLed
    small = dataclasses.replace(cfg, vm_uid_range=(A, B))

    class Confining:
        def confines_per_vm(self) -> bool:
            return True

    assert va.identity.for_vm(small, Confining(), "hypervm-a").uid == A
    abandoned = _grant(small, A, "hypervm-a", shared)
    abandoned.__enter__()  # its owner is SIGKILLed in the block
    for reservation in registry.iterdir():
        os.utime(reservation, (0, 0))  # long ago: hypervm-a's reservation has lapsed
    assert va.identity.for_vm(small, Confining(), "hypervm-b").uid == B
    with pytest.raises(HyperVMError) as info:  # round robin comes back to A: still granted
        va.identity.for_vm(small, Confining(), "hypervm-c")
    assert "hypervm gc" in str(info.value) + str(info.value.hint)
    assert _users(shared) == {A: 7}
    assert len(va.release_stale(small, runs=lambda domain: False, grace=0)) == 1  # gc
    assert va.identity.for_vm(small, Confining(), "hypervm-c").uid == A


def _made_by(uid: int, path: Path, mode: int) -> Path:
    os.chown(path, uid, uid, follow_symlinks=False)
    if not path.is_symlink():
        path.chmod(mode)
    return path


def test_files_a_vm_made_go_to_the_directorys_owner_when_it_ends(cfg: HostConfig,
                                                                 shared: Path) -> None:
    """What the guest made under a read-write share belongs to the VM's uid: once the VM ends
    the uid goes round to another tenant's VM, which must not own them. They go to the
    directory's owner (here OPERATOR), owner-only; a VM still running keeps its own."""
    os.chown(shared, OPERATOR, OPERATOR)
    sub = shared / "sub"
    with _grant(cfg, B, "hypervm-b", shared):
        with _grant(cfg, A, "hypervm-a", shared):
            sub.mkdir()
            _made_by(A, sub, 0o777)
            out = _made_by(A, _touch(sub / "out.txt"), 0o4755)
            theirs = _made_by(B, _touch(shared / "b.txt"), 0o600)
        assert (sub.stat().st_uid, sub.stat().st_gid) == (OPERATOR, OPERATOR)
        assert stat.S_IMODE(sub.stat().st_mode) == 0o700
        assert (out.stat().st_uid, stat.S_IMODE(out.stat().st_mode)) == (OPERATOR, 0o700)
        assert theirs.stat().st_uid == B  # B still runs: its files stay its own
        assert granted_uids(cfg.state_dir / "volume-grants") == {B}
    assert theirs.stat().st_uid == OPERATOR
    assert not list((cfg.state_dir / "volume-grants").glob("*.json"))


def test_gc_hands_back_the_files_of_a_vm_whose_owner_was_killed(cfg: HostConfig,
                                                                shared: Path) -> None:
    abandoned = _grant(cfg, A, "hypervm-a", shared)
    abandoned.__enter__()  # its owner is SIGKILLed in the block
    out = _made_by(A, _touch(shared / "out.txt"), 0o600)
    assert len(va.release_stale(cfg, runs=lambda domain: False, grace=0)) == 1
    assert out.stat().st_uid == 0  # the directory's owner (root here)
    assert not list((cfg.state_dir / "volume-grants").glob("*.json"))


def test_a_walk_cut_short_keeps_the_uid_out_of_reuse_until_gc_completes_it(
        cfg: HostConfig, shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hostile guest can make more entries than a VM's end may take to walk: the entry comes
    off, but the record (and so the uid) stays until gc's walk gets through."""
    deep = shared
    for _ in range(4):
        deep = deep / "d"
        deep.mkdir()
        _made_by(A, deep, 0o700)
    monkeypatch.setattr(volume_files, "MAX_DEPTH", 2)
    with _grant(cfg, A, "hypervm-a", shared):
        pass
    assert _users(shared) == {}
    assert granted_uids(cfg.state_dir / "volume-grants") == {A}
    assert va.release_stale(cfg, runs=lambda domain: False, grace=0) == []  # still too deep
    monkeypatch.setattr(volume_files, "MAX_DEPTH", 8)
    assert len(va.release_stale(cfg, runs=lambda domain: False, grace=0)) == 1
    assert deep.stat().st_uid == 0
    assert granted_uids(cfg.state_dir / "volume-grants") == set()


def test_a_read_only_share_is_not_walked(cfg: HostConfig, shared: Path) -> None:
    mine = _made_by(A, _touch(shared / "theirs"), 0o600)  # not made by this VM: it cannot
    with _grant(cfg, A, "hypervm-a", shared, readonly=True):
        pass
    assert mine.stat().st_uid == A
    assert not list((cfg.state_dir / "volume-grants").glob("*.json"))


def test_a_record_stays_while_its_entry_could_not_be_taken_off(
        cfg: HostConfig, shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Taking the entry off failed (only logged): the record must stay, else the uid is handed
    out again while the entry still names it; gc retries."""
    real_removexattr = os.removexattr

    def failing(*args: object, **kwargs: object) -> None:
        raise OSError(5, "Input/output error")

    with _grant(cfg, A, "hypervm-a", shared):
        monkeypatch.setattr(va.os, "removexattr", failing)
    assert _users(shared) == {A: 7}
    assert granted_uids(cfg.state_dir / "volume-grants") == {A}
    monkeypatch.setattr(va.os, "removexattr", real_removexattr)
    assert len(va.release_stale(cfg, runs=lambda domain: False, grace=0)) == 1
    assert _users(shared) == {}
    assert granted_uids(cfg.state_dir / "volume-grants") == set()


def _touch(path: Path) -> Path:
    path.write_text("x")
    return path


def test_a_record_of_another_version_is_neither_dropped_nor_misread(cfg: HostConfig,
                                                                    shared: Path) -> None:
    """Another hypervm version on the host (a field more, or one we cannot read): deleting its
    record would free a uid whose entry may still be on a directory."""
    abandoned = _grant(cfg, A, "hypervm-a", shared)
    abandoned.__enter__()
    records = cfg.state_dir / "volume-grants"
    [record] = records.glob("*.json")
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "from_a_newer_version": 1}))
    odd = records / "hypervm-z.1.2.json"
    odd.write_text("{not json")
    assert granted_uids(records) == {A}
    with _grant(cfg, B, "hypervm-b", shared):  # reads every record: drops none
        pass
    assert odd.exists() and record.exists()
    assert len(va.release_stale(cfg, runs=lambda domain: False, grace=0)) == 1
    assert odd.exists() and _users(shared) == {}


def test_a_directory_moved_while_its_vm_runs_is_finished_where_it_went(
        cfg: HostConfig, shared: Path, tmp_path: Path) -> None:
    """The VM's end works on the directory it opened when the grant was made, not on a path:
    moved meanwhile (and another directory made at its old path), the moved one gets its entry
    off and its files handed back; the new one at the old path is not touched."""
    os.chown(shared, OPERATOR, OPERATOR)
    moved = tmp_path / "moved"
    with _grant(cfg, A, "hypervm-a", shared):
        out = _made_by(A, _touch(shared / "out.txt"), 0o600)
        shared.rename(moved)
        shared.mkdir()
        decoy = _made_by(A, _touch(shared / "decoy"), 0o600)  # A's, at the old path
    assert _users(moved) == {} and (moved / out.name).stat().st_uid == OPERATOR
    assert decoy.stat().st_uid == A  # not the directory granted: not ours to change
    assert not list((cfg.state_dir / "volume-grants").glob("*.json"))


def test_gc_reports_a_record_it_cannot_finish_and_keeps_it(
        cfg: HostConfig, shared: Path, tmp_path: Path) -> None:
    """A SIGKILLed owner's directory was moved: gc cannot find it, so it keeps the record (the
    uid out of reuse), touches nothing at the old path, and says which record, why and what to
    do, instead of "nothing to remove"."""
    abandoned = _grant(cfg, A, "hypervm-a", shared)
    abandoned.__enter__()  # its owner is SIGKILLed in the block
    shared.rename(tmp_path / "moved")
    shared.mkdir()
    decoy = _made_by(A, _touch(shared / "decoy"), 0o600)
    stuck: list[va.Unfinished] = []
    assert va.release_stale(cfg, runs=lambda domain: False, grace=0, unfinished=stuck) == []
    assert [(u.grant.path, u.grant.uid) for u in stuck] == [(str(shared), A)]
    assert "another directory" in stuck[0].why and stuck[0].record.exists()
    assert decoy.stat().st_uid == A and _users(tmp_path / "moved") == {A: 7}
    assert A in granted_uids(cfg.state_dir / "volume-grants")
    shared.rename(tmp_path / "other")
    stuck.clear()
    assert va.release_stale(cfg, runs=lambda domain: False, grace=0, unfinished=stuck) == []
    assert "No such file" in stuck[0].why
