"""Root filesystem images: an unpacked layer directory → a read-only erofs disk image.

:func:`build_layer_image` keeps everything overlayfs in the guest needs from a layer: ownership,
modes including setuid/setgid/sticky, device nodes (0:0 char devices are overlay whiteouts),
per-file mtimes and extended attributes, ``trusted.overlay.*`` (opaque directories) included.
mkfs.erofs writes to a temporary file next to the destination, which is renamed into place
world-readable (0644) so QEMU, running as ``libvirt-qemu``, can open it.

:func:`make_busybox_rootfs` lays out a minimal rootfs from the host's busybox-static: the demo's
and the tests' image when no registry is involved.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from hypervm.errors import HostError, ImageError

log = logging.getLogger(__name__)

MKFS_EROFS = "mkfs.erofs"
BUSYBOX = Path("/bin/busybox")
#: compressors the HyperKernel can read (CONFIG_EROFS_FS_ZIP: LZ4 only)
COMPRESSORS = ("lz4", "lz4hc")

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = """\
root:x:0:
nogroup:x:65534:
"""
HOSTS = """\
127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
"""


def mkfs_erofs_argv(image: Path, source_dir: Path, compress: str | None = None) -> list[str]:
    """The mkfs.erofs command line (pure); ownership and xattrs are kept by default."""
    argv = [MKFS_EROFS, "--quiet", "--preserve-mtime"]
    if compress:
        if compress not in COMPRESSORS:
            raise ValueError(f"compress must be one of {COMPRESSORS}, not {compress!r}")
        argv.append(f"-z{compress}")
    return argv + [str(image), str(source_dir)]


def build_layer_image(source_dir: Path, dest_path: Path, *, compress: str | None = None) -> Path:
    """Write an erofs image of ``source_dir`` to ``dest_path`` atomically; returns dest_path."""
    source_dir, dest_path = Path(source_dir), Path(dest_path)
    if not source_dir.is_dir():
        raise ImageError(str(source_dir), "layer directory does not exist")
    dest_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{dest_path.name}-", dir=dest_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        argv = mkfs_erofs_argv(tmp, source_dir, compress)
        log.debug("running %s", " ".join(argv))
        try:
            proc = subprocess.run(argv, capture_output=True, text=True)
        except FileNotFoundError as e:
            raise HostError(f"{MKFS_EROFS} is not installed",
                            hint="apt-get install erofs-utils (make deps)") from e
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise ImageError(str(source_dir), f"mkfs.erofs failed (status {proc.returncode}): "
                             + " / ".join(detail))
        tmp.chmod(0o644)
        os.rename(tmp, dest_path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("built layer image %s from %s (%d bytes)", dest_path, source_dir,
             dest_path.stat().st_size)
    return dest_path


def busybox_applets(busybox: Path = BUSYBOX) -> list[str]:
    """The applet paths busybox installs, relative to the root (``bin/sh``, ``usr/bin/env`` …)."""
    try:
        out = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise HostError(f"cannot run {busybox}",
                        hint="apt-get install busybox-static (make deps)") from e
    return sorted({line.strip().lstrip("/") for line in out.splitlines() if line.strip()})


def make_busybox_rootfs(dest: Path, busybox: Path = BUSYBOX) -> Path:
    """Lay out a minimal busybox rootfs in the (new or empty) directory ``dest``; returns it."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise HostError(f"{dest} is not empty", hint="pass a new directory")
    for name, mode in (("bin", 0o755), ("sbin", 0o755), ("usr/bin", 0o755),
                       ("usr/sbin", 0o755), ("etc", 0o755), ("root", 0o700), ("tmp", 0o1777),
                       ("proc", 0o555), ("sys", 0o555), ("dev", 0o755), ("run", 0o755),
                       ("var/tmp", 0o1777)):
        (dest / name).mkdir(parents=True, exist_ok=True)
        (dest / name).chmod(mode)
    shutil.copyfile(busybox, dest / "bin/busybox")
    (dest / "bin/busybox").chmod(0o755)
    for applet in busybox_applets(busybox):
        link = dest / applet
        if applet == "bin/busybox" or link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")
    for name, text in (("etc/passwd", PASSWD), ("etc/group", GROUP), ("etc/hosts", HOSTS)):
        (dest / name).write_text(text)
        (dest / name).chmod(0o644)
    return dest


#: bump when the warm-up layer's content changes
WARMUP_VERSION = 1


def ensure_warmup_layer(rootfs_dir: Path, busybox: Path = BUSYBOX) -> Path:
    """The busybox layer a warm pool VM runs one throwaway container from before it is handed
    out (executor/pool.py), built once per host under ``rootfs_dir``; returns its path."""
    digest = hashlib.sha256(busybox.read_bytes()).hexdigest()[:16]
    dest = Path(rootfs_dir) / f"warmup-v{WARMUP_VERSION}-{digest}.erofs"
    if dest.exists():
        return dest
    with tempfile.TemporaryDirectory(prefix="hypervm-warmup-") as tmp:
        root = make_busybox_rootfs(Path(tmp) / "root", busybox)
        build_layer_image(root, dest)  # atomic: concurrent builders just rename twice
    return dest
