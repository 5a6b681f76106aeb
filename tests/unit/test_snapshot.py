"""The snapshot path's pure parts and its store: the clone's domain, the snapshot key, the
store's atomic entries, the QMP sequences of save/restore (against a fake monitor), the fit
rule, RESEED's payload and the setting."""

from __future__ import annotations

import dataclasses
import fcntl
import os
import shutil
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from executor import network
from executor.guest.protocol import MsgType, reseed_payload
from executor.libvirt import migration, vcpucap
from executor.libvirt.designer import INCOMING_ARGS, clone_domain, pool_domain, template_domain
from executor.libvirt.domain_xml import domain_xml
from executor.snapshot import start, store, template
from executor.snapshot.start import unfit_reason
from executor.snapshot.store import Shape
from hypervm.config import config_from_env
from hypervm.errors import (
    HostError,
    HypervisorError,
    InvalidSpec,
    NetworkError,
    ProtocolError,
)
from hypervm.netspec import NetworkSpec, PortMapping
from hypervm.podspec import Container, PodSpec, Process, Rootfs
from vmimage.boot import BootFiles
from vmimage.kernel import Kernel
from vmimage.qemu import DISTRO

BOOT = BootFiles(kernel=Kernel(Path("/var/lib/hypervm/kernel/0123456789abcdef/vmlinux"), "6.1",
                               "hyperkernel"),
                 initrd=Path("/var/lib/hypervm/initrd/fedcba9876543210/initrd.img"),
                 qemu=DISTRO, accel="tcg", cmdline="console=ttyS0 quiet panic=-1")


@pytest.fixture
def cfg(tmp_path: Path) -> Any:
    return config_from_env({"HYPERVM_STATE_DIR": str(tmp_path / "state"),
                            "HYPERVM_RUN_DIR": str(tmp_path / "run"),
                            "HYPERVM_SNAPSHOT_VCPUS": "2"})


# -- the clone's domain -------------------------------------------------------------------------

def test_clone_is_the_templates_domain_under_its_own_name_waiting_for_its_state(cfg: Any) -> None:
    template = template_domain("hypervm-template-1", BOOT, cfg,
                               cfg.vms_dir / "hypervm-template-1", 2, 256, {})
    clone = clone_domain("hypervm-web-2", "hypervm-template-1", BOOT, cfg,
                         cfg.vms_dir / "hypervm-web-2", 2, 256, {"pod": "web"},
                         identity=(200001, 200001))
    assert clone.name == "hypervm-web-2"
    assert clone.channel_socket == cfg.vms_dir / "hypervm-web-2" / "channel.sock"
    assert clone.identity == (200001, 200001)
    # the devices its saved state fills are the template's, the NIC's MAC included
    assert (clone.vcpus, clone.max_vcpus, clone.memory_mib, clone.disks) == (
        template.vcpus, template.max_vcpus, template.memory_mib, template.disks) == (2, 2, 256, ())
    assert '<vcpu placement="static" current="2">2</vcpu>' in domain_xml(clone)
    assert clone.cmdline == template.cmdline  # its spare offlined before READY
    assert [s.tag for s in clone.shares] == [s.tag for s in template.shares]
    assert clone.qemu_args == (*template.qemu_args, *INCOMING_ARGS)
    assert network.mac_address("hypervm-template-1") in " ".join(clone.qemu_args)
    assert network.mac_address("hypervm-web-2") not in " ".join(clone.qemu_args)
    assert '<qemu:arg value="-incoming" />\n    <qemu:arg value="defer" />' in domain_xml(clone)


def test_a_clones_ram_is_anonymous_never_merged_a_templates_a_shared_memfd(cfg: Any) -> None:
    """Loading a snapshot reads every page: a memfd would then have all of the clone's RAM
    resident (measured: 128 of 128 MiB), anonymous memory maps its zero page."""
    template = domain_xml(pool_domain("hypervm-template-1", BOOT, cfg,
                                      cfg.vms_dir / "hypervm-template-1", 1, 128, {}))
    clone = domain_xml(clone_domain("hypervm-web-2", "hypervm-template-1", BOOT, cfg,
                                    cfg.vms_dir / "hypervm-web-2", 1, 128, {}))
    assert '<source type="memfd" />' in template and '<access mode="shared" />' in template
    assert "<source" not in clone.split("<memoryBacking>")[1].split("</memoryBacking>")[0]
    assert "<nosharepages />" in clone  # a clone's RAM is never merged with another's


