"""Issue 15 finding 10, the pure parts: per-VM uids are allocated race-free across processes,
released when the VM is gone, and the domain XML runs QEMU as that uid without libvirt
chowning what VMs share."""

from __future__ import annotations

import multiprocessing
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from executor.libvirt import identity
from executor.libvirt.domain import DiskSpec, DomainSpec
from executor.libvirt.domain_xml import domain_xml, parse_domain_facts
from hypervm.config import config_from_env
from hypervm.errors import HostError, InvalidSpec

RANGE = (200000, 200003)


def spec(**kwargs: object) -> DomainSpec:
    base = dict(name="hypervm-a", accel="tcg", vcpus=1, memory_mib=128,
                kernel=Path("/var/lib/hypervm/kernel/k/vmlinux"),
                initrd=Path("/var/lib/hypervm/initrd/i/initrd.img"), cmdline="console=ttyS0",
                channel_socket=Path("/run/hypervm/vms/a/channel.sock"),
                console_log=Path("/run/hypervm/vms/a/console.log"),
                disks=(DiskSpec(Path("/var/lib/hypervm/images/layers/l.erofs"), "l0"),))
    base.update(kwargs)
    return DomainSpec(**base)  # type: ignore[arg-type]


def test_pick_uid_goes_round_robin() -> None:
    assert identity.pick_uid(10, 13, 10, set()) == 10
    assert identity.pick_uid(10, 13, 12, {12}) == 13
    assert identity.pick_uid(10, 13, 13, {13}) == 10  # wraps round
    assert identity.pick_uid(10, 13, 99, set()) == 10  # a cursor out of range restarts
    assert identity.pick_uid(10, 13, 10, {10, 11, 12, 13}) is None


def test_allocate_reserves_until_the_vm_is_gone(tmp_path: Path) -> None:
    running: set[str] = set()
    now = [1000.0]
    reg = tmp_path / "identities"

    def alloc(name: str) -> int:  # by an owner that is gone (see the test below)
        return identity.allocate(RANGE, name, running.__contains__, clock=lambda: now[0],
                                 directory=reg, owner=GONE).uid

    a = alloc("hypervm-a")
    b = alloc("hypervm-b")
    assert a != b and RANGE[0] <= a <= RANGE[1]
    assert identity.in_use(reg) == {a: "hypervm-a", b: "hypervm-b"}
    # the grace for createXML is over: a reservation stands only while its domain runs
    running.add("hypervm-a")
    os.utime(reg / str(b), (0, 0))
    os.utime(reg / str(a), (0, 0))
    c = alloc("hypervm-c")
    assert identity.in_use(reg) == {a: "hypervm-a", c: "hypervm-c"}  # b's lapsed
    assert c == b + 1  # round robin: a freed uid comes back only after the range went round
    # release: the uid is free at once (and only the named VM's)
    identity.release("hypervm-zzz", reg)
    assert a in identity.in_use(reg)
    identity.release("hypervm-a", reg)
    assert a not in identity.in_use(reg)


def test_holder_reads_only_the_uids_own_reservation(tmp_path: Path) -> None:
    """A launch asks for its VM's uid alone (executor.volume_access.VolumeHold): one file
    read, not the whole registry; the same answer as in_use."""
    a = identity.allocate(RANGE, "hypervm-a", lambda _: True, directory=tmp_path,
                          owner=GONE).uid
    b = identity.allocate(RANGE, "hypervm-b", lambda _: True, directory=tmp_path,
                          owner=GONE).uid
    (tmp_path / "12").write_text("not a reservation of these\n")
    assert identity.holder(a, tmp_path) == identity.in_use(tmp_path)[a] == "hypervm-a"
    assert identity.holder(b, tmp_path) == "hypervm-b"
    assert identity.holder(RANGE[1] + 1, tmp_path) is None


GONE = "999999999:1"  # a process that no longer runs


def test_a_reservation_stands_while_its_owner_lives_however_long_its_boot(tmp_path: Path) -> None:
    """A holder slower than the old 120 s grace (a loaded host, a big image) kept its uid but
    the next VM got it too: the reservation now stands while its owner process lives."""
    later = lambda: 1e12  # noqa: E731  # long after every reservation was made
    mine = identity.allocate(RANGE, "hypervm-slow", lambda _: False, directory=tmp_path).uid
    gone = identity.allocate(RANGE, "hypervm-gone", lambda _: False, directory=tmp_path,
                             owner=GONE).uid
    recycled = identity.allocate(RANGE, "hypervm-recycled", lambda _: False,
                                 directory=tmp_path, owner=f"{os.getpid()}:1").uid
    (tmp_path / str(RANGE[1])).write_text("hypervm-old-version\n")  # no owner recorded
    os.utime(tmp_path / str(RANGE[1]), (0, 0))
    nxt = identity.allocate(RANGE, "hypervm-next", lambda _: False, clock=later,
                            directory=tmp_path).uid
    assert nxt != mine and nxt in (gone, recycled, RANGE[1])
    assert identity.in_use(tmp_path) == {mine: "hypervm-slow", nxt: "hypervm-next"}


