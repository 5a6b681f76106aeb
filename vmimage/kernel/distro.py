"""Fallback guest kernel: the host distro's kernel plus the modules the guest needs.

Used when the HyperKernel cannot be built (no linux-source, a failed build) or when
``HYPERVM_KERNEL=distro``. The kernel image and the needed modules (with their dependencies
from ``modules.dep``, decompressed) are copied to ``<state>/kernel/distro-<release>/`` so QEMU
and the initrd builder read stable, world-readable files; ``meta.json`` lists the modules in
load order (dependencies first). If ``/boot`` holds no kernel, Debian's ``linux-image-amd64`` is
installed with apt.
"""

from __future__ import annotations

import gzip
import json
import logging
import lzma
import os
import platform
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from hypervm.config import HostConfig
from hypervm.errors import HostError
from vmimage.kernel import Kernel, store

log = logging.getLogger(__name__)

BOOT = Path("/boot")
MODULES_ROOT = Path("/lib/modules")
DISTRO_PACKAGE = "linux-image-amd64"
#: what the guest needs; each may also be built in (then it is skipped)
REQUIRED_MODULES = (
    "virtio_pci", "virtio_blk", "virtio_console", "virtio_net",
    "9p", "9pnet_virtio", "overlay", "erofs", "ext4",
)
#: loaded first when present: the crc32c algorithm libcrc32c (ext4, erofs) looks up at load
PRELOAD_MODULES = ("crc32c_generic",)
#: loaded last when present (virtio_scsi, sd_mod: warm pool VMs get their layers as SCSI disks)
OPTIONAL_MODULES = ("virtio_scsi", "sd_mod", "virtio_rng")
PREFIX = "distro-"


def module_name(path: str) -> str:
    """``kernel/fs/9p/9p.ko.xz`` → ``9p``; dashes and underscores are the same to modprobe."""
    base = path.rsplit("/", 1)[-1]
    base = base.split(".ko", 1)[0]
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """modules.dep → {name: (relative path, [dependency paths])}."""
    table: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        path, _, deps = line.partition(":")
        table[module_name(path.strip())] = (path.strip(), deps.split())
    return table


def parse_builtin(text: str) -> set[str]:
    return {module_name(line.strip()) for line in text.splitlines() if line.strip()}


def load_order(wanted: Sequence[str], table: Mapping[str, tuple[str, list[str]]]) -> list[str]:
    """Paths of ``wanted`` and all their dependencies, each after everything it needs."""
    order: list[str] = []
    done: set[str] = set()
    active: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        if name in active:
            raise HostError(f"module dependency cycle through {name} in modules.dep")
        active.add(name)
        path, deps = table[name]
        for dep in deps:
            visit(module_name(dep))
        active.discard(name)
        done.add(name)
        order.append(path)

    for name in wanted:
        visit(name)
    return order


def select_modules(table: Mapping[str, tuple[str, list[str]]], builtin: set[str],
                   required: Sequence[str] = REQUIRED_MODULES,
                   optional: Sequence[str] = OPTIONAL_MODULES,
                   preload: Sequence[str] = PRELOAD_MODULES) -> list[str]:
    """The load order for the guest; raises naming every required module that is missing."""
    missing = [m for m in required if m not in table and m not in builtin]
    if missing:
        raise HostError(f"the distro kernel lacks the modules {', '.join(missing)}",
                        hint="install a Debian linux-image package or build the HyperKernel")
    wanted = [m for m in preload if m in table] + [m for m in required if m in table]
    wanted += [m for m in optional if m in table]
    return load_order(wanted, table)


def pick_release(boot: Path | None = None, modules_root: Path | None = None,
                 running: str | None = None) -> str | None:
    """The running kernel's release if /boot has it, else the newest with modules; or None."""
    boot = boot or BOOT
    modules_root = modules_root or MODULES_ROOT
    running = running or platform.release()
    candidates = []
    for image in boot.glob("vmlinuz-*"):
        release = image.name.removeprefix("vmlinuz-")
        if (modules_root / release / "modules.dep").is_file():
            candidates.append(release)
    if running in candidates:
        return running
    return max(candidates, key=_version_key) if candidates else None


