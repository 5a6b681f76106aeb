"""``hypervm doctor``: check that this host can run HyperVMs and say how to fix what is missing."""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from executor.cli.check import Check
from executor.cli.doctor_config import configuration_lines
from executor.cli.doctor_confinement import CONFINEMENT_CHECKS
from executor.cli.doctor_kvmdev import check_kvm_device
from executor.cli.doctor_memory import check_ksm
from executor.cli.doctor_reaper import check_reaper
from executor.libvirt.domain_xml import SHARE_ACCESSMODE
from executor.libvirt.hypervisor import Hypervisor
from executor.pool import claim as warm
from hypervm.config import HostConfig, config_from_env
from hypervm.errors import HyperVMError, PoolError
from vmimage.accel import detect_accel
from vmimage.initrd import ensure_initrd
from vmimage.kernel import find_kernel
from vmimage.qemu import find_qemu, requested_kind

MIN_FREE_BYTES = 2 * 1024**3
QEMU = "qemu-system-x86_64"
QBOOT = Path("/usr/share/qemu/qboot.rom")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("doctor", help="check this host and say how to fix problems",
                              description="Check this host, then print the effective "
                                          "configuration and where each value comes from.")
    p.add_argument("--config", action="store_true",
                   help="only print the effective configuration")
    p.set_defaults(func=doctor_command)


def check_libvirt(cfg: HostConfig) -> Check:
    try:
        hv = Hypervisor(cfg.libvirt_uri)
        version = hv.version()
        hv.close()
    except HyperVMError as e:
        return Check("libvirtd", False, str(e), "start it: virtlogd -d; libvirtd -d")
    return Check("libvirtd", True, f"reachable at {cfg.libvirt_uri} ({version})")


def check_qemu(cfg: HostConfig) -> Check:
    path = shutil.which(QEMU)
    if path is None:
        return Check("qemu", False, f"{QEMU} not found", "apt-get install qemu-system-x86")
    if not QBOOT.is_file():
        return Check("qemu", False, f"{QBOOT} not found", "apt-get install qemu-system-data")
    try:
        qemu = find_qemu(cfg)
    except HyperVMError as e:
        return Check("qemu", False, str(e), "unset HYPERVM_QEMU or set it to hyperqemu")
    if qemu.kind == "hyperqemu":
        return Check("qemu", True, f"HyperQEMU {qemu.version} ({qemu.key}) at {qemu.path}, "
                     f"firmware {QBOOT}")
    if requested_kind() == "distro":
        return Check("qemu", True, f"{path} (HYPERVM_QEMU=distro), firmware {QBOOT}")
    return Check("qemu", True, f"{path}: HyperQEMU is not built, so idle VMs take ~45 MiB "
                 f"more host memory under TCG (make qemu builds it)")


def check_accel(cfg: HostConfig) -> Check:
    try:
        accel = detect_accel(cfg)
    except HyperVMError as e:
        return Check("accelerator", False, str(e), "set HYPERVM_ACCEL=tcg to skip the probe")
    if accel == "kvm":
        return Check("accelerator", True, "KVM works")
    return Check("accelerator", True,
                 "TCG (software emulation): KVM is absent or does not run guests here; "
                 "VMs work, slower")


def check_kernel(cfg: HostConfig) -> Check:
    try:
        kernel = find_kernel(cfg)
    except HyperVMError as e:
        return Check("kernel", False, str(e), "build it: make kernel")
    return Check("kernel", True, f"{kernel.kind} {kernel.version} at {kernel.path}")


def check_initrd(cfg: HostConfig) -> Check:
    try:
        path = ensure_initrd(cfg, find_kernel(cfg))
    except HyperVMError as e:
        return Check("initrd", False, str(e), "build it: make initrd")
    return Check("initrd", True, str(path))