def test_a_reservation_stands_while_the_domains_qemu_runs(tmp_path: Path) -> None:
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    (pid_dir / "hypervm-live.pid").write_text(str(os.getpid()))
    (pid_dir / "hypervm-dead.pid").write_text("999999999")
    original = identity.LIBVIRT_PID_DIR
    identity.LIBVIRT_PID_DIR = pid_dir
    try:
        assert identity.qemu_runs("hypervm-live")
        assert not identity.qemu_runs("hypervm-dead") and not identity.qemu_runs("hypervm-x")
    finally:
        identity.LIBVIRT_PID_DIR = original


def test_exhausted_range_is_a_clear_error(tmp_path: Path) -> None:
    for i in range(4):
        identity.allocate(RANGE, f"hypervm-{i}", lambda _: False, directory=tmp_path)
    with pytest.raises(HostError) as info:
        identity.allocate(RANGE, "hypervm-5", lambda _: False, directory=tmp_path)
    assert "HYPERVM_VM_UID_RANGE" in str(info.value)


def _allocate_many(directory: str, names: list[str], out: multiprocessing.Queue) -> None:
    for name in names:
        out.put(identity.allocate((300000, 300999), name, directory=Path(directory)).uid)


def test_allocation_is_race_free_across_processes(tmp_path: Path) -> None:
    out: multiprocessing.Queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_allocate_many,
                                     args=(str(tmp_path), [f"hypervm-{p}-{i}" for i in range(25)],
                                           out)) for p in range(4)]
    for proc in procs:
        proc.start()
    uids = [out.get(timeout=30) for _ in range(100)]
    for proc in procs:
        proc.join(timeout=30)
    assert len(set(uids)) == 100


def test_domain_runs_as_its_own_uid_without_relabelling_shared_files() -> None:
    xml = domain_xml(spec(identity=(200007, 200007)))
    root = ET.fromstring(xml)
    label = root.find("seclabel")
    assert label is not None and label.attrib == {"type": "static", "model": "dac",
                                                  "relabel": "yes"}
    assert label.findtext("label") == "+200007:+200007"
    # libvirt would chown the kernel and initrd (shared by every VM) to this VM: QEMU gets
    # them directly; read-only layer disks keep relabel='no'
    assert root.find("os/kernel") is None and root.find("os/initrd") is None
    args = [a.get("value") for a in root.iter("{http://libvirt.org/schemas/domain/qemu/1.0}arg")]
    assert args[:6] == ["-kernel", "/var/lib/hypervm/kernel/k/vmlinux", "-initrd",
                        "/var/lib/hypervm/initrd/i/initrd.img", "-append", "console=ttyS0"]
    disk_label = root.find("devices/disk/source/seclabel")
    assert disk_label is not None and disk_label.get("relabel") == "no"
    assert parse_domain_facts(xml).identity == (200007, 200007)
    # without an identity of its own: as before
    plain = ET.fromstring(domain_xml(spec()))
    assert plain.find("seclabel") is None and plain.find("os/kernel") is not None


@pytest.mark.parametrize("bad", [(0, 0), (-1, 5), (2**31, 1)])
def test_bad_identity_is_refused(bad: tuple[int, int]) -> None:
    with pytest.raises(InvalidSpec) as info:
        spec(identity=bad).validate()
    assert info.value.field == "identity"


def test_uid_range_setting() -> None:
    assert config_from_env({}).vm_uid_range == (200000, 265535)
    assert config_from_env({"HYPERVM_VM_UID_RANGE": "300000-300009"}).vm_uid_range == (
        300000, 300009)
    for bad in ("300000", "5-2", "0-10", "a-b"):
        with pytest.raises(InvalidSpec) as info:
            config_from_env({"HYPERVM_VM_UID_RANGE": bad})
        assert info.value.field == "HYPERVM_VM_UID_RANGE"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_give_and_take_back(tmp_path: Path) -> None:
    share = tmp_path / "sandbox"
    share.mkdir(mode=0o755)
    ident = identity.Identity(200001, 200001)
    identity.give(share, ident)
    st = share.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (200001, 200001, 0o750)
    identity.take_back(share, identity.Identity(200002, 200002))  # not that VM's: unchanged
    assert share.stat().st_uid == 200001
    identity.take_back(share, ident)
    assert share.stat().st_uid == 0
    link = tmp_path / "link"
    link.symlink_to(share)
    with pytest.raises(HostError):  # never through a link
        identity.give(link, ident)


def test_hyperVM_tells_its_identity_before_giving_the_shares(tmp_path: Path) -> None:
    from executor.vm import HyperVM
    from hypervm.podspec import Container, Mount, PodSpec, Process, Rootfs

    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    container = Container("main", Rootfs(layers=(tmp_path / "l.erofs",)), Process(args=("true",)),
                          mounts=(Mount(type="9p", destination="/s", source=sandbox,
                                        owned=True),))
    seen: list[object] = []
    given: list[Path] = []

    class FakeHypervisor:
        def give_to_qemu(self, path: Path) -> None:
            given.append(path)

    vm = HyperVM(config_from_env({}),
                 PodSpec(name="p", containers=(container,)), hypervisor=FakeHypervisor(),
                 before_shares=seen.append)
    vm.give_owned_shares()  # libvirt's shared user: the hook hears None
    assert seen == [None] and given == [sandbox]
    vm.identity = identity.Identity(200009, 200009)
    if os.geteuid() == 0:
        vm.give_owned_shares()
        assert seen[-1] == (200009, 200009) and sandbox.stat().st_uid == 200009
        vm._end_identity()  # the VM is gone: the share is root's again (nothing to release)
        assert sandbox.stat().st_uid == 0 and vm.identity is None
