"""The libvirt wrapper against the real qemu:///system: boots the HyperKernel under TCG/KVM with a
stand-in busybox initrd (not our init: this tests the VM driver alone)."""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from executor.libvirt.domain import DiskSpec, DomainSpec, ShareSpec
from executor.libvirt.events import DomainInfo, LifecycleEvent
from executor.libvirt.hypervisor import Hypervisor
from hypervm.config import HostConfig, config_from_env
from hypervm.errors import HypervisorError

pytestmark = [pytest.mark.vm, pytest.mark.slow]

URI = "qemu:///system"
BUSYBOX = Path("/bin/busybox")
REPO = Path(__file__).resolve().parents[2]
GREETING = b"HELLO FROM GUEST\n"
BOOT_TIMEOUT = 60.0

STANDIN_INIT = r"""#!/bin/busybox sh
B=/bin/busybox
$B mkdir -p /proc /sys /dev /mnt
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
$B echo "STANDIN: up $($B cut -d' ' -f1 /proc/uptime)"
for d in /sys/block/vd*; do
  [ -e "$d/serial" ] && $B echo "STANDIN: disk $($B basename $d) serial=$($B cat $d/serial)"
done
if $B mount -t 9p -o trans=virtio,version=9p2000.L s0 /mnt 2>/dev/null; then
  $B echo "STANDIN: share says $($B cat /mnt/hello.txt)"
fi
PORT=
for p in /sys/class/virtio-ports/*; do
  [ "$($B cat $p/name)" = org.hypervm.channel.0 ] && PORT=/dev/$($B basename $p)
done
$B echo "STANDIN: port ${PORT:-none}"
case "$($B cat /proc/cmdline)" in
  *standin=poweroff*) $B echo "STANDIN: poweroff"; $B poweroff -f ;;
esac
exec 3<>"$PORT"
$B echo "HELLO FROM GUEST" >&3
$B echo "STANDIN: greeted"
exec $B sleep 3600
"""


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cfg() -> HostConfig:
    return config_from_env()


@pytest.fixture(scope="module")
def kernel(cfg: HostConfig) -> Path:
    try:
        from vmimage.kernel import find_kernel

        return find_kernel(cfg).path
    except Exception as e:  # noqa: BLE001 - no kernel yet, or no vmimage: skip, say why
        pytest.skip(f"no guest kernel ({e}); run make kernel")


@pytest.fixture(scope="module")
def accel(cfg: HostConfig) -> str:
    from vmimage.accel import detect_accel

    return detect_accel(cfg)


@pytest.fixture(scope="module")
def work_dir(cfg: HostConfig) -> Iterator[Path]:
    """World-traversable scratch space QEMU (user libvirt-qemu) can read: never under /tmp's
    private pytest dirs nor /root."""
    path = cfg.run_dir / f"test-hypervisor-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    path.chmod(0o755)
    cfg.run_dir.chmod(cfg.run_dir.stat().st_mode | 0o055)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def standin_initrd(work_dir: Path) -> Path:
    from vmimage.initrd import CpioEntry, newc_archive

    if not BUSYBOX.is_file():
        pytest.skip("busybox-static is not installed")
    archive = newc_archive(
        [
            CpioEntry.file("init", STANDIN_INIT.encode(), 0o755),
            CpioEntry.directory("bin"),
            CpioEntry.file("bin/busybox", BUSYBOX.read_bytes(), 0o755),
            CpioEntry.directory("dev"),
            CpioEntry.chardev("dev/console", 5, 1),
        ]
    )
    path = work_dir / "standin.cpio"
    path.write_bytes(archive)
    path.chmod(0o644)
    return path


@pytest.fixture(scope="module")
def layer_disk(work_dir: Path) -> Path:
    path = work_dir / "layer.img"
    path.write_bytes(b"\0" * (1 << 20))
    path.chmod(0o644)
    return path