def _traversable_by_others(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` that QEMU (not root) could not traverse."""
    for part in [*reversed(path.parents), path]:
        try:
            mode = part.stat().st_mode
        except FileNotFoundError:
            return None
        if not mode & stat.S_IXOTH:
            return part
    return None


def check_state_dir(cfg: HostConfig) -> Check:
    blocked = _traversable_by_others(cfg.state_dir)
    if blocked is not None:
        return Check("state dir", False,
                     f"{blocked} is not traversable by others, so QEMU cannot read "
                     f"kernels and images under {cfg.state_dir}",
                     f"chmod o+x {blocked} or set HYPERVM_STATE_DIR elsewhere")
    probe = cfg.state_dir if cfg.state_dir.exists() else cfg.state_dir.parent
    free = shutil.disk_usage(probe).free
    if free < MIN_FREE_BYTES:
        return Check("disk space", False, f"{free / 1024**3:.1f} GiB free under {probe}",
                     "free at least 2 GiB (hypervm gc removes unused images)")
    return Check("state dir", True, f"{cfg.state_dir}, {free / 1024**3:.0f} GiB free")


def check_tools(_: HostConfig) -> Check:
    missing = [t for t in ("mkfs.erofs",) if shutil.which(t) is None]
    if missing:
        return Check("tools", False, f"missing: {', '.join(missing)}",
                     "apt-get install erofs-utils")
    return Check("tools", True, "mkfs.erofs")


def check_pool(cfg: HostConfig) -> Check:
    """The warm pool is optional: its absence is fine, a pool that does not answer is not."""
    if not cfg.use_pool:
        return Check("warm pool", True, "off (HYPERVM_POOL=off): every VM boots cold")
    if not cfg.pool_socket.exists():
        return Check("warm pool", True, f"none serves at {cfg.pool_socket}: VMs boot cold "
                     "(hypervm pool serve for fast starts)")
    try:
        state = warm.status(cfg)
    except PoolError as e:
        return Check("warm pool", False, str(e),
                     f"restart hypervm pool serve, or remove the stale {cfg.pool_socket}")
    images = state.get("images") or {}
    return Check("warm pool", True,
                 f"{state.get('ready')}/{state.get('target', state.get('size'))} ready, "
                 f"{state.get('vcpus')} vCPU / {state.get('memory_mib')} MiB"
                 f"{f', {len(images)} images kept warm' if images else ''}, "
                 f"at {cfg.pool_socket}")


#: where Mesos agents keep sandboxes unless --work_dir says otherwise
MESOS_WORK_DIR = Path("/var/lib/mesos")


def check_shares(cfg: HostConfig, work_dir: Path | None = None) -> Check:
    """Shares are 9p mapped (guest links, devices, set-id bits stay plain files), which needs
    user xattrs where sandboxes live: the agent's work dir (else the state dir)."""
    where = work_dir or (MESOS_WORK_DIR if MESOS_WORK_DIR.is_dir() else cfg.state_dir)
    probe_dir = where if where.is_dir() else where.parent
    try:
        with tempfile.NamedTemporaryFile(dir=probe_dir, prefix=".hypervm-xattr-") as f:
            os.setxattr(f.name, "user.hypervm.probe", b"1")
    except OSError as e:
        return Check("shares", False, f"9p accessmode {SHARE_ACCESSMODE} needs user xattrs, "
                     f"which {probe_dir} lacks: {e.strerror}",
                     "keep the agent's --work_dir on ext4, xfs or btrfs")
    return Check("shares", True, f"9p accessmode {SHARE_ACCESSMODE}: guest-made symlinks, "
                 f"devices and set-id bits are plain files on the host (xattrs work in "
                 f"{probe_dir})")


CHECKS: tuple[Callable[[HostConfig], Check], ...] = (
    check_libvirt, check_kvm_device, check_qemu, check_accel, check_state_dir, check_tools,
    check_kernel, check_initrd, check_pool, check_shares, check_ksm, *CONFINEMENT_CHECKS,
    check_reaper,
)


def run_checks(cfg: HostConfig) -> list[Check]:
    return [check(cfg) for check in CHECKS]


def doctor_command(args: argparse.Namespace) -> int:
    if args.config:
        print("\n".join(configuration_lines(os.environ)))
        return 0
    if os.geteuid() != 0:
        print("hypervm doctor: note: not root; libvirt's system instance needs root",
              file=sys.stderr)
    results = run_checks(config_from_env())
    for result in results:
        mark = ("warn" if result.warn else "ok  ") if result.ok else "FAIL"
        print(f"{mark} {result.name:<12} {result.detail}")
        if not result.ok and result.fix:
            print(f"     {'':<12} fix: {result.fix}")
    failed = [r for r in results if not r.ok]
    print(f"{len(results) - len(failed)} ok, {len(failed)} failed")
    print("\n".join(configuration_lines(os.environ)))
    return 1 if failed else 0
