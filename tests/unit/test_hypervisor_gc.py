"""``hypervm gc``: which domains and run dirs are leftovers (pure), and applying it (fakes)."""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

import pytest

from executor import volume_access as va
from executor.cli import gc as cli_gc
from executor.cli.gc import collect_garbage
from executor.libvirt.events import DomainInfo
from executor.libvirt.owners import Leftover, owner_gone, select_leftovers, select_orphan_dirs
from executor.mesos.exec_socket import socket_path
from hypervm.config import HostConfig
from hypervm.podspec import Mount

ALIVE = {100: 5000, 200: 7000}


def start_time_of(pid: int) -> int | None:
    return ALIVE.get(pid)


def dom(name: str, running: bool = True, **meta: str) -> DomainInfo:
    return DomainInfo(
        name=name,
        uuid="u-" + name,
        running=running,
        metadata={k.replace("_", "-"): v for k, v in meta.items()},
        disk_paths=(Path(f"/layers/{name}.erofs"), Path("/layers/shared.erofs")),
        share_paths=(),
    )


@pytest.mark.parametrize(
    "meta, gone",
    [
        ({"owner-pid": "100", "owner-start": "5000"}, None),
        ({"owner-pid": "100"}, None),  # no start time recorded: trust the pid
        ({"owner-pid": "300", "owner-start": "5000"}, "owner pid 300 is gone"),
        ({"owner-pid": "100", "owner-start": "4000"}, "owner pid 100 was reused"),
        ({}, "no valid owner pid"),
        ({"owner-pid": "x"}, "no valid owner pid"),
        ({"owner-pid": "0"}, "no valid owner pid"),
    ],
)
def test_owner_gone(meta: dict[str, str], gone: str | None) -> None:
    reason = owner_gone(meta, start_time_of)
    if gone is None:
        assert reason is None
    else:
        assert reason is not None and reason.startswith(gone)


def test_select_leftovers() -> None:
    domains = [
        dom("hypervm-live", owner_pid="100", owner_start="5000"),
        dom("hypervm-dead", owner_pid="300", owner_start="1"),
        dom("hypervm-reused", owner_pid="200", owner_start="1"),
        dom("hypervm-stopped", running=False, owner_pid="100", owner_start="5000"),
    ]
    got = select_leftovers(domains, start_time_of)
    assert [lo.name for lo in got] == ["hypervm-dead", "hypervm-reused", "hypervm-stopped"]
    everything = select_leftovers(domains, start_time_of, everything=True)
    assert [lo.name for lo in everything] == [d.name for d in domains]


def test_select_orphan_dirs() -> None:
    entries = [("hypervm-old", 0.0), ("hypervm-new", 990.0), ("hypervm-live", 0.0), ("other", 0.0)]
    assert select_orphan_dirs(entries, ["hypervm-live"], now=1000.0, grace=60) == ["hypervm-old"]
    assert select_orphan_dirs(entries, [], now=1000.0, grace=0) == [
        "hypervm-live",
        "hypervm-new",
        "hypervm-old",
    ]


class FakeHypervisor:
    def __init__(self, domains: list[DomainInfo]) -> None:
        self.domains = domains
        self.destroyed: list[str] = []

    def list_ours(self) -> list[DomainInfo]:
        return list(self.domains)

    def destroy(self, name: str) -> bool:
        self.destroyed.append(name)
        return True


@pytest.fixture
def cfg(tmp_path: Path) -> HostConfig:
    return HostConfig(
        state_dir=tmp_path / "state",
        run_dir=tmp_path / "run",
        libvirt_uri="test:///default",
        accel="tcg",
    )


def _me() -> dict[str, str]:
    from executor.libvirt.owners import owner_metadata

    return {k.replace("-", "_"): v for k, v in owner_metadata().items()}


def test_collect_garbage(cfg: HostConfig) -> None:
    live = dom("hypervm-live", **_me())
    dead = dom("hypervm-dead", owner_pid=str(2**22 + 1))
    for name in ("hypervm-live", "hypervm-dead", "hypervm-orphan", "hypervm-fresh", "keep-me"):
        (cfg.vms_dir / name).mkdir(parents=True)
    os.utime(cfg.vms_dir / "hypervm-orphan", (0, 0))
    hv = FakeHypervisor([live, dead])
    report = collect_garbage(cfg, hv)  # type: ignore[arg-type]
    assert hv.destroyed == ["hypervm-dead"]
    assert report.destroyed == [Leftover("hypervm-dead", f"owner pid {2**22 + 1} is gone")]
    assert report.kept == ["hypervm-live"]
    assert report.in_use == {Path("/layers/hypervm-live.erofs"), Path("/layers/shared.erofs")}
    assert report.removed_dirs == [cfg.vms_dir / "hypervm-dead", cfg.vms_dir / "hypervm-orphan"]
    assert sorted(p.name for p in cfg.vms_dir.iterdir()) == [
        "hypervm-fresh",
        "hypervm-live",
        "keep-me",
    ]


