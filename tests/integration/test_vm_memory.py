"""An idle HyperVM's QEMU for real: no transparent huge pages on QEMU's own small memory
(HyperQEMU's idle-memory patch), guest RAM never mergeable by KSM unless HYPERVM_KSM=on, and
with it on, mergeable anonymous memory (not a memfd, which would hold each page twice)."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import threading
import time
from pathlib import Path

import pytest

from bench.vmenv import guest_ram_pages, private_by_mapping
from executor.vm import SETTLED_FLUSH_S, HyperVM
from hypervm.config import HostConfig
from hypervm.podspec import Container, PodSpec, Process, Resources, Rootfs
from tests.conftest import TEST_TAG, run_to_exit
from vmimage.accel import detect_accel
from vmimage.qemu import find_qemu
from vmimage.rootfs import ensure_warmup_layer

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.usefixtures("no_leaked_domains")]

GUEST_MIB = 128


@dataclasses.dataclass
class Mapping:
    name: str
    size_kib: int
    perms: str
    fields: dict[str, int]
    flags: set[str]


def mappings(pid: int) -> list[Mapping]:
    out: list[Mapping] = []
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        parts = line.split()
        if parts and "-" in parts[0] and not parts[0].endswith(":"):
            start, end = (int(x, 16) for x in parts[0].split("-"))
            out.append(Mapping(parts[5] if len(parts) > 5 else "", (end - start) // 1024,
                               parts[1], {}, set()))
        elif parts[:1] == ["VmFlags:"]:
            out[-1].flags = set(parts[1:])
        elif len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
            out[-1].fields[parts[0][:-1]] = int(parts[1])
    return out


def guest_ram(maps: list[Mapping]) -> Mapping:
    ram = [m for m in maps if m.size_kib == GUEST_MIB * 1024]
    assert len(ram) == 1, [(m.name, m.size_kib) for m in maps if m.size_kib >= 64 * 1024]
    return ram[0]


@pytest.fixture(scope="module")
def pod(host_cfg: HostConfig) -> PodSpec:
    layer = ensure_warmup_layer(host_cfg.rootfs_dir)
    say = Container("c", Rootfs(layers=(layer,)), Process(
        args=("/bin/sh", "-c", "echo hello"), env=("PATH=/bin",)))
    return PodSpec(name=f"{TEST_TAG}-mem", containers=(say,),
                   resources=Resources(cpus=1, memory_mib=GUEST_MIB))


def _booted(cfg: HostConfig, pod: PodSpec) -> HyperVM:
    vm = HyperVM(dataclasses.replace(cfg, use_pool=False), pod)
    vm.boot(timeout=90.0)
    return vm


def test_default_guest_ram_is_a_shared_memfd_ksm_never_merges(host_cfg: HostConfig,
                                                               pod: PodSpec) -> None:
    with _booted(dataclasses.replace(host_cfg, ksm=False), pod) as vm:
        pid = vm._hypervisor.qemu_pid(vm.name)
        assert pid is not None
        maps = mappings(pid)
        ram = guest_ram(maps)
        assert ram.name.startswith("/memfd:") and "sh" in ram.flags
        assert not [m.name for m in maps if "mg" in m.flags], "nothing of QEMU is mergeable"
        assert run_to_exit(vm, pod.containers[0]) == (0, "hello\n")


def test_ksm_on_gives_mergeable_anonymous_guest_ram(host_cfg: HostConfig, pod: PodSpec) -> None:
    with _booted(dataclasses.replace(host_cfg, ksm=True), pod) as vm:
        pid = vm._hypervisor.qemu_pid(vm.name)
        assert pid is not None
        ram = guest_ram(mappings(pid))
        # anonymous, private, marked for KSM: no memfd holding a second copy of each page
        assert ram.name == "" and "mg" in ram.flags and "sh" not in ram.flags
        assert 1 < ram.fields["Rss"] / 1024 < GUEST_MIB
        assert run_to_exit(vm, pod.containers[0]) == (0, "hello\n")


def test_hyperqemu_keeps_its_own_memory_out_of_huge_pages(host_cfg: HostConfig,
                                                          pod: PodSpec) -> None:
    qemu = find_qemu(host_cfg)
    if qemu.kind != "hyperqemu" or "idle-memory" not in qemu.features:
        pytest.fail("HyperQEMU with the idle-memory patch is not built: run make qemu")
    with _booted(host_cfg, pod) as vm:
        pid = vm._hypervisor.qemu_pid(vm.name)
        assert pid is not None
        maps = mappings(pid)
        huge = [(m.name or "[anon]", m.size_kib, m.fields.get("AnonHugePages"))
                for m in maps if m.fields.get("AnonHugePages")]
        assert not huge, huge
        if detect_accel(host_cfg) == "tcg":
            buffer = [m for m in maps if "x" in m.perms and m.name == ""
                      and m.size_kib >= 256 * 1024]
            assert buffer and all("nh" in m.flags for m in buffer)
        # the ACPI tables' blob reserves 2 MiB and uses ~128 KiB: only that is resident
        blob = [m for m in maps if m.size_kib == 2048 and "dc" in m.flags]
        assert blob and all(m.fields["Rss"] <= 512 for m in blob), [
            m.fields["Rss"] for m in blob]


#: an idle VM's translations once it settled: ~1-2 MiB (4-6 MiB with the flush at READY only)
MAX_SETTLED_TCG_MIB = 3.0


def test_a_settled_vm_drops_its_first_seconds_translations(host_cfg: HostConfig,
                                                           pod: PodSpec) -> None:
    """The flush at READY leaves what the guest runs in its first seconds after it (boot tail,
    work queued at boot): a second flush SETTLED_FLUSH_S later gives those back too, and the
    guest runs on (its code is translated again)."""
    qemu = find_qemu(host_cfg)
    if detect_accel(host_cfg) != "tcg" or not qemu.can_flush_tcg:
        pytest.skip("needs TCG and HyperQEMU's tcg-flush")
    with _booted(host_cfg, pod) as vm:
        pid = vm._hypervisor.qemu_pid(vm.name)
        assert pid is not None
        time.sleep(SETTLED_FLUSH_S + 2.0)
        tcg = sum(r["private_mib"] for r in private_by_mapping(pid, 50)
                  if r["name"] == "TCG translation buffer")
        assert 0 < tcg <= MAX_SETTLED_TCG_MIB, tcg
        assert run_to_exit(vm, pod.containers[0]) == (0, "hello\n")


def test_qemu_takes_glib_slices_from_malloc(host_cfg: HostConfig, pod: PodSpec) -> None:
    """The designer's <qemu:env> reaches QEMU: G_SLICE=always-malloc, so the translated-block
    tree a TCG flush frees goes back to malloc (and its trim) rather than GLib's magazines."""
    with _booted(host_cfg, pod) as vm:
        pid = vm._hypervisor.qemu_pid(vm.name)
        assert pid is not None
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"G_SLICE=always-malloc" in environ
        assert run_to_exit(vm, pod.containers[0]) == (0, "hello\n")