@pytest.fixture(scope="module")
def share_dir(work_dir: Path) -> Path:
    path = work_dir / "share"
    path.mkdir()
    path.chmod(0o755)
    (path / "hello.txt").write_text("hi from the host\n")
    (path / "hello.txt").chmod(0o644)
    return path


SpecFactory = Callable[..., DomainSpec]


@pytest.fixture
def make_spec(
    cfg: HostConfig,
    kernel: Path,
    standin_initrd: Path,
    accel: str,
    layer_disk: Path,
    share_dir: Path,
) -> SpecFactory:
    def make(mode: str = "sleep", **overrides: object) -> DomainSpec:
        name = f"hypervm-hvtest-{uuid.uuid4().hex[:8]}"
        run = cfg.vms_dir / name
        values: dict[str, object] = dict(
            name=name,
            accel=accel,
            vcpus=1,
            memory_mib=128,
            kernel=kernel,
            initrd=standin_initrd,
            cmdline=f"console=ttyS0 quiet panic=-1 standin={mode}",
            channel_socket=run / "channel.sock",
            console_log=run / "console.log",
            disks=(DiskSpec(layer_disk, "l0"),),
            shares=(ShareSpec(share_dir, "s0", readonly=True),),
            metadata={"pod": "hvtest"},
        )
        values.update(overrides)
        return DomainSpec(**values)  # type: ignore[arg-type]

    return make


@pytest.fixture
def hv() -> Iterator[Hypervisor]:
    hypervisor = Hypervisor(URI)
    yield hypervisor
    hypervisor.close()


@pytest.fixture
def track(
    hv: Hypervisor, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[DomainSpec], None]]:
    """Register a spec whose domain this test may create (in any process): at teardown it is
    destroyed, its run dir removed, and its console log kept when the test failed."""
    specs: list[DomainSpec] = []
    yield specs.append
    rep = getattr(request.node, "rep_call", None)
    for spec in specs:
        if rep is not None and rep.failed and spec.console_log.exists():
            keep = tmp_path_factory.mktemp("console") / f"{spec.name}.log"
            shutil.copy(spec.console_log, keep)
            print(f"console log of {spec.name} kept at {keep}", file=sys.stderr)
        hv.destroy(spec.name)
        shutil.rmtree(spec.console_log.parent, ignore_errors=True)


# --- helpers ----------------------------------------------------------------------------------


def virsh_names() -> set[str]:
    out = subprocess.run(
        ["virsh", "-c", URI, "list", "--all", "--name"], capture_output=True, text=True, check=True
    ).stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, detail: Callable[[], str] = lambda: ""
) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            pytest.fail(f"{what} not within {timeout:g} s. {detail()}")
        time.sleep(0.05)
    return time.monotonic() - started


def console(spec: DomainSpec) -> str:
    try:
        return spec.console_log.read_text(errors="replace")
    except OSError:
        return ""


def wait_console(spec: DomainSpec, marker: str, timeout: float = BOOT_TIMEOUT) -> float:
    return wait_for(
        lambda: marker in console(spec),
        timeout,
        f"{marker!r} on the console",
        lambda: f"console:\n{console(spec)[-2000:]}",
    )


# --- tests ------------------------------------------------------------------------------------


def test_boot_console_disk_share_and_channel(
    hv: Hypervisor, make_spec: SpecFactory, track: Callable[[DomainSpec], None], layer_disk: Path
) -> None:
    spec = make_spec()
    track(spec)
    started = time.monotonic()
    vm = hv.create(spec)
    create_s = time.monotonic() - started
    assert vm.is_running()
    wait_console(spec, "STANDIN: up")
    boot_s = time.monotonic() - started
    wait_console(spec, "STANDIN: port")
    text = console(spec)
    assert "STANDIN: disk vda serial=l0" in text
    assert "STANDIN: share says hi from the host" in text
    assert "STANDIN: port /dev/vport" in text, text
    assert spec.channel_socket.is_socket()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(BOOT_TIMEOUT)
        sock.connect(str(spec.channel_socket))
        data = b""
        while GREETING not in data:
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                pytest.fail(f"no greeting on the channel, got {data!r}; console:\n{console(spec)}")
            assert chunk, f"channel closed after {data!r}"
            data += chunk
    [info] = [d for d in hv.list_ours() if d.name == spec.name]
    assert info.running and info.disk_paths == (layer_disk,)
    assert info.metadata["owner-pid"] == str(os.getpid()) and info.metadata["pod"] == "hvtest"
    assert vm.qemu_pid() is not None
    print(f"\ncreateXML {create_s:.2f} s, first console line {boot_s:.2f} s ({spec.accel})")
    assert vm.destroy()
    assert not hv.is_running(spec.name)
    assert spec.name not in virsh_names()
    assert "STANDIN: up" in console(spec)  # the log outlives the VM (virtlogd)


