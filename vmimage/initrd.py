"""The guest initrd: a newc cpio with our static /init (and the distro kernel's modules).

The archive is written here in Python (no ``cpio``/``gen_init_cpio`` needed) and is
deterministic: entries sorted by path, inode numbers assigned in that order, every mtime 0,
uid/gid 0. Contents:

- ``/init``: the static ``init/build/hypervm-init`` (``make -C init``), mode 0755;
- ``/dev/console`` (char 5:1), so the kernel can open the console before init mounts devtmpfs;
- empty mount points ``/dev /proc /sys /run``;
- for the distro kernel only: ``/lib/modules/<name>.ko`` and ``/lib/modules/hypervm.order``, one
  absolute module path a line, in load order (dependencies first).

It is cached at ``<state>/initrd/<key>/initrd.img``, key = sha256 of (format version, init
binary, kernel key, module names and contents), published atomically and readable by QEMU.
"""

from __future__ import annotations

import argparse
import logging
import os
import stat
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from hypervm.config import HostConfig, config_from_env
from hypervm.digest import sha256
from hypervm.errors import HostError, HyperVMError
from hypervm.frozen import frozen_dataclass
from vmimage.kernel import Kernel, ensure_kernel, store

log = logging.getLogger(__name__)

#: bump when the archive layout changes
FORMAT_VERSION = "1"
INITRD_NAME = "initrd.img"
MODULES_DIR = "lib/modules"
ORDER_FILE = f"{MODULES_DIR}/hypervm.order"
DEFAULT_INIT = Path(__file__).resolve().parents[1] / "init" / "build" / "hypervm-init"
_NEWC_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


@frozen_dataclass
class CpioEntry:
    """One archive member; ``path`` is relative (no leading slash)."""

    path: str
    mode: int  # full st_mode: type bits | permissions
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)

    @staticmethod
    def directory(path: str, perm: int = 0o755) -> CpioEntry:
        return CpioEntry(path, stat.S_IFDIR | perm)

    @staticmethod
    def file(path: str, data: bytes, perm: int = 0o644) -> CpioEntry:
        return CpioEntry(path, stat.S_IFREG | perm, data)

    @staticmethod
    def chardev(path: str, major: int, minor: int, perm: int = 0o600) -> CpioEntry:
        return CpioEntry(path, stat.S_IFCHR | perm, rdev=(major, minor))


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _newc_member(ino: int, entry: CpioEntry | None) -> bytes:
    name = (entry.path if entry else _TRAILER).encode() + b"\0"
    data = entry.data if entry else b""
    mode = entry.mode if entry else 0
    nlink = 2 if entry and stat.S_ISDIR(mode) else 1
    rmajor, rminor = entry.rdev if entry else (0, 0)
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmajor, rminor, len(name), 0)
    header = _NEWC_MAGIC + b"".join(b"%08X" % f for f in fields)
    head = header + name
    return head + _pad4(len(head)) + data + _pad4(len(data))


def newc_archive(entries: Iterable[CpioEntry]) -> bytes:
    """A deterministic newc cpio of ``entries`` (sorted by path, parents before children)."""
    ordered = sorted(entries, key=lambda e: e.path.split("/"))
    paths = [e.path for e in ordered]
    if len(set(paths)) != len(paths):
        raise ValueError("duplicate paths in the initrd")
    out = [_newc_member(ino, e) for ino, e in enumerate(ordered, start=1)]
    out.append(_newc_member(0, None))
    return b"".join(out)


def initrd_entries(init: bytes, modules: Sequence[tuple[str, bytes]] = ()) -> list[CpioEntry]:
    """What goes into the initrd; ``modules`` are (file name, contents) in load order."""
    entries = [
        CpioEntry.file("init", init, 0o755),
        CpioEntry.directory("dev"),
        CpioEntry.chardev("dev/console", 5, 1),
        CpioEntry.directory("proc"),
        CpioEntry.directory("sys"),
        CpioEntry.directory("run"),
    ]
    if modules:
        entries += [CpioEntry.directory("lib"), CpioEntry.directory(MODULES_DIR)]
        entries += [CpioEntry.file(f"{MODULES_DIR}/{name}", data) for name, data in modules]
        order = "".join(f"/{MODULES_DIR}/{name}\n" for name, _ in modules)
        entries.append(CpioEntry.file(ORDER_FILE, order.encode()))
    return entries


def initrd_key(init: bytes, kernel_key: str, modules: Sequence[tuple[str, bytes]]) -> str:
    parts: list[bytes | str] = [FORMAT_VERSION, init, kernel_key]
    for name, data in modules:
        parts += [name, sha256(data).digest()]
    return store.cache_key(*parts)


def _read_modules(kernel: Kernel) -> list[tuple[str, bytes]]:
    modules = []
    for path in kernel.modules:
        if path.suffix != ".ko":
            raise HostError(f"module {path} is not an uncompressed .ko",
                            hint="run make kernel to prepare the distro kernel's modules")
        try:
            modules.append((path.name, path.read_bytes()))
        except OSError as e:
            raise HostError(f"cannot read module {path}: {e.strerror}",
                            hint="run make kernel") from e
    names = [name for name, _ in modules]
    if len(set(names)) != len(names):
        raise HostError(f"kernel {kernel.version} lists two modules with the same file name")
    return modules


def ensure_initrd(cfg: HostConfig, kernel: Kernel, init_binary: Path | None = None) -> Path:
    """The initrd for ``kernel`` with the current init binary, built if missing."""
    init_path = init_binary or Path(os.environ.get("HYPERVM_INIT", DEFAULT_INIT))
    try:
        init = init_path.read_bytes()
    except OSError as e:
        raise HostError(f"guest init {init_path} is missing ({e.strerror})",
                        hint="run make -C init") from e
    modules = _read_modules(kernel)
    key = initrd_key(init, kernel.key or str(kernel.path), modules)
    final = cfg.initrd_dir / key
    image = final / INITRD_NAME
    if image.is_file():
        return image
    with store.locked(cfg.initrd_dir / ".lock"):
        if image.is_file():
            return image
        with store.staging(cfg.initrd_dir, key) as tmp:
            (tmp / INITRD_NAME).write_bytes(newc_archive(initrd_entries(init, modules)))
            store.publish(tmp, final)
    log.info("initrd %s built (%d modules)", image, len(modules))
    return image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmimage.initrd",
                                     description="Build the HyperVM initrd (prints its path).")
    parser.add_argument("action", choices=("build",))
    parser.add_argument("--init", type=Path, default=None, help="the guest init binary")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="vmimage.initrd: %(message)s")
    try:
        cfg = config_from_env()
        print(ensure_initrd(cfg, ensure_kernel(cfg), args.init))
    except HyperVMError as e:
        print(f"vmimage.initrd: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
