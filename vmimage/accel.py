"""Which accelerator QEMU should use on this host: ``kvm`` when it really works, else ``tcg``.

A usable-looking /dev/kvm is not enough: some hosts expose a KVM device on which stock guests
hang (e.g. PVM, or nested setups without working VMX). So the verdict needs a functional probe:
boot the guest kernel under ``-accel kvm`` without an initrd and wait for its banner on the
serial port. A working KVM prints it in well under a second; a broken one prints nothing. The
verdict is cached per host boot in ``<run_dir>/accel.json``; ``HYPERVM_ACCEL`` overrides it all.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from hypervm.config import HostConfig
from hypervm.frozen import frozen_dataclass
from vmimage.kernel import find_kernel

log = logging.getLogger(__name__)

#: qboot (Debian qemu-system-data): a minimal firmware that boots a PVH kernel fast
DEFAULT_BIOS = Path("/usr/share/qemu/qboot.rom")
KVM_DEVICE = Path("/dev/kvm")
#: _IO(KVMIO=0xAE, 0x00)
KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
CACHE_NAME = "accel.json"
QEMU = "qemu-system-x86_64"
#: printed by every Linux kernel first thing on the console ("Linux version 6.1…")
BANNER = b"Linux version"
PROBE_TIMEOUT = 5.0


@frozen_dataclass
class Verdict:
    """The accelerator chosen for this host and why."""

    accel: str
    reason: str


@frozen_dataclass
class Check:
    """The outcome of one accelerator check and why."""

    ok: bool
    reason: str


# --- checks (side effects) --------------------------------------------------------------------


def check_kvm_device(device: Path = KVM_DEVICE) -> Check:
    """/dev/kvm exists, opens read-write and speaks KVM API version 12."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return Check(False, f"{device} does not exist (no KVM module, or not passed through)")
    except OSError as e:
        return Check(False, f"cannot open {device}: {e.strerror}")
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as e:
        return Check(False, f"KVM_GET_API_VERSION on {device} failed: {e.strerror}")
    finally:
        os.close(fd)
    if version != KVM_API_VERSION:
        return Check(False, f"{device} speaks KVM API {version}, not {KVM_API_VERSION}")
    return Check(True, f"{device} speaks KVM API {KVM_API_VERSION}")


def probe_command(kernel: Path, bios: Path | None = DEFAULT_BIOS) -> list[str]:
    """QEMU booting ``kernel`` under KVM with nothing else: no initrd, so it panics (and exits,
    thanks to panic=-1 and -no-reboot) right after printing its banner on ttyS0."""
    cmd = [
        QEMU,
        "-accel",
        "kvm",
        "-machine",
        "pc",
        "-cpu",
        "host",
        "-m",
        "64",
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
        "-kernel",
        str(kernel),
        "-append",
        "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1 rdinit=/none root=/none",
    ]
    if bios is not None and bios.is_file():
        cmd[1:1] = ["-bios", str(bios)]
    return cmd


def probe_kvm_boot(kernel: Path, timeout: float = PROBE_TIMEOUT) -> Check:
    """Boot ``kernel`` under KVM; OK once its banner appears on the serial port."""
    # deferred: the probe runs only when no verdict of this boot is cached; a cold run's path
    # imports neither (~1 ms, issue 17)
    import selectors
    import subprocess  # see above

    cmd = probe_command(kernel)
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
    except OSError as e:
        return Check(False, f"cannot run {QEMU}: {e.strerror}")
    assert proc.stdout is not None
    output = b""
    exited = False
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while BANNER not in output:
                left = timeout - (time.monotonic() - started)
                if left <= 0 or not sel.select(left):
                    break
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:  # QEMU exited (e.g. it cannot set up the vCPU)
                    exited = True
                    break
                output += chunk
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    elapsed = time.monotonic() - started
    if BANNER in output:
        return Check(True, f"a guest kernel booted under KVM in {elapsed:.2f} s")
    last = output.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
    what = "QEMU failed" if exited else "a guest kernel printed nothing"
    return Check(False, f"{what} under KVM in {elapsed:.1f} s (QEMU: {last[0][:200]})")


# --- decision (pure) --------------------------------------------------------------------------


def choose_accel(device: Check, probe: Callable[[], Check] | None) -> Verdict:
    """kvm only when the device is usable *and* a guest boots on it; ``probe`` is None when no
    kernel is available to probe with."""
    if not device.ok:
        return Verdict("tcg", device.reason)
    if probe is None:
        return Verdict("tcg", f"{device.reason}, but no guest kernel to probe it with")
    result = probe()
    if not result.ok:
        return Verdict("tcg", f"{device.reason}, but {result.reason}")
    return Verdict("kvm", result.reason)


# --- cache and entry point --------------------------------------------------------------------


def read_boot_id(path: Path = BOOT_ID) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def load_cached(cache: Path, boot_id: str) -> Verdict | None:
    try:
        data = json.loads(cache.read_text())
    except (OSError, ValueError):
        return None
    if not boot_id or not isinstance(data, dict) or data.get("boot_id") != boot_id:
        return None
    if data.get("accel") not in ("kvm", "tcg"):
        return None
    return Verdict(data["accel"], str(data.get("reason", "")))


def store_cached(cache: Path, boot_id: str, verdict: Verdict) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"boot_id": boot_id, **asdict(verdict)}) + "\n")
        tmp.replace(cache)
    except OSError as e:  # a cache we cannot write only costs a probe next time
        log.warning("cannot cache the accelerator verdict in %s: %s", cache, e)


def _find_probe_kernel(cfg: HostConfig) -> Path | None:
    try:
        return find_kernel(cfg).path
    except Exception as e:  # no kernel yet (or no vmimage): decide without probing
        log.debug("no guest kernel to probe KVM with: %s", e)
        return None


def detect_accel(
    cfg: HostConfig,
    *,
    kernel: Path | None = None,
    device_check: Callable[[], Check] = check_kvm_device,
    probe: Callable[[Path], Check] = probe_kvm_boot,
    boot_id: str | None = None,
) -> str:
    """``cfg.accel`` when forced; else the cached verdict of this host boot; else decide now."""
    if cfg.accel in ("kvm", "tcg"):
        log.info("accelerator %s (forced by HYPERVM_ACCEL)", cfg.accel)
        return cfg.accel
    boot_id = read_boot_id() if boot_id is None else boot_id
    cache = cfg.run_dir / CACHE_NAME
    cached = load_cached(cache, boot_id)
    if cached is not None:
        log.debug("accelerator %s (cached: %s)", cached.accel, cached.reason)
        return cached.accel
    kernel = kernel or _find_probe_kernel(cfg)
    device = device_check()
    verdict = choose_accel(device, (lambda: probe(kernel)) if kernel is not None else None)
    log.info("accelerator %s: %s", verdict.accel, verdict.reason)
    if kernel is not None or not device.ok:  # without a kernel, probe again next time
        store_cached(cache, boot_id, verdict)
    return verdict.accel