# -- the key ------------------------------------------------------------------------------------

def test_key_is_stable_and_changes_with_the_shape_and_the_boot_files(cfg: Any) -> None:
    key = store.snapshot_key(BOOT, cfg, Shape(1, 128))
    assert key == store.snapshot_key(BOOT, cfg, Shape(1, 128))
    # vCPUs up to the template's capacity (HYPERVM_SNAPSHOT_VCPUS, 2 here) are hot-plugged
    assert key == store.snapshot_key(BOOT, cfg, Shape(2, 128))
    assert key != store.snapshot_key(BOOT, cfg, Shape(3, 128))
    assert key != store.snapshot_key(BOOT, cfg, Shape(1, 256))
    other_init = dataclasses.replace(BOOT, initrd=Path("/var/lib/hypervm/initrd/00/initrd.img"))
    assert key != store.snapshot_key(other_init, cfg, Shape(1, 128))
    no_reporting = dataclasses.replace(cfg, free_page_reporting=False)
    assert key != store.snapshot_key(BOOT, no_reporting, Shape(1, 128))


def test_key_changes_with_the_qemu_binary(cfg: Any, tmp_path: Path) -> None:
    binary = tmp_path / "qemu-system-x86_64"
    binary.write_bytes(b"v1")
    boot = dataclasses.replace(BOOT, qemu=dataclasses.replace(DISTRO, path=binary))
    key = store.snapshot_key(boot, cfg, Shape(1, 128))
    binary.write_bytes(b"v2 upgraded")  # apt upgrades it in place
    assert store.snapshot_key(boot, cfg, Shape(1, 128)) != key


# -- the store ----------------------------------------------------------------------------------

def test_an_entry_appears_whole_and_root_only(cfg: Any) -> None:
    assert store.lookup(cfg, "k1") is None
    with store.locked(cfg), store.writing(cfg, "k1") as (fd, tmp):
        os.write(fd, b"QEVM...")
        assert store.lookup(cfg, "k1") is None  # nothing published before the block ends
        store.write_meta(tmp, "hypervm-template-x", {"version": 1, "init": "0.4.0"})
    entry = store.lookup(cfg, "k1")
    assert entry is not None
    assert entry.state.read_bytes() == b"QEVM..."
    assert (entry.template, entry.ready) == ("hypervm-template-x", {"version": 1, "init": "0.4.0"})
    root = store.snapshots_dir(cfg)
    for path, mode in ((root, 0o700), (entry.state.parent, 0o700), (entry.state, 0o600),
                       (entry.state.parent / "meta.json", 0o600)):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    assert sorted(p.name for p in root.iterdir()) == ["k1", "lock"]


def test_a_failed_entry_leaves_nothing(cfg: Any) -> None:
    with pytest.raises(HypervisorError), store.locked(cfg), store.writing(cfg, "k2") as (fd, _):
        os.write(fd, b"half a stream")
        raise HypervisorError("the template died")
    assert store.lookup(cfg, "k2") is None
    assert sorted(p.name for p in store.snapshots_dir(cfg).iterdir()) == ["lock"]


def test_a_dead_writers_leftovers_go_with_the_next_entry(cfg: Any) -> None:
    root = store.snapshots_dir(cfg)
    root.mkdir(parents=True, mode=0o700)
    (root / ".k6.abc123").mkdir()
    (root / ".k6.abc123" / "state").write_bytes(b"half a stream")
    with store.locked(cfg), store.writing(cfg, "k7") as (_, tmp):
        store.write_meta(tmp, "t", {})
    assert sorted(p.name for p in root.iterdir()) == ["k7", "lock"]


def test_an_entry_of_another_format_or_without_state_is_ignored(cfg: Any) -> None:
    with store.locked(cfg), store.writing(cfg, "k3") as (_, tmp):
        store.write_meta(tmp, "t", {})
    entry = store.snapshots_dir(cfg) / "k3"
    meta = (entry / "meta.json").read_text().replace(f'"format": {store.FORMAT}', '"format": 0')
    (entry / "meta.json").write_text(meta)
    assert store.lookup(cfg, "k3") is None
    (entry / "meta.json").write_text("{not json")
    assert store.lookup(cfg, "k3") is None


