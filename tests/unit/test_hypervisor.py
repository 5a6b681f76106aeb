"""The libvirt wrapper against libvirt's real ``test:///default`` driver (no QEMU)."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from executor.libvirt.domain import DiskSpec, DomainSpec, ShareSpec
from executor.libvirt.events import DISCONNECTED, LifecycleEvent
from executor.libvirt.hypervisor import Hypervisor
from executor.libvirt.owners import owner_metadata, parse_start_time, process_start_time
from hypervm.errors import HostError, HypervisorError, InvalidSpec

libvirt = pytest.importorskip("libvirt")


#: a node for libvirt's test driver with its built-in domain ``test`` (test:///default's)
TEST_NODE_XML = """<node>
  <domain type="test">
    <name>test</name>
    <memory>8388608</memory>
    <vcpu>2</vcpu>
    <os><type>hvm</type></os>
  </domain>
</node>
"""


def private_test_uri(tmp_path: Path) -> str:
    """A test-driver URI whose every connection is an instance of its own. All of a process's
    connections to ``test:///default`` share one instance: its domains and its event queue. A
    connection closed while the event thread was still dispatching one of its events left its
    next event (its teardown's ``stopped``) queued, and the next test's connection got it: a
    ``stopped hypervm-unit-1`` for the domain of the same name that test had just created."""
    node = tmp_path / "test-node.xml"
    node.write_text(TEST_NODE_XML)
    return f"test://{node}"


@pytest.fixture
def hv(tmp_path: Path) -> Iterator[Hypervisor]:
    hypervisor = Hypervisor(private_test_uri(tmp_path), autodestroy=False)
    yield hypervisor
    hypervisor.close()  # its domains go with its instance


def make_spec(tmp_path: Path, name: str = "hypervm-unit-1", **overrides: object) -> DomainSpec:
    run = tmp_path / "run" / "vms" / name
    values: dict[str, object] = dict(
        name=name,
        accel="tcg",
        vcpus=1,
        memory_mib=128,
        kernel=Path("/var/lib/hypervm/kernel/k/vmlinux"),
        initrd=Path("/var/lib/hypervm/initrd/i/initrd.img"),
        cmdline="console=ttyS0",
        channel_socket=run / "channel.sock",
        console_log=run / "console.log",
        disks=(DiskSpec(Path("/var/lib/hypervm/images/l0.erofs"), "l0"),),
        shares=(ShareSpec(Path("/srv/sandbox"), "s0"),),
        metadata={"pod": "unit"},
    )
    values.update(overrides)
    return DomainSpec(**values)  # type: ignore[arg-type]


def test_connect_failure_is_a_host_error_with_a_hint() -> None:
    with pytest.raises(HostError) as info:
        Hypervisor("qemu+unix:///system?socket=/nonexistent/libvirt-sock", events=False)
    assert "libvirtd -d" in str(info.value)
    assert isinstance(info.value.__cause__, libvirt.libvirtError)


def test_libvirt_errors_are_not_printed(hv: Hypervisor, capfd: pytest.CaptureFixture[str]) -> None:
    assert not hv.is_running("hypervm-no-such-vm")
    assert capfd.readouterr().err == ""


def test_version(hv: Hypervisor) -> None:
    assert hv.version().startswith("libvirt ")


def test_create_list_destroy(hv: Hypervisor, tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    vm = hv.create(spec)
    assert vm.name == spec.name and vm.is_running() and hv.is_running(spec.name)
    [info] = hv.list_ours()
    assert info.name == spec.name and info.running and info.uuid == vm.uuid
    assert info.disk_paths == (Path("/var/lib/hypervm/images/l0.erofs"),)
    assert info.share_paths == (Path("/srv/sandbox"),)
    assert info.metadata["pod"] == "unit"
    assert vm.destroy() is True
    assert not hv.is_running(spec.name)
    assert hv.list_ours() == []


def test_destroy_is_idempotent(hv: Hypervisor, tmp_path: Path) -> None:
    hv.create(make_spec(tmp_path))
    assert hv.destroy("hypervm-unit-1") is True
    assert hv.destroy("hypervm-unit-1") is False
    assert hv.destroy("hypervm-never-was") is False


def test_foreign_domains_are_not_listed(hv: Hypervisor) -> None:
    assert "test" in [d.name() for d in hv.conn.listAllDomains(0)]  # the driver's own domain
    assert hv.list_ours() == []


def test_create_stamps_this_process_as_owner(hv: Hypervisor, tmp_path: Path) -> None:
    hv.create(make_spec(tmp_path))
    [info] = hv.list_ours()
    assert info.metadata["owner-pid"] == str(os.getpid())
    assert info.metadata["owner-start"] == str(process_start_time(os.getpid()))


def test_create_keeps_an_explicit_owner(hv: Hypervisor, tmp_path: Path) -> None:
    hv.create(make_spec(tmp_path, metadata={"owner-pid": "1"}))
    [info] = hv.list_ours()
    assert info.metadata["owner-pid"] == "1"
    assert info.metadata["owner-start"] == str(process_start_time(1))


def test_a_bad_owner_pid_is_an_invalid_spec(hv: Hypervisor, tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec) as info:
        hv.create(make_spec(tmp_path, metadata={"owner-pid": "me"}))
    assert info.value.field == "metadata['owner-pid']"


def test_create_prepares_the_run_dir(hv: Hypervisor, tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        spec = make_spec(tmp_path)
        hv.create(spec)
    finally:
        os.umask(old)
    run_dir = spec.channel_socket.parent
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o750
    assert stat.S_IMODE(run_dir.parent.stat().st_mode) == 0o755  # QEMU must traverse it


def test_untraversable_parents_are_a_host_error(tmp_path: Path) -> None:
    from executor.libvirt.rundir import check_traversable as _check_traversable

    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "vms").mkdir()
    with pytest.raises(HostError) as info:
        _check_traversable(private / "vms", 64055, 64055)
    assert info.value.hint == f"chmod o+x {private}"
    _check_traversable(private / "vms", 0, 0)  # root reaches everything
    _check_traversable(Path("/usr/share"), 64055, 64055)


def test_invalid_spec_creates_nothing(hv: Hypervisor, tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec):
        hv.create(make_spec(tmp_path, vcpus=0))
    assert hv.list_ours() == []


def test_duplicate_name_is_a_hypervisor_error(hv: Hypervisor, tmp_path: Path) -> None:
    hv.create(make_spec(tmp_path))
    with pytest.raises(HypervisorError) as info:
        hv.create(make_spec(tmp_path))
    assert "hypervm-unit-1" in str(info.value)
    assert isinstance(info.value.__cause__, libvirt.libvirtError)


def test_wait_gone(hv: Hypervisor, tmp_path: Path) -> None:
    vm = hv.create(make_spec(tmp_path))
    with pytest.raises(HypervisorError, match="still runs"):
        vm.wait_gone(0.2)
    vm.destroy()
    vm.wait_gone(0.2)


def test_lifecycle_events_of_our_domains(hv: Hypervisor, tmp_path: Path) -> None:
    events: list[LifecycleEvent] = []
    stopped = threading.Event()

    def listener(ev: LifecycleEvent) -> None:
        events.append(ev)
        if ev.stopped:
            stopped.set()

    hv.add_listener(listener)
    foreign = hv.conn.lookupByName("test")
    foreign.suspend()
    foreign.resume()
    vm = hv.create(make_spec(tmp_path))
    vm.destroy()
    assert stopped.wait(5), f"no stopped event, got {events}"
    assert [(e.name, e.event) for e in events] == [
        ("hypervm-unit-1", "started"),
        ("hypervm-unit-1", "stopped"),
    ]
    assert events[-1].reason == "destroyed" and not events[-1].crashed
    hv.remove_listener(listener)


def test_a_failing_listener_does_not_stop_the_others(hv: Hypervisor, tmp_path: Path) -> None:
    got = threading.Event()

    def broken(_: LifecycleEvent) -> None:
        raise RuntimeError("bug")

    hv.add_listener(broken)
    hv.add_listener(lambda ev: got.set())
    hv.create(make_spec(tmp_path))
    assert got.wait(5)


def test_lost_connection_is_reported_for_our_live_domains(hv: Hypervisor, tmp_path: Path) -> None:
    events: list[LifecycleEvent] = []
    hv.add_listener(events.append)
    hv.create(make_spec(tmp_path, "hypervm-unit-1"))
    hv.create(make_spec(tmp_path, "hypervm-unit-2"))
    hv.destroy("hypervm-unit-2")
    hv._on_close(None, libvirt.VIR_CONNECT_CLOSE_REASON_EOF, None)  # as libvirt would call it
    lost = [e for e in events if e.event == DISCONNECTED]
    assert [(e.name, e.reason, e.stopped) for e in lost] == [("hypervm-unit-1", "eof", True)]
    hv._on_close(None, libvirt.VIR_CONNECT_CLOSE_REASON_EOF, None)
    assert len([e for e in events if e.event == DISCONNECTED]) == 1  # reported once


def test_a_late_stop_of_an_earlier_domain_of_the_name_is_not_the_new_ones(
        hv: Hypervisor, tmp_path: Path) -> None:
    """libvirt delivers events later, on its event thread: the ``stopped`` of a domain we
    destroyed can come after we created another of the same name, which still runs, is still
    ours, and is reported as lost with the connection."""
    events: list[LifecycleEvent] = []
    held, release, restarted = threading.Event(), threading.Event(), threading.Event()

    def listener(ev: LifecycleEvent) -> None:
        events.append(ev)
        if ev.event == "started" and not held.is_set():
            held.set()
            release.wait(5)  # the event thread, late (a loaded host): the rest queues behind
        elif ev.event == "started":
            restarted.set()

    hv.add_listener(listener)
    hv.create(make_spec(tmp_path))
    assert held.wait(5)
    hv.destroy("hypervm-unit-1")
    hv.create(make_spec(tmp_path))
    release.set()
    assert restarted.wait(5), f"no second started event, got {events}"
    assert [(e.name, e.event) for e in events] == [("hypervm-unit-1", "started")] * 2
    hv._on_close(None, libvirt.VIR_CONNECT_CLOSE_REASON_EOF, None)
    assert [(e.name, e.event) for e in events[2:]] == [("hypervm-unit-1", DISCONNECTED)]


def test_closing_on_purpose_reports_nothing(hv: Hypervisor, tmp_path: Path) -> None:
    events: list[LifecycleEvent] = []
    hv.add_listener(events.append)
    hv.create(make_spec(tmp_path))
    hv._on_close(None, libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT, None)
    assert [e for e in events if e.event == DISCONNECTED] == []


def test_listeners_need_events(tmp_path: Path) -> None:
    with Hypervisor("test:///default", events=False, autodestroy=False) as quiet:
        with pytest.raises(HypervisorError):
            quiet.add_listener(lambda ev: None)


def test_close_is_idempotent_and_final() -> None:
    hv = Hypervisor("test:///default", autodestroy=False)
    hv.close()
    hv.close()
    with pytest.raises(HypervisorError, match="closed"):
        hv.is_running("hypervm-x")


@pytest.mark.parametrize(
    "event, detail, stopped, crashed, reason",
    [
        ("stopped", 0, True, False, "shutdown"),
        ("stopped", 1, True, False, "destroyed"),
        ("stopped", 2, True, True, "crashed"),
        ("stopped", 5, True, True, "failed"),
        ("crashed", 0, False, True, "0"),
        ("started", 0, False, False, "0"),
    ],
)
def test_lifecycle_event_properties(
    event: str, detail: int, stopped: bool, crashed: bool, reason: str
) -> None:
    ev = LifecycleEvent("hypervm-x", event, detail)
    assert (ev.stopped, ev.crashed, ev.reason) == (stopped, crashed, reason)


def test_parse_start_time() -> None:
    line = "813 (a) b (c)) R 766 766 7025 0 -1 4194304 98 0 0 0 0 0 0 0 20 0 1 0 92044 3133440"
    assert parse_start_time(line) == 92044
    assert parse_start_time("813 (cat) R 1") is None


def test_owner_metadata_of_a_missing_process() -> None:
    assert owner_metadata(2**22 + 1) == {"owner-pid": str(2**22 + 1)}
    assert process_start_time(os.getpid()) == process_start_time(os.getpid()) is not None


# -- live changes (the warm pool's hand-over) ---------------------------------------------------


def test_set_metadata_replaces_the_entries_gc_reads(hv: Hypervisor, tmp_path: Path) -> None:
    hv.create(make_spec(tmp_path))
    hv.set_metadata("hypervm-unit-1", {"owner-pid": "1", "pool": "p", "pod": "new & <odd>"})
    assert hv.metadata("hypervm-unit-1") == {"owner-pid": "1", "pool": "p",
                                             "pod": "new & <odd>"}
    [info] = hv.list_ours()
    assert info.metadata["owner-pid"] == "1"
    assert hv.metadata("hypervm-never-was") == {}


def test_live_changes_of_a_missing_vm_name_it(hv: Hypervisor) -> None:
    with pytest.raises(HypervisorError, match="hypervm-never-was.*does not exist"):
        hv.set_metadata("hypervm-never-was", {"owner-pid": "1"})
    with pytest.raises(HypervisorError, match="hypervm-never-was"):
        hv.attach_device("hypervm-never-was", "<disk/>")


def test_attach_device_errors_are_hypervisor_errors(hv: Hypervisor, tmp_path: Path) -> None:
    hv.create(make_spec(tmp_path))
    with pytest.raises(HypervisorError, match="cannot add a device"):
        hv.attach_device("hypervm-unit-1", "<not-a-device/>")


def test_adopted_vms_get_disconnect_events(tmp_path: Path) -> None:
    """A VM another process created (a pool VM) is reported like one this connection made."""
    hv = Hypervisor(private_test_uri(tmp_path), autodestroy=False)  # no event of another's
    try:
        seen: list[LifecycleEvent] = []
        hv.add_listener(seen.append)
        hv.adopt("hypervm-pool-x")
        hv._on_close(None, 0, None)  # libvirt's close callback: reason "error"
        assert [(e.name, e.event) for e in seen] == [("hypervm-pool-x", DISCONNECTED)]
    finally:
        hv.close()


def test_the_runtime_reads_qemus_user_before_any_launch(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    """libvirt's capabilities (~4 ms) are read when the executor's runtime starts, not when a
    launch first gives a sandbox to QEMU's user."""
    from executor.mesos.runtime import VMRuntime
    from hypervm.config import HostConfig

    calls: list[int] = []
    real = libvirt.virConnect.getCapabilities

    def counted(conn: object) -> str:
        calls.append(1)
        return str(real(conn))

    monkeypatch.setattr(libvirt.virConnect, "getCapabilities", counted)
    cfg = HostConfig(state_dir=tmp_path / "state", run_dir=tmp_path / "run",
                     libvirt_uri="test:///default", accel="tcg")
    runtime = VMRuntime(cfg)
    assert len(calls) == 1
    (tmp_path / "sandbox").mkdir()
    runtime.shared_hypervisor().give_to_qemu(tmp_path / "sandbox")
    assert len(calls) == 1
    runtime.shared_hypervisor().close()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_giving_a_share_to_qemu_never_follows_a_symlink(tmp_path: Path) -> None:
    """A guest plants tasks/<next id> -> /etc: root must not chown /etc to QEMU's user."""
    from executor.libvirt.hypervisor import Hypervisor
    from hypervm.errors import HostError

    victim = tmp_path / "etc"
    victim.mkdir()
    (tmp_path / "next").symlink_to(victim)
    hv = Hypervisor("test:///default")
    try:
        hv._dac_label = (4242, 4242)
        with pytest.raises(HostError, match="symlink"):
            hv.give_to_qemu(tmp_path / "next")
        assert victim.stat().st_uid == 0
        (tmp_path / "real").mkdir()
        hv.give_to_qemu(tmp_path / "real")
        assert (tmp_path / "real").stat().st_uid == 4242
    finally:
        hv.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown and setuid need root")
def test_the_run_dir_is_not_the_vms_to_change(hv: Hypervisor) -> None:
    """libvirtd (the channel socket, whose fd QEMU gets) and virtlogd (the console log, which
    it creates again as root at every rotation, following a link) make the run dir's files as
    root: a QEMU escaped from its guest must not rename or plant anything there (a link
    named console.log would have root append the guest's console to any file)."""
    import tempfile

    vm_uid = 200123
    base = Path(tempfile.mkdtemp(prefix="hypervm-rundir-", dir="/tmp"))
    try:
        base.chmod(0o755)
        run_dir = base / "vms" / "hypervm-unit-own"
        hv.prepare_run_dir(run_dir, (vm_uid, vm_uid))
        st = run_dir.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, vm_uid, 0o750)
        (run_dir / "console.log").write_text("boot\n")
        pid = os.fork()
        if pid == 0:  # the VM's QEMU: may read what is there, not replace it
            code = 1
            try:
                os.setgid(vm_uid)
                os.setuid(vm_uid)
                os.listdir(run_dir)
                try:
                    os.rename(run_dir / "console.log", run_dir / "console.log.0")
                except PermissionError:
                    try:
                        os.symlink("/etc/passwd", run_dir / "console.log.1")
                    except PermissionError:
                        code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert sorted(os.listdir(run_dir)) == ["console.log"]
    finally:
        import shutil

        shutil.rmtree(base)


