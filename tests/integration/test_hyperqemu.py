"""HyperQEMU for real: HyperVMs run on it, and its tcg-flush gives a booted guest's translations
back to the host while the guest runs on (vmimage/qemu/README.md)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from pathlib import Path

import pytest

from executor.vm import HyperVM
from hypervm.config import HostConfig
from hypervm.podspec import Container, PodSpec, Process, Rootfs
from tests.conftest import TEST_TAG, run_to_exit
from vmimage.qemu import DISTRO, Qemu, find_qemu
from vmimage.rootfs import ensure_warmup_layer

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.usefixtures("no_leaked_domains")]

#: an idle VM's boot leaves ~30 MiB of translations (bench: idle_vm_rss_by_mapping); the flush
#: must give back most of them
MIN_RETURNED_MIB = 15


@pytest.fixture(scope="module")
def hyperqemu(host_cfg: HostConfig) -> Qemu:
    qemu = find_qemu(host_cfg)
    assert qemu.kind == "hyperqemu", "HyperQEMU is not built for this machine: run make qemu"
    return qemu


@pytest.fixture(scope="module")
def pod(host_cfg: HostConfig) -> PodSpec:
    layer = ensure_warmup_layer(host_cfg.rootfs_dir)
    say = Container("c", Rootfs(layers=(layer,)), Process(
        args=("/bin/sh", "-c", "echo hello from $(uname -m)"), env=("PATH=/bin",)))
    return PodSpec(name=f"{TEST_TAG}-hq", containers=(say,))


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_hypervms_run_on_hyperqemu(vm_factory, hyperqemu: Qemu, pod: PodSpec) -> None:  # noqa: ANN001
    vm = vm_factory(pod)
    pid = vm._hypervisor.qemu_pid(vm.name)
    assert pid is not None
    assert Path(f"/proc/{pid}/exe").resolve() == hyperqemu.path.resolve()
    # as confined as Debian's: libvirt's seccomp sandbox is on (HyperQEMU has libseccomp) and
    # QEMU runs as libvirt-qemu, not root
    status = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    assert status["Seccomp"].strip() == "2"
    assert status["Uid"].split()[0] != "0"
    # flushed after READY (TCG): the guest's next process is translated anew and runs
    assert run_to_exit(vm, pod.containers[0]) == (0, "hello from x86_64\n")


def test_tcg_flush_gives_the_boot_translations_back(host_cfg: HostConfig, hyperqemu: Qemu,
                                                    pod: PodSpec) -> None:
    from vmimage.accel import detect_accel

    if detect_accel(host_cfg) != "tcg":
        pytest.skip("KVM runs guest code natively: there are no translations to give back")
    assert hyperqemu.can_flush_tcg
    cfg = dataclasses.replace(host_cfg, tcg_flush=False, use_pool=False)
    with HyperVM(cfg, pod) as vm:
        vm.boot(timeout=90.0)
        pid = vm._hypervisor.qemu_pid(vm.name)
        assert pid is not None
        time.sleep(1.0)
        before = _rss_mib(pid)
        vm._hypervisor.flush_tcg(vm.name)
        time.sleep(0.5)
        after = _rss_mib(pid)
        assert before - after >= MIN_RETURNED_MIB, (before, after)
        assert run_to_exit(vm, pod.containers[0]) == (0, "hello from x86_64\n")


def test_doctor_names_the_qemu_vms_run_on(hyperqemu: Qemu) -> None:
    import os
    import subprocess

    from tests.conftest import HYPERVM, REPO

    def qemu_line(**env: str) -> str:
        out = subprocess.run([*HYPERVM, "doctor"], cwd=REPO, capture_output=True, text=True,
                             env={**os.environ, **env}, check=False, timeout=120)
        return next(line for line in out.stdout.splitlines() if " qemu " in line)

    assert qemu_line().startswith("ok ") and str(hyperqemu.path) in qemu_line()
    assert "HYPERVM_QEMU=distro" in qemu_line(HYPERVM_QEMU="distro")
    bad = qemu_line(HYPERVM_QEMU="firecracker")
    assert bad.startswith("FAIL") and "HYPERVM_QEMU" in bad


def _cpu_properties(qemu: Path) -> set[str]:
    """The QOM properties of QEMU's ``max`` x86 CPU model (what libvirt probes)."""
    commands = [{"execute": "qmp_capabilities"},
                {"execute": "qom-list-properties", "arguments": {"typename": "max-x86_64-cpu"}},
                {"execute": "quit"}]
    out = subprocess.run([str(qemu), "-machine", "none", "-nodefaults", "-display", "none",
                          "-qmp", "stdio"], input="".join(json.dumps(c) + "\n" for c in commands),
                         capture_output=True, text=True, check=False, timeout=60).stdout
    replies = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    listed = next(r["return"] for r in replies if isinstance(r.get("return"), list))
    return {p["name"] for p in listed}


def test_libvirt_reads_the_guest_cpu_in_two_calls(hyperqemu: Qemu) -> None:
    # with "unavailable-features" libvirt (9.0) reads a started guest's CPU with one qom-get
    # per feature (~400 monitor round trips, 0.1-0.3 s of every createXML under TCG); without
    # it, with qom-get of the two feature-word properties (vmimage/qemu/cpu-probe.patch)
    assert "cpu-probe" in hyperqemu.features
    props = _cpu_properties(hyperqemu.path)
    assert {"feature-words", "filtered-features", "avx2", "sse4.2"} <= props
    assert "unavailable-features" not in props
    # Debian's QEMU has it: the probe above sees the property where it exists
    if DISTRO.path.exists():
        assert "unavailable-features" in _cpu_properties(DISTRO.path)