def test_closing_the_connection_destroys_its_domains(
    make_spec: SpecFactory, track: Callable[[DomainSpec], None]
) -> None:
    spec = make_spec()
    track(spec)
    owner = Hypervisor(URI)
    owner.create(spec)
    assert spec.name in virsh_names()
    owner.close()
    took = wait_for(lambda: spec.name not in virsh_names(), 10, f"{spec.name} gone after close")
    print(f"\ngone {took:.2f} s after close")


OWNER_CHILD = """
import pickle, sys, time
from executor.libvirt.hypervisor import Hypervisor
spec = pickle.loads(bytes.fromhex(sys.argv[1]))
hv = Hypervisor("qemu:///system")
hv.create(spec)
print("created", flush=True)
time.sleep(600)
"""


def test_sigkill_of_the_owner_destroys_its_domains(
    make_spec: SpecFactory, track: Callable[[DomainSpec], None]
) -> None:
    spec = make_spec()
    track(spec)
    child = subprocess.Popen(
        [sys.executable, "-c", OWNER_CHILD, pickle.dumps(spec).hex()],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "created"
        assert spec.name in virsh_names()
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    took = wait_for(
        lambda: spec.name not in virsh_names(), 10, f"{spec.name} gone after SIGKILL of its owner"
    )
    print(f"\ngone {took:.2f} s after SIGKILL")


HANDED_CHILD = """
import os, pickle, signal, sys
from executor.libvirt import starter
held = starter.fork_ahead({starter.URI_VARIABLE: "qemu:///system"})  # before libvirt, as the CLI
assert starter.take() is held
from executor.libvirt.hypervisor import Hypervisor
spec = pickle.loads(bytes.fromhex(sys.argv[1]))
hv = Hypervisor("qemu:///system", starter=held)
hv.create(spec)
pid = hv.qemu_pid(spec.name)
os.kill(pid, signal.SIGSTOP)  # deaf to the SIGTERM below until it is killed
os.kill(pid, signal.SIGTERM)
os.kill(held.pid, signal.SIGSTOP)  # reads our message only after our death's SIGTERM came
print(held.pid, held.hand_end(str(spec.channel_socket.parent), True, 0.5), flush=True)
hv.close()
"""


def test_a_starter_handed_a_vms_end_kills_a_deaf_qemu_then_frees_its_uid(
    cfg: HostConfig, make_spec: SpecFactory, track: Callable[[DomainSpec], None]
) -> None:
    """A cold run's CLI leaves its VM's end to the starter child that created it
    (executor.libvirt.vmend) and exits: the child, though it reads the request only after its
    parent is dead, destroys a QEMU still there after ``kill_after`` (here one stopped,
    so deaf to the SIGTERM it was sent), and only once libvirtd has torn the domain down frees
    its uid and removes its run directory."""
    from executor.libvirt import identity

    spec = make_spec()
    track(spec)
    ident = identity.allocate(cfg.vm_uid_range, spec.name)
    run_dir = spec.channel_socket.parent
    try:
        out = subprocess.run([sys.executable, "-c", HANDED_CHILD, pickle.dumps(spec).hex()],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
        child, handed = out.stdout.split()
        assert out.returncode == 0 and handed == "True", out.stderr[-2000:]
        os.kill(int(child), signal.SIGCONT)
        assert identity.holder(ident.uid) == spec.name  # not before QEMU is gone
        took = wait_for(lambda: spec.name not in virsh_names(), 60,
                        f"{spec.name} destroyed by the starter child")
        wait_for(lambda: not run_dir.exists() and identity.holder(ident.uid) is None, 30,
                 "the uid freed and the run dir removed once the domain was gone")
        print(f"\ngone {took:.2f} s after the CLI's exit")
    finally:
        identity.release(spec.name)


def test_guest_poweroff_ends_the_domain_with_an_event(
    hv: Hypervisor, make_spec: SpecFactory, track: Callable[[DomainSpec], None]
) -> None:
    spec = make_spec("poweroff")
    track(spec)
    events: list[LifecycleEvent] = []
    stopped = threading.Event()

    def listener(ev: LifecycleEvent) -> None:
        if ev.name == spec.name:
            events.append(ev)
            if ev.stopped:
                stopped.set()

    hv.add_listener(listener)
    hv.create(spec)
    assert stopped.wait(BOOT_TIMEOUT), f"events {events}, console:\n{console(spec)[-2000:]}"
    hv.remove_listener(listener)
    # libvirt says "shutdown", or "destroyed" when it reaps QEMU before handling its SHUTDOWN
    # event (seen under load, with on_poweroff=destroy): never "crashed"
    assert events[-1].reason in ("shutdown", "destroyed") and not events[-1].crashed
    assert "STANDIN: poweroff" in console(spec)
    hv.wait_gone(spec.name, 10)
    assert spec.name not in virsh_names()


class ScopedHypervisor:
    """Limits gc to this test's domains: other people's VMs here are none of its business."""

    def __init__(self, hv: Hypervisor, names: set[str]) -> None:
        self.hv = hv
        self.names = names

    def list_ours(self) -> list[DomainInfo]:
        return [d for d in self.hv.list_ours() if d.name in self.names]

    def destroy(self, name: str) -> bool:
        assert name in self.names
        return self.hv.destroy(name)


def test_gc_destroys_a_leftover_and_keeps_a_live_vm(
    hv: Hypervisor,
    make_spec: SpecFactory,
    track: Callable[[DomainSpec], None],
    cfg: HostConfig,
    work_dir: Path,
) -> None:
    from executor.cli.gc import collect_garbage

    dead = subprocess.Popen(["true"])
    dead.wait()
    gc_cfg = HostConfig(
        state_dir=cfg.state_dir, run_dir=work_dir / "gc-run", libvirt_uri=URI, accel=cfg.accel
    )
    leftover = make_spec(metadata={"owner-pid": str(dead.pid), "owner-start": "1"})
    live = make_spec()
    for spec in (leftover, live):
        track(spec)
        hv.create(spec)
    (gc_cfg.vms_dir / leftover.name).mkdir(parents=True)
    report = collect_garbage(gc_cfg, ScopedHypervisor(hv, {leftover.name, live.name}))  # type: ignore[arg-type]
    assert [lo.name for lo in report.destroyed] == [leftover.name]
    assert report.kept == [live.name]
    assert report.removed_dirs == [gc_cfg.vms_dir / leftover.name]
    assert not (gc_cfg.vms_dir / leftover.name).exists()
    names = virsh_names()
    assert leftover.name not in names and live.name in names


def test_libvirt_qemu_could_use_the_run_dir(
    hv: Hypervisor, make_spec: SpecFactory, track: Callable[[DomainSpec], None]
) -> None:
    spec = make_spec()
    track(spec)
    hv.create(spec)
    wait_for(spec.channel_socket.exists, BOOT_TIMEOUT, "the channel socket")
    run_dir = spec.channel_socket.parent
    assert oct(run_dir.stat().st_mode & 0o777) == "0o750"
    import pwd

    assert pwd.getpwuid(run_dir.stat().st_uid).pw_name in ("libvirt-qemu", "qemu", "root")


def _bare_spec(cfg: HostConfig, kernel: Path) -> DomainSpec:
    name = f"hypervm-hvtest-{uuid.uuid4().hex[:8]}"
    run = cfg.vms_dir / name
    return DomainSpec(
        name=name,
        accel="tcg",
        vcpus=1,
        memory_mib=64,
        kernel=kernel,
        initrd=kernel,
        cmdline="console=ttyS0",
        channel_socket=run / "channel.sock",
        console_log=run / "console.log",
    )


def test_a_missing_kernel_is_a_clear_error(
    hv: Hypervisor, cfg: HostConfig, track: Callable[[DomainSpec], None]
) -> None:
    spec = _bare_spec(cfg, Path("/nonexistent/vmlinux"))
    track(spec)
    with pytest.raises(HypervisorError) as info:
        hv.create(spec)
    assert "/nonexistent/vmlinux" in str(info.value) and "hypervm doctor" in str(info.value)
    assert spec.name not in virsh_names()


def test_a_kernel_qemu_cannot_read_is_a_clear_error(
    hv: Hypervisor, cfg: HostConfig, work_dir: Path, track: Callable[[DomainSpec], None]
) -> None:
    private = work_dir / "private"
    private.mkdir(mode=0o700, exist_ok=True)
    kernel = private / "vmlinux"
    kernel.write_bytes(b"\0" * 4096)
    spec = _bare_spec(cfg, kernel)
    track(spec)
    with pytest.raises(HypervisorError) as info:
        hv.create(spec)
    assert "Permission denied" in str(info.value) and "libvirt-qemu" in str(info.value)
    assert spec.name not in virsh_names()


def test_kvm_probe_agrees_with_libvirt(
    hv: Hypervisor, make_spec: SpecFactory, kernel: Path, track: Callable[[DomainSpec], None]
) -> None:
    """The probe answers within its timeout; when it says KVM works, a KVM domain boots."""
    from vmimage.accel import PROBE_TIMEOUT, check_kvm_device, probe_kvm_boot

    if not check_kvm_device().ok:
        pytest.skip("no usable /dev/kvm on this host")
    started = time.monotonic()
    result = probe_kvm_boot(kernel)
    assert time.monotonic() - started < PROBE_TIMEOUT + 2, result
    print(f"\nKVM probe: {result}")
    if not result.ok:
        return
    spec = make_spec(accel="kvm")
    track(spec)
    hv.create(spec)
    wait_console(spec, "STANDIN: up", timeout=10)


#: where libvirt (qemu:///system) caches what it probed of a QEMU binary: sha256(path).xml
LIBVIRT_CAPS_CACHE = Path("/var/cache/libvirt/qemu/capabilities")


def test_libvirt_keeps_its_qemu_capabilities_across_domain_starts(
    hv: Hypervisor, cfg: HostConfig, make_spec: SpecFactory, track: Callable[[DomainSpec], None]
) -> None:
    # where /dev/kvm is usable by libvirt's probes (CAP_DAC_OVERRIDE) but not by its QEMU user,
    # libvirt 9.0 finds the cache outdated at every lookup and re-probes the emulator (~1 s, one
    # probe at a time) at every start: createXML took 35-65 s with 4 users (doctor_kvmdev.py)
    import hashlib

    from executor.cli.doctor_kvmdev import check_kvm_device

    check = check_kvm_device(cfg)
    assert check.ok and not check.warn, (check.detail, check.fix)
    emulator = "/usr/bin/qemu-system-x86_64"  # libvirt's default: make_spec names none
    cached = LIBVIRT_CAPS_CACHE / (hashlib.sha256(emulator.encode()).hexdigest() + ".xml")
    stamps = []
    for _ in range(2):  # the first start may probe (a new binary, libvirtd restarted)
        spec = make_spec()
        track(spec)
        hv.create(spec)
        hv.destroy(spec.name)
        stamps.append(cached.stat().st_mtime_ns)
    assert stamps[0] == stamps[1], "libvirt probed the emulator again for the second start"