def test_discard_zero_pages_is_one_hmp_command_and_returns_its_reply(
        hv: Hypervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from executor.libvirt import hypervisor as module
    from executor.vm import discard_zero_pages

    sent: list[tuple[str, int]] = []

    def command(dom: object, text: str, flags: int) -> str:
        sent.append((text, flags))
        return "done: 1640 KiB of 12900 KiB resident were zeros, discarded\r\n"

    monkeypatch.setattr(module.libvirt_qemu, "qemuMonitorCommand", command)
    hv.create(make_spec(tmp_path))
    assert hv.discard_zero_pages("hypervm-unit-1").startswith("done: 1640 KiB")
    assert sent == [("discard-zero-pages",
                     module.libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)]
    with pytest.raises(HypervisorError, match="discard the guest's zero pages"):
        hv.discard_zero_pages("hypervm-never-was")
    discard_zero_pages(hv, "hypervm-never-was")  # from the settle timer: logged, not raised


def test_a_qmp_error_reply_is_an_error_not_an_empty_return(
        hv: Hypervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """libvirt hands QEMU's error reply back as text: ignoring it let a clone whose template
    memory QEMU refused to map (a writable fd) run on empty RAM."""
    from executor.libvirt import hypervisor as module

    replies = iter(['{"return": {"status": "paused"}}',
                    '{"error": {"class": "GenericError", '
                    '"desc": "the template file must be open read-only"}}'])
    monkeypatch.setattr(module.libvirt_qemu, "qemuMonitorCommand",
                        lambda dom, text, flags: next(replies))
    hv.create(make_spec(tmp_path))
    assert hv.monitor("hypervm-unit-1", {"execute": "query-status"}) == {"status": "paused"}
    with pytest.raises(HypervisorError, match="x-hypervm-ram-template-map failed: the template "
                                              "file must be open read-only"):
        hv.monitor("hypervm-unit-1", {"execute": "x-hypervm-ram-template-map"})