def test_a_discarded_entry_is_gone(cfg: Any) -> None:
    with store.locked(cfg), store.writing(cfg, "k4") as (_, tmp):
        store.write_meta(tmp, "t", {})
    entry = store.lookup(cfg, "k4")
    assert entry is not None
    store.discard(cfg, entry)
    assert store.lookup(cfg, "k4") is None
    assert not entry.state.parent.exists()


def test_a_failed_template_is_not_retried_for_a_while(cfg: Any) -> None:
    store.check_not_failed(cfg, "k5")
    store.record_failure(cfg, "k5", "init 0.3.0 cannot reseed")
    with pytest.raises(HostError, match="init 0.3.0 cannot reseed"):
        store.check_not_failed(cfg, "k5")
    later = time.time() + store.RETRY_FAILED_S + 1
    store.check_not_failed(cfg, "k5", now=later)
    store.check_not_failed(cfg, "k5")  # the record is gone


def test_a_store_root_that_is_a_symlink_is_refused(cfg: Any, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    store.snapshots_dir(cfg).parent.mkdir(parents=True)
    store.snapshots_dir(cfg).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(HostError, match="not a directory of ours"):
        with store.locked(cfg):
            pass


# -- save and restore over QMP ------------------------------------------------------------------

class FakeMonitor:
    """Answers QMP commands from scripted statuses; records what was asked."""

    def __init__(self, statuses: list[str], key: str) -> None:
        self.statuses, self.key = statuses, key
        self.commands: list[str] = []
        self.files: list[int] = []

    def monitor(self, name: str, command: dict[str, Any], files: Any = ()) -> Any:
        self.commands.append(command["execute"])
        self.files += list(files)
        if command["execute"] in ("query-migrate", "query-status"):
            return {self.key: self.statuses.pop(0)}
        return {}


def test_save_stops_passes_the_fd_and_waits_for_completion() -> None:
    hv = FakeMonitor(["active", "active", "completed"], "status")
    migration.save(hv, "t", 7, timeout=5)
    assert hv.commands == ["stop", "getfd", "migrate", "query-migrate", "query-migrate",
                           "query-migrate"]
    assert hv.files == [7]


def test_a_failed_save_is_an_error() -> None:
    with pytest.raises(HypervisorError, match="migration failed"):
        migration.save(FakeMonitor(["failed"], "status"), "t", 7, timeout=5)


def test_restore_loads_the_stream_then_runs_the_vm(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_bytes(b"QEVM")
    hv = FakeMonitor(["inmigrate", "inmigrate", "paused"], "status")
    migration.restore(hv, "c", state, timeout=5)
    assert hv.commands == ["getfd", "migrate-set-parameters", "migrate-incoming",
                           "query-status", "query-status", "query-status", "cont"]
    assert len(hv.files) == 1


def test_a_clone_announces_nothing_after_its_load(tmp_path: Path) -> None:
    """QEMU's default after an incoming migration: 5 rounds of RARPs and, through virtio-net's
    GUEST_ANNOUNCE, 5 config interrupts on which the clone's kernel sends gratuitous ARPs (guest
    code TCG translates on the start's clock, for switches a clone's own slirp never has). The
    rounds are set to 0 before the stream loads (virtio-net arms its timer in its post-load)."""
    state = tmp_path / "state"
    state.write_bytes(b"QEVM")
    hv = RecordingMonitor(["paused"], "status")
    migration.load(hv, "c", state, timeout=5)
    assert {"execute": "migrate-set-parameters", "arguments": {"announce-rounds": 0}} \
        in hv.full[:hv.commands.index("migrate-incoming")]


def test_a_clone_that_did_not_load_is_an_error(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_bytes(b"garbage")
    with pytest.raises(HypervisorError, match="did not load its snapshot"):
        migration.restore(FakeMonitor(["shutdown"], "status"), "c", state, timeout=5)


# -- template memory (HyperQEMU's ram-template) -------------------------------------------------

class RecordingMonitor(FakeMonitor):
    """Also records each command whole (its arguments)."""

    def __init__(self, statuses: list[str], key: str) -> None:
        super().__init__(statuses, key)
        self.full: list[dict[str, Any]] = []

    def monitor(self, name: str, command: dict[str, Any], files: Any = ()) -> Any:
        self.full.append(command)
        return super().monitor(name, command, files)


class FdCheckingMonitor(FakeMonitor):
    """Also records each passed fd's access mode (it is closed once the call returns)."""

    def __init__(self, statuses: list[str], key: str) -> None:
        super().__init__(statuses, key)
        self.modes: list[int] = []
        self.inodes: list[int] = []

    def monitor(self, name: str, command: dict[str, Any], files: Any = ()) -> Any:
        for fd in files:
            self.modes.append(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE)
            self.inodes.append(os.fstat(fd).st_ino)
        return super().monitor(name, command, files)


def test_a_template_with_ram_apart_saves_it_into_its_own_file_and_only_devices_in_the_stream(
        ) -> None:
    hv = FakeMonitor(["completed"], "status")
    migration.save(hv, "t", 7, timeout=5, memory_fd=8)
    assert hv.commands == ["stop", "migrate-set-capabilities", "getfd", "migrate",
                           "query-migrate", "getfd", "x-hypervm-ram-template-save"]
    assert hv.files == [7, 8]


def test_a_clone_maps_its_templates_memory_read_only_before_its_stream_loads(
        tmp_path: Path) -> None:
    """QEMU gets a read-only fd of the template's memory, never a writable one (a compromised
    clone's QEMU could otherwise change every other clone's memory), and maps it before the
    incoming migration starts (no guest code has run)."""
    state, memory = tmp_path / "state", tmp_path / "memory"
    state.write_bytes(b"QEVM")
    memory.write_bytes(b"\0" * 4096)
    hv = FdCheckingMonitor(["paused"], "status")
    migration.restore(hv, "c", state, timeout=5, memory=memory)
    assert hv.commands == ["getfd", "x-hypervm-ram-template-map", "migrate-set-capabilities",
                           "getfd", "migrate-set-parameters", "migrate-incoming",
                           "query-status", "cont"]
    assert hv.modes == [os.O_RDONLY, os.O_RDONLY]
    assert hv.inodes == [memory.stat().st_ino, state.stat().st_ino]


def test_without_ram_template_a_clone_loads_the_whole_stream(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_bytes(b"QEVM")
    hv = FakeMonitor(["paused"], "status")
    migration.load(hv, "c", state, timeout=5, memory=None)
    assert "x-hypervm-ram-template-map" not in hv.commands
    assert "migrate-set-capabilities" not in hv.commands


def test_an_entry_with_its_memory_file_gives_it_to_its_clones(cfg: Any) -> None:
    with store.locked(cfg), store.writing(cfg, "m1") as (fd, tmp):
        os.write(fd, b"QEVM")
        mfd = store.open_memory(tmp)
        os.write(mfd, b"RAM")
        os.close(mfd)
        store.write_meta(tmp, "t", {}, memory=True)
    entry = store.lookup(cfg, "m1")
    assert entry is not None and entry.memory is not None
    assert entry.memory.read_bytes() == b"RAM"
    assert stat.S_IMODE(entry.memory.stat().st_mode) == 0o600
    entry.memory.unlink()  # an entry missing its memory is no entry
    assert store.lookup(cfg, "m1") is None


def test_an_entry_without_memory_loads_from_its_stream(cfg: Any) -> None:
    with store.locked(cfg), store.writing(cfg, "m2") as (_, tmp):
        store.write_meta(tmp, "t", {})
    entry = store.lookup(cfg, "m2")
    assert entry is not None and entry.memory is None


def test_a_qemu_without_ram_template_keeps_the_whole_stream() -> None:
    assert not DISTRO.shares_template_memory
    assert dataclasses.replace(DISTRO, features=("ram-template",)).shares_template_memory


# -- fit, RESEED, setting ----------------------------------------------------------------------

def _pod(net: NetworkSpec) -> PodSpec:
    c = Container("c", Rootfs(layers=(Path("/l.erofs"),)), Process(args=("true",)))
    return PodSpec(name="p", containers=(c,), network=net)


def test_pods_without_a_nic_boot_cold_pods_with_ports_start_from_a_snapshot() -> None:
    assert unfit_reason(_pod(NetworkSpec())) is None
    ports = NetworkSpec(ports=(PortMapping(host_port=31000, container_port=80),))
    assert unfit_reason(_pod(ports)) is None  # published on the running clone
    assert "network mode" in (unfit_reason(_pod(NetworkSpec(mode="none"))) or "")


def test_reseed_payload_is_hex_of_32_to_512_bytes() -> None:
    assert MsgType.RESEED == 0x18
    assert reseed_payload(bytes(range(64))) == {"seed": bytes(range(64)).hex()}
    for size in (31, 513):
        with pytest.raises(ProtocolError):
            reseed_payload(b"x" * size)


def test_snapshot_setting() -> None:
    assert config_from_env({}).use_snapshot is False
    assert config_from_env({"HYPERVM_SNAPSHOT": "on"}).use_snapshot is True
    with pytest.raises(InvalidSpec, match="HYPERVM_SNAPSHOT"):
        config_from_env({"HYPERVM_SNAPSHOT": "yes"})


class FakeHypervisor:
    def __init__(self) -> None:
        self.created: list[str] = []
        self.destroyed: list[str] = []

    def confines_per_vm(self) -> bool:
        return False

    def prepare_run_dir(self, directory: Path, owner: Any = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)

    def create(self, spec: Any) -> None:
        self.created.append(spec.name)

    def destroy(self, name: str) -> bool:
        self.destroyed.append(name)
        return True

    def qemu_pid(self, name: str) -> int | None:
        return None


@pytest.fixture(autouse=True)
def no_cgroups(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """No QEMU behind the doubles: the spare vCPUs' host bound (executor.libvirt.vcpucap,
    tests/unit/test_vcpucap.py) is noted, not written."""
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(vcpucap, "bound", lambda *a, **k: calls.append(a))
    return calls


def test_no_clone_runs_without_the_network_policy(cfg: Any, monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    """A snapshot outlives the nftables table of its template's boot: every clone installs
    the policy before its QEMU starts, and a clone whose policy cannot be installed never
    starts (the launcher's cold boot then refuses the same way)."""
    snap = store.Snapshot(state=tmp_path / "state", template="hypervm-template-1", ready={})
    monkeypatch.setattr(template, "ensure", lambda *a, **k: snap)

    def refuse(*a: Any) -> None:
        raise NetworkError("cannot install the guests' network policy: no nf_tables")

    monkeypatch.setattr(start.netpolicy, "enforce", refuse)
    hv = FakeHypervisor()
    pod = _pod(NetworkSpec())
    assert start.start_vm(cfg, pod, hypervisor=hv, timeout=5, boot_files=BOOT) is None
    assert hv.created == []
    assert len(hv.destroyed) == 1  # nothing left behind


def test_the_policy_is_installed_while_the_clone_is_prepared_and_before_it_exists(
        cfg: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The policy's nft runs in a thread beside the clone's preparation (its run dir), and is
    in force before the clone's domain is created."""
    snap = store.Snapshot(state=tmp_path / "gone" / "state", template="hypervm-template-1",
                          ready={})
    monkeypatch.setattr(template, "ensure", lambda *a, **k: snap)
    events: list[str] = []
    prepared = threading.Event()

    def enforce(*a: Any) -> None:
        # on the caller's thread before the preparation, this waits in vain
        events.append("overlapped" if prepared.wait(5) else "alone")
        time.sleep(0.05)
        events.append("policy")

    class Hypervisor(FakeHypervisor):
        def prepare_run_dir(self, directory: Path, owner: Any = None) -> None:
            super().prepare_run_dir(directory, owner)
            prepared.set()

        def create(self, spec: Any) -> None:
            events.append("create")
            super().create(spec)

    monkeypatch.setattr(start.netpolicy, "enforce", enforce)
    hv = Hypervisor()
    assert start.start_vm(cfg, _pod(NetworkSpec()), hypervisor=hv, timeout=5,
                          boot_files=BOOT) is None  # its snapshot is gone: cold
    assert events == ["overlapped", "policy", "create"]
    assert hv.destroyed == hv.created


def test_a_port_the_clone_cannot_publish_fails_the_launch_as_cold(
        cfg: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A port lost after the check (QEMU cannot listen on it) fails the launch with the cold
    boot's NetworkError and destroys the clone: no silent fallback, no clone with some ports."""
    snap = store.Snapshot(state=tmp_path / "state", template="hypervm-template-1", ready={})
    monkeypatch.setattr(template, "ensure", lambda *a, **k: snap)
    monkeypatch.setattr(start, "_clone", lambda *a: {})
    monkeypatch.setattr(start.network, "check_host_ports", lambda spec: None)

    def lost(hv: Any, name: str, spec: Any) -> None:
        raise NetworkError("host port 31000/tcp is already in use")

    monkeypatch.setattr(start.network, "publish_live", lost)
    hv = FakeHypervisor()
    pod = _pod(NetworkSpec(ports=(PortMapping(host_port=31000, container_port=80),)))
    with pytest.raises(NetworkError, match="31000/tcp is already in use"):
        start.start_vm(cfg, pod, hypervisor=hv, timeout=5, boot_files=BOOT)
    assert len(hv.destroyed) == 1


# -- review: a snapshot removed before it loads, a store tenants' shapes cannot fill ----------

def test_a_snapshot_gone_before_it_loads_is_a_hypervisor_error(tmp_path: Path) -> None:
    """Another launch may remove an entry between this one's lookup and its load (a discard,
    or the store's bound): a HyperVMError, so the launch boots cold instead of failing."""
    with pytest.raises(HypervisorError, match="cannot open the snapshot"):
        migration.restore(FakeMonitor([], "status"), "c", tmp_path / "gone" / "state",
                          timeout=5)


def test_a_clone_whose_snapshot_vanished_boots_cold(cfg: Any, monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    snap = store.Snapshot(state=tmp_path / "gone" / "state", template="hypervm-template-1",
                          ready={})
    monkeypatch.setattr(template, "ensure", lambda *a, **k: snap)
    monkeypatch.setattr(start.netpolicy, "enforce", lambda *a: None)
    hv = FakeHypervisor()
    assert start.start_vm(cfg, _pod(NetworkSpec()), hypervisor=hv, timeout=5,
                          boot_files=BOOT) is None
    assert len(hv.created) == 1 and hv.destroyed == hv.created  # nothing left behind


def _make_entry(cfg: Any, key: str) -> None:
    with store.locked(cfg), store.writing(cfg, key) as (fd, tmp):
        os.write(fd, b"QEVM")
        store.write_meta(tmp, "t", {})


def test_the_store_keeps_at_most_max_entries_the_least_recently_used_go(cfg: Any) -> None:
    """Every (vCPUs, memory) a tenant asks for is a shape, hence a ~20 MB entry: the store must
    not grow without bound (nor keep the keys of a replaced kernel/init/QEMU for ever)."""
    for i in range(store.MAX_ENTRIES):
        _make_entry(cfg, f"k{i}")
        os.utime(store.snapshots_dir(cfg) / f"k{i}", (1000 + i, 1000 + i))
    assert store.lookup(cfg, "k0") is not None  # used now: the least recently used is k1
    _make_entry(cfg, "new")
    entries = sorted(p.name for p in store.snapshots_dir(cfg).iterdir() if p.name != "lock")
    assert len(entries) == store.MAX_ENTRIES
    assert "new" in entries and "k0" in entries and "k1" not in entries


def test_a_launch_waits_for_another_shapes_template_no_longer_than_its_timeout(
        cfg: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's lock is held while a template boots and saves (seconds, up to minutes under
    load), one shape after another: a launch of a new shape must not queue behind them beyond
    its own timeout (start_vm then boots cold)."""
    monkeypatch.setattr(start.network, "check_host_ports", lambda spec: None)
    booted: list[Any] = []
    monkeypatch.setattr(template, "_boot_and_save", lambda *a: booted.append(a))
    hv = FakeHypervisor()
    with store.locked(cfg):  # another launch is making a template
        began = time.monotonic()
        with pytest.raises(HostError, match="busy"):
            template.ensure(cfg, BOOT, hv, Shape(1, 300), wait=0.3)
        assert start.start_vm(cfg, _pod(NetworkSpec()), hypervisor=hv, timeout=0.3,
                              boot_files=BOOT) is None
        assert time.monotonic() - began < 3
    assert booted == [] and hv.created == []


def stub_template_guest(monkeypatch: pytest.MonkeyPatch, events: list[Any], *,
                        reply: dict[str, Any], init: str = "0.6.0") -> None:
    """A template's guest as a double: READY from ``init``, each request's kind noted in
    ``events`` and answered ``reply``; no network policy; the save noted as ``"save"``."""

    class Channel:
        def __init__(self, sock: Any) -> None:
            pass

        def ready(self, timeout: float) -> dict[str, Any]:
            return {"version": 1, "init": init}

        def request(self, kind: Any, rid: int, payload: Any, timeout: float) -> Any:
            events.append(kind)
            return reply

    class Socket:
        def close(self) -> None:
            pass

    monkeypatch.setattr(template.netpolicy, "enforce", lambda *a: None)
    monkeypatch.setattr(template, "connect_socket", lambda *a: Socket())
    monkeypatch.setattr(template, "RawChannel", Channel)
    monkeypatch.setattr(template.migration, "save", lambda *a, **k: events.append("save"))


def test_a_template_is_saved_once_its_boots_free_memory_was_reported(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Free page reporting hands memory freed at boot back ~2 s later; a template saved before
    that saves those pages as data (measured: 17.0 MB instead of 14.0 MB of state), and every
    clone loads them into private memory."""
    events: list[Any] = []
    stub_template_guest(monkeypatch, events, reply={"cpus": 1})
    monkeypatch.setattr(template.time, "sleep", lambda s: events.append(("sleep", s)))
    hv = FakeHypervisor()
    short = tempfile.mkdtemp(prefix="hv-")  # the channel socket's path must stay short
    try:
        cfg = config_from_env({"HYPERVM_STATE_DIR": f"{short}/s", "HYPERVM_RUN_DIR": f"{short}/r"})
        template._boot_and_save(cfg, BOOT, hv, Shape(1, 128), 7, Path(short))
    finally:
        shutil.rmtree(short, ignore_errors=True)
    assert events[-2:] == [("sleep", template.SETTLE_S), "save"]
    assert template.SETTLE_S >= 2.0  # the guest kernel's page reporting delay
    assert MsgType.RESEED in events and hv.destroyed == hv.created  # the template is gone


# -- one template's layout is not every tenant's, nor forever ---------------------------------

def test_no_two_tenants_share_a_template(cfg: Any) -> None:
    """Clones share their template's kernel layout (KASLR) and boot-time secrets: a tenant's
    clones never come from another tenant's template."""
    key = store.snapshot_key(BOOT, cfg, Shape(1, 128, "acme"))
    assert key == store.snapshot_key(BOOT, cfg, Shape(1, 128, "acme"))
    assert key != store.snapshot_key(BOOT, cfg, Shape(1, 128, "globex"))
    assert key != store.snapshot_key(BOOT, cfg, Shape(1, 128))  # pods naming none: "default"


def _templates(cfg: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fake template boots (the state is a few bytes); the names of those made."""
    made: list[str] = []

    def boot_and_save(_cfg: Any, _boot: Any, _hv: Any, shape: Shape, fd: int,
                      _entry: Path) -> Any:
        made.append(f"hypervm-template-{len(made)}-{shape.tenant}")
        os.write(fd, b"QEVM")
        return made[-1], {"version": 1}, False

    monkeypatch.setattr(template, "_boot_and_save", boot_and_save)
    return made


def test_a_template_is_remade_after_its_clones_or_its_age(
        cfg: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    made = _templates(cfg, monkeypatch)
    cfg = dataclasses.replace(cfg, snapshot_max_clones=2, snapshot_max_age_s=3600.0)
    shape = Shape(1, 128, "acme")
    first = template.ensure(cfg, BOOT, None, shape)
    assert template.ensure(cfg, BOOT, None, shape).template == first.template == made[0]
    third = template.ensure(cfg, BOOT, None, shape)  # two clones served: a new template
    assert third.template == made[1] != first.template
    assert template.ensure(cfg, BOOT, None, Shape(1, 128, "globex")).template == made[2]
    key = store.snapshot_key(BOOT, cfg, shape)
    assert store.lookup(cfg, key) is not None
    assert store.lookup(cfg, key, now=time.time() + 3600) is None  # an hour old: remade
    template.ensure(cfg, BOOT, None, shape)
    assert len(made) == 3  # its second clone
    monkeypatch.setattr(time, "time", lambda: 1e10)
    assert template.ensure(cfg, BOOT, None, shape).template == made[3]


def test_rotation_can_be_turned_off(cfg: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    made = _templates(cfg, monkeypatch)
    never = dataclasses.replace(cfg, snapshot_max_clones=None, snapshot_max_age_s=None)
    for _ in range(5):
        template.ensure(never, BOOT, None, Shape(1, 128))
    assert len(made) == 1
    assert store.lookup(never, store.snapshot_key(BOOT, never, Shape(1, 128)),
                        now=time.time() + 1e8) is not None
    settings = config_from_env({"HYPERVM_SNAPSHOT_MAX_AGE": "0",
                                "HYPERVM_SNAPSHOT_MAX_CLONES": "0"})
    assert (settings.snapshot_max_age_s, settings.snapshot_max_clones) == (None, None)
    defaults = config_from_env({})
    assert (defaults.snapshot_max_age_s, defaults.snapshot_max_clones) == (3600.0, 100)