def test_the_guest_reports_free_blocks_of_32_kib(host_cfg: HostConfig, pod: PodSpec) -> None:
    """init sets the guest kernel's page reporting order from the command line
    (vmimage.boot.PAGE_REPORTING_ORDER): freed blocks of 2^3 pages go back to the host."""
    order = PodSpec(name=pod.name, resources=pod.resources, containers=(Container(
        "c", pod.containers[0].rootfs, Process(
            args=("/bin/cat", "/sys/module/page_reporting/parameters/page_reporting_order"),
            env=("PATH=/bin",))),))
    with _booted(host_cfg, order) as vm:
        assert run_to_exit(vm, order.containers[0]) == (0, "3\n")


#: an idle 128 MiB VM holds ~1.6 MiB of guest pages of zeros; the test's container adds 2 MiB
MIN_DISCARDED_KIB = 2048


def test_discarding_zero_pages_gives_them_back_and_keeps_the_guests_data(
        host_cfg: HostConfig, pod: PodSpec) -> None:
    """HyperQEMU's discard-zero-pages (the settled flush's, here sent by hand): the guest RAM
    pages holding only zeros leave the memfd, and the guest reads its files as it wrote them,
    the pages of zeros included. Never for anonymous guest RAM (HYPERVM_KSM=on), where a
    private mapping could read back a template's page instead of zeros."""
    qemu = find_qemu(host_cfg)
    if "zero-discard" not in qemu.features:
        pytest.fail("HyperQEMU with the zero-discard patch is not built: run make qemu")
    cfg = dataclasses.replace(host_cfg, discard_zero_pages=False)  # no timer: sent below
    script = ("dd if=/dev/urandom of=/data bs=4096 count=256 2>/dev/null; "
              "dd if=/dev/zero of=/zeros bs=4096 count=512 2>/dev/null; "
              "sha256sum /data /zeros; echo written; sleep 4; sha256sum /data /zeros")
    writer = Container("w", pod.containers[0].rootfs, Process(
        args=("/bin/sh", "-c", script), env=("PATH=/bin:/usr/bin",)))
    with _booted(cfg, dataclasses.replace(pod, containers=(writer,))) as vm:
        pid = vm._hypervisor.qemu_pid(vm.name)
        assert pid is not None
        out: list[bytes] = []
        written, done = threading.Event(), threading.Event()

        def stdout(data: bytes) -> None:
            out.append(data)
            if b"written" in b"".join(out):
                written.set()

        vm.start(writer, on_stdout=stdout, on_stderr=out.append, on_exit=lambda _s: done.set())
        assert written.wait(60), b"".join(out)
        before = guest_ram(mappings(pid)).fields["Rss"]
        reply = vm._hypervisor.discard_zero_pages(vm.name)
        after = guest_ram(mappings(pid)).fields["Rss"]
        found = re.match(r"done: (\d+) KiB of (\d+) KiB resident", reply)
        assert found, reply
        assert int(found[1]) >= MIN_DISCARDED_KIB and before - after >= MIN_DISCARDED_KIB, (
            reply, before, after)
        assert done.wait(60), b"".join(out)
        first, second = b"".join(out).decode().split("written\n")
        assert first == second and len(first.splitlines()) == 2, (first, second)
        assert first.splitlines()[1].startswith(ZEROS_2_MIB_SHA256)
    with _booted(dataclasses.replace(cfg, ksm=True), pod) as vm:
        assert vm._hypervisor.discard_zero_pages(vm.name) == "guest RAM is not in a shared file"


def test_a_settled_cold_vm_gives_its_guest_pages_of_zeros_back(host_cfg: HostConfig,
                                                               pod: PodSpec) -> None:
    """executor.vm sends discard-zero-pages with the settled flush (HYPERVM_DISCARD_ZERO_PAGES
    on, the default): an idle VM then holds (almost) no guest page of zeros, ~1.6 MiB without."""
    qemu = find_qemu(host_cfg)
    if detect_accel(host_cfg) != "tcg" or "zero-discard" not in qemu.features:
        pytest.skip("needs TCG and HyperQEMU's zero-discard")
    zeros = {}
    for discard in (True, False):
        with _booted(dataclasses.replace(host_cfg, discard_zero_pages=discard), pod) as vm:
            pid = vm._hypervisor.qemu_pid(vm.name)
            assert pid is not None
            time.sleep(SETTLED_FLUSH_S + 2.0)
            zeros[discard] = guest_ram_pages(pid)["zero_kib"]
    assert zeros[True] <= 256 and zeros[False] >= 1024, zeros


#: sha256 of 2 MiB of zeros
ZEROS_2_MIB_SHA256 = hashlib.sha256(bytes(2 << 20)).hexdigest()