def _version_key(release: str) -> tuple:
    parts = release.replace("-", ".").split(".")
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


def find_distro_kernel(cfg: HostConfig) -> Kernel | None:
    """The prepared distro kernel with the newest release, or None."""
    found = []
    for directory in cfg.kernel_dir.glob(f"{PREFIX}*"):
        kernel = _load(directory)
        if kernel is not None:
            found.append(kernel)
    return max(found, key=lambda k: _version_key(k.version)) if found else None


def ensure_distro_kernel(cfg: HostConfig) -> Kernel:
    """Prepare (once) and return the distro kernel with its guest modules."""
    release = pick_release()
    if release is None:
        _install_distro_kernel()
        release = pick_release()
        if release is None:
            raise HostError(f"no kernel in {BOOT} even after installing {DISTRO_PACKAGE}",
                            hint="install a Debian linux-image package")
    final = cfg.kernel_dir / f"{PREFIX}{release}"
    kernel = _load(final)
    if kernel is not None:
        return kernel
    with store.locked(cfg.kernel_dir / ".lock"):
        kernel = _load(final)
        if kernel is None:
            _prepare(cfg, release, final)
            kernel = _load(final)
    if kernel is None:
        raise HostError(f"prepared distro kernel {final} is unreadable")
    return kernel


def _prepare(cfg: HostConfig, release: str, final: Path) -> None:
    moddir = MODULES_ROOT / release
    try:
        table = parse_modules_dep((moddir / "modules.dep").read_text())
        builtin_file = moddir / "modules.builtin"
        builtin = parse_builtin(builtin_file.read_text()) if builtin_file.exists() else set()
    except OSError as e:
        raise HostError(f"cannot read the module index of {release}: {e.strerror}") from e
    order = select_modules(table, builtin)
    with store.staging(cfg.kernel_dir, f"{PREFIX}{release}") as tmp:
        shutil.copyfile(BOOT / f"vmlinuz-{release}", tmp / "vmlinuz")
        (tmp / "modules").mkdir()
        names = []
        for rel in order:
            name = module_name(rel) + ".ko"
            _decompress(moddir / rel, tmp / "modules" / name)
            names.append(name)
        meta = {"kind": "distro", "version": release, "modules": names}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        store.publish(tmp, final)
    log.info("distro kernel %s prepared with %d modules", release, len(order))


def _decompress(src: Path, dest: Path) -> None:
    if src.suffix == ".xz":
        with lzma.open(src) as fin, open(dest, "wb") as fout:
            shutil.copyfileobj(fin, fout)
    elif src.suffix == ".gz":
        with gzip.open(src) as fin, open(dest, "wb") as fout:
            shutil.copyfileobj(fin, fout)
    elif src.suffix == ".zst":
        with open(dest, "wb") as fout:
            try:
                subprocess.run(["zstd", "-dc", str(src)], stdout=fout, check=True)
            except (OSError, subprocess.CalledProcessError) as e:
                raise HostError(f"cannot decompress {src}", hint="apt-get install zstd") from e
    else:
        shutil.copyfile(src, dest)


def _load(directory: Path) -> Kernel | None:
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    image = directory / "vmlinuz"
    modules = tuple(directory / "modules" / name for name in meta.get("modules", []))
    if not image.is_file() or not all(m.is_file() for m in modules):
        return None
    return Kernel(path=image, version=str(meta["version"]), kind="distro", modules=modules,
                  key=directory.name)


def _install_distro_kernel() -> None:
    log.warning("no kernel in %s: installing %s with apt-get", BOOT, DISTRO_PACKAGE)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    argv = ["apt-get", "install", "-y", "-q", "--no-install-recommends", DISTRO_PACKAGE]
    try:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    except OSError as e:
        raise HostError("cannot run apt-get to install a distro kernel") from e
    if proc.returncode != 0:
        tail = " / ".join(proc.stderr.strip().splitlines()[-3:])
        raise HostError(f"apt-get install {DISTRO_PACKAGE} failed: {tail}",
                        hint="install a Debian linux-image package by hand")