def test_collect_garbage_dry_run_changes_nothing(cfg: HostConfig) -> None:
    (cfg.vms_dir / "hypervm-dead").mkdir(parents=True)
    hv = FakeHypervisor([dom("hypervm-dead", owner_pid=str(2**22 + 1))])
    report = collect_garbage(cfg, hv, dry_run=True)  # type: ignore[arg-type]
    assert [lo.name for lo in report.destroyed] == ["hypervm-dead"]
    assert hv.destroyed == [] and (cfg.vms_dir / "hypervm-dead").is_dir()


def test_collect_garbage_all(cfg: HostConfig) -> None:
    (cfg.vms_dir / "hypervm-fresh").mkdir(parents=True)
    hv = FakeHypervisor([dom("hypervm-live", **_me())])
    report = collect_garbage(cfg, hv, everything=True)  # type: ignore[arg-type]
    assert hv.destroyed == ["hypervm-live"]
    assert report.removed_dirs == [cfg.vms_dir / "hypervm-fresh"]


def test_gc_command_registers_and_prints(
    cfg: HostConfig, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from executor.cli import main as cli

    hv = FakeHypervisor([dom("hypervm-dead", owner_pid=str(2**22 + 1))])

    class FakeCtx(FakeHypervisor):
        def __init__(self, *_: object, **__: object) -> None:
            self.__dict__ = hv.__dict__

        def __enter__(self) -> FakeHypervisor:
            return hv

        def __exit__(self, *_: object) -> None:
            pass

    monkeypatch.setattr(cli_gc, "Hypervisor", FakeCtx)
    monkeypatch.setattr(cli_gc, "config_from_env", lambda: cfg)
    assert cli.main(["gc"]) == 0
    assert capsys.readouterr().out.startswith("destroyed hypervm-dead (owner pid")
    assert hv.destroyed == ["hypervm-dead"]
    assert cli.main(["gc", "--dry-run", "--all"]) == 0
    assert "would destroy hypervm-dead (--all)" in capsys.readouterr().out


def test_gc_removes_exec_sockets_nobody_serves(cfg: HostConfig) -> None:
    stale = socket_path(cfg, "task-of-a-killed-executor")
    stale.parent.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(stale))  # bound, never listening: what a dead executor leaves
    report = collect_garbage(cfg, FakeHypervisor([]), dry_run=True)  # type: ignore[arg-type]
    assert report.removed_sockets == [stale] and stale.exists()
    report = collect_garbage(cfg, FakeHypervisor([]))  # type: ignore[arg-type]
    assert report.removed_sockets == [stale] and not stale.exists()


def test_gc_takes_off_the_volume_acl_entries_of_vms_that_no_longer_run(
        cfg: HostConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o700)
    owner = va.granted(200001, [Mount(type="9p", destination="/d", source=shared)],
                       "hypervm-killed-owner", va.keeper(cfg))
    owner.__enter__()  # its owner was SIGKILLed: the entry and its record stay
    assert va.ACL_XATTR in os.listxattr(shared)
    assert collect_garbage(cfg, FakeHypervisor([])).released_grants == []  # type: ignore[arg-type]
    for record in (cfg.state_dir / "volume-grants").glob("*.json"):
        os.utime(record, (0, 0))  # not a VM about to start: an old one
    report = collect_garbage(cfg, FakeHypervisor([]), dry_run=True)  # type: ignore[arg-type]
    assert [g.domain for g in report.released_grants] == ["hypervm-killed-owner"]
    assert va.ACL_XATTR in os.listxattr(shared)
    monkeypatch.setattr(cli_gc, "Hypervisor", lambda *_, **__: _Ctx(FakeHypervisor([])))
    monkeypatch.setattr(cli_gc, "config_from_env", lambda: cfg)
    monkeypatch.setattr(cli_gc, "prune_image_cache", lambda *_, **__: None)
    assert cli_gc.gc_command(argparse.Namespace(everything=False, dry_run=False,
                                                images=False)) == 0
    assert (f"took the ACL entry of hypervm-killed-owner (uid 200001) off {shared}"
            in capsys.readouterr().out)
    assert va.ACL_XATTR not in os.listxattr(shared)
    assert os.stat(shared).st_mode & 0o777 == 0o700


class _Ctx:
    def __init__(self, hv: FakeHypervisor) -> None:
        self.hv = hv

    def __enter__(self) -> FakeHypervisor:
        return self.hv

    def __exit__(self, *_: object) -> None:
        pass


def test_gc_says_which_volume_grant_it_could_not_finish(
        cfg: HostConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGKILLed owner's ``-v`` directory was moved away: gc keeps its record and says so,
    with the record, the uid and what to do, not "nothing to remove"."""
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o700)
    owner = va.granted(200001, [Mount(type="9p", destination="/d", source=shared)],
                       "hypervm-killed-owner", va.keeper(cfg))
    owner.__enter__()  # its owner was SIGKILLed: the entry and its record stay
    for record in (cfg.state_dir / "volume-grants").glob("*.json"):
        os.utime(record, (0, 0))
    shared.rename(tmp_path / "elsewhere")
    monkeypatch.setattr(cli_gc, "Hypervisor", lambda *_, **__: _Ctx(FakeHypervisor([])))
    monkeypatch.setattr(cli_gc, "config_from_env", lambda: cfg)
    monkeypatch.setattr(cli_gc, "prune_image_cache", lambda *_, **__: None)
    assert cli_gc.gc_command(argparse.Namespace(everything=False, dry_run=False,
                                                images=False)) == 0
    out = capsys.readouterr().out
    (record,) = (cfg.state_dir / "volume-grants").glob("*.json")
    assert (f"kept the volume grant record {record} of hypervm-killed-owner (uid 200001 stays "
            f"out of use): {shared} was moved or removed") in out
    assert "move it back and run hypervm gc again" in out and "nothing to remove" not in out


# -- what a process killed while it made a snapshot's template left in the store ---------------

#: a template's maker SIGKILLed after its save, before the store's rename (executor.snapshot)
_KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from executor.snapshot import store
from hypervm.config import HostConfig
cfg = HostConfig(state_dir=Path(sys.argv[1]), run_dir=Path(sys.argv[2]),
                 libvirt_uri="test:///default", accel="tcg")
with store.locked(cfg), store.writing(cfg, "half") as (fd, tmp):
    os.write(fd, b"QEVM" + bytes(4096))
    os.close(store.open_memory(tmp))
    store.write_meta(tmp, "hypervm-template-1", {"version": 1}, memory=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_writer(cfg: HostConfig) -> None:
    import subprocess  # only this test runs one
    import sys

    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(cfg.state_dir),
                           str(cfg.run_dir)], env={**os.environ, "PYTHONPATH": str(repo)},
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == -9, done.stderr


def test_gc_removes_what_a_killed_template_maker_left_in_the_snapshot_store(
        cfg: HostConfig) -> None:
    """A daemon (or a HYPERVM_SNAPSHOT=on launch) SIGKILLed while it makes a template leaves
    its temporary entry (a half-written stream and RAM file of up to the template's memory
    size): no launch uses it (it is never renamed into place), and gc removes it, only while
    no live writer holds the store's lock, never a complete entry."""
    from executor.snapshot import store

    with store.locked(cfg), store.writing(cfg, "whole") as (fd, tmp):
        os.write(fd, b"QEVM")
        store.write_meta(tmp, "hypervm-template-0", {"version": 1})
    _killed_writer(cfg)
    root = store.snapshots_dir(cfg)
    left = [p for p in root.iterdir() if p.name.startswith(".half.")]
    assert len(left) == 1 and (left[0] / "meta.json").is_file()
    assert store.lookup(cfg, "half") is None, "a half-made entry is never used"
    hv = FakeHypervisor([])
    with store.locked(cfg):  # a live writer (another daemon, a launch) makes a template
        report = collect_garbage(cfg, hv)  # type: ignore[arg-type]
    assert report.removed_snapshot_parts == [] and left[0].is_dir()
    assert collect_garbage(cfg, hv, dry_run=True).removed_snapshot_parts == left  # type: ignore[arg-type]
    assert left[0].is_dir()
    report = collect_garbage(cfg, hv)  # type: ignore[arg-type]
    assert report.removed_snapshot_parts == left
    assert sorted(p.name for p in root.iterdir()) == ["lock", "whole"]
    assert store.lookup(cfg, "whole") is not None
    assert collect_garbage(cfg, hv).removed_snapshot_parts == []  # type: ignore[arg-type]


def test_gc_makes_no_snapshot_store_and_leaves_one_not_ours(
        cfg: HostConfig, tmp_path: Path) -> None:
    from executor.snapshot import store

    hv = FakeHypervisor([])
    assert collect_garbage(cfg, hv).removed_snapshot_parts == []  # type: ignore[arg-type]
    assert not store.snapshots_dir(cfg).exists()
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / ".k.abc").mkdir(parents=True)
    store.snapshots_dir(cfg).parent.mkdir(parents=True, exist_ok=True)
    store.snapshots_dir(cfg).symlink_to(elsewhere)
    assert collect_garbage(cfg, hv).removed_snapshot_parts == []  # type: ignore[arg-type]
    assert (elsewhere / ".k.abc").is_dir()
