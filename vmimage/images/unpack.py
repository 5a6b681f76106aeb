"""Unpack one layer tar (streaming) into a directory in overlayfs' on-disk form.

Policy, applied entry by entry (nothing is ever written outside ``dest``):

- names are relative; an absolute name or a ``..`` component is **rejected** (ImageError);
- an entry whose parent path goes through a symlink or a non-directory is **rejected**:
  extraction never follows a symlink on the host;
- symlink *targets* are stored verbatim and **contained**: the host never resolves them, the
  guest resolves them inside the container's own root;
- a hardlink must point to a regular file written earlier in the same layer, else **rejected**;
- a name with a NUL byte, longer than PATH_MAX (4096 bytes) or with a component longer than
  NAME_MAX (255) is **rejected**, and so is a symlink target with a NUL or beyond PATH_MAX;
- whiteouts ``.wh.NAME`` become a char device 0:0 named NAME (``.wh.``, ``.wh..`` and
  ``.wh...`` name nothing a layer may hide: **rejected**); an opaque marker
  ``.wh..wh..opq`` becomes the xattr ``trusted.overlay.opaque=y`` on its directory; both only
  hide lower layers (an entry of the same layer is never hidden); other ``.wh..wh.*`` (AUFS
  bookkeeping) are ignored;
- ownership, modes (setuid/setgid/sticky included), mtimes and xattrs are kept, except xattrs
  in ``trusted.overlay.*`` which a layer may not set;
- char/block device nodes are **skipped** (the guest gets its own /dev); FIFOs are created;
- caps (:class:`hypervm.config.ImageLimits`) hold while the stream is read: uncompressed
  bytes and file bytes (sparse files count at their full size) per layer and per image, entries
  per layer, and a free-space reserve on the cache's disk; the first cap passed stops the unpack;
- a parent directory the layer does not list itself is created root:root 0755. Layers stay
  independent of what lies below them (so an erofs image is keyed by the diff id alone); builders
  (docker, buildah, umoci) list every parent, so this only matters for hand-made tars.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from hypervm.config import ImageLimits
from hypervm.errors import ImageError

from .config import TRACKED_FILES

log = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_MAX_TRACKED = 1 << 20
PATH_MAX = 4096
NAME_MAX = 255
#: how often (in uncompressed bytes) unpacking looks at the free space of the cache's disk
FREE_CHECK_EVERY = 64 << 20
#: ... and how often in entries (each may make up to PATH_MAX/2 implicit parent directories)
FREE_CHECK_EVERY_ENTRIES = 4096
#: unpacking also stops when the cache's file system has fewer free inodes than this
MIN_FREE_INODES = 65536
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass
class LayerInfo:
    """What unpacking learned: the diff id, and the user database files this layer sets.

    ``files[name]`` is the text, or None when this layer deletes it; absent names are
    untouched by this layer.
    """

    diff_id: str = ""
    size: int = 0
    files: dict[str, str | None] = field(default_factory=dict)
    skipped_devices: int = 0


class Budget:
    """What one image may still spend while it unpacks, shared by its layers; each cap is
    checked as bytes arrive, so unpacking stops at the first byte past it."""

    def __init__(self, image: str, limits: ImageLimits | None = None) -> None:
        self.image = image
        self.limits = limits or ImageLimits()
        self.stream_bytes = 0  # uncompressed tar bytes of the image so far
        self.file_bytes = 0  # bytes of regular files (as declared: sparse files in full)

    def _over(self, blob: str, what: str, cap: int, setting: str) -> ImageError:
        return ImageError(self.image, f"{what} more than the limit of {_human(cap)}; unpacking "
                          "stopped", blob=blob,
                          hint=f"the image may be a decompression bomb; if it is genuine, the "
                               f"operator raises {setting}")

    def stream(self, blob: str, layer: int, total: int) -> None:
        if layer > self.limits.max_layer_bytes:
            raise self._over(blob, "the layer unpacks to", self.limits.max_layer_bytes,
                             "HYPERVM_IMAGE_MAX_LAYER_BYTES")
        if total > self.limits.max_image_bytes:
            raise self._over(blob, "the image's layers unpack to", self.limits.max_image_bytes,
                             "HYPERVM_IMAGE_MAX_BYTES")

    def files(self, blob: str, layer: int, size: int) -> None:
        self.file_bytes += size
        if layer > self.limits.max_layer_bytes:
            raise self._over(blob, "the layer's files hold", self.limits.max_layer_bytes,
                             "HYPERVM_IMAGE_MAX_LAYER_BYTES")
        if self.file_bytes > self.limits.max_image_bytes:
            raise self._over(blob, "the image's files hold", self.limits.max_image_bytes,
                             "HYPERVM_IMAGE_MAX_BYTES")

    def entries(self, blob: str, count: int) -> None:
        if count > self.limits.max_entries:
            raise ImageError(self.image, f"the layer has more than {self.limits.max_entries} "
                             "entries; unpacking stopped", blob=blob,
                             hint="if the image is genuine, the operator raises "
                                  "HYPERVM_IMAGE_MAX_ENTRIES")

    def disk(self, blob: str, dest: Path) -> None:
        st = os.statvfs(dest)
        free = st.f_bavail * st.f_frsize
        if st.f_files and st.f_favail < MIN_FREE_INODES:  # f_files 0: no inode limit (btrfs)
            raise ImageError(self.image, f"only {st.f_favail} inodes left on the image "
                             "cache's disk; unpacking stopped", blob=blob,
                             hint="free space (hypervm gc) or move HYPERVM_IMAGE_DIR")
        if free < self.limits.min_free_bytes:
            raise ImageError(self.image, f"only {_human(free)} left on the image cache's disk "
                             f"(reserve {_human(self.limits.min_free_bytes)}); unpacking "
                             "stopped", blob=blob,
                             hint="free space (hypervm gc) or move HYPERVM_IMAGE_DIR")


def _human(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class _HashingReader:
    def __init__(self, raw: BinaryIO, blob: str, budget: Budget, dest: Path) -> None:
        self._raw = raw
        self.hash = hashlib.sha256()
        self.size = 0
        self._blob, self._budget, self._dest = blob, budget, dest
        self._next_disk_check = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n if n >= 0 else 1 << 20)  # never the whole stream at once
        self.hash.update(data)
        self.size += len(data)
        self._budget.stream_bytes += len(data)
        self._budget.stream(self._blob, self.size, self._budget.stream_bytes)
        if self.size >= self._next_disk_check:
            self._budget.disk(self._blob, self._dest)
            self._next_disk_check = self.size + FREE_CHECK_EVERY
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def sniff_compression(image: str, blob: str, path: Path) -> str:
    """"gzip" or "" (plain tar), from the bytes: skopeo's docker-archive source labels plain
    tars as gzip, so the media type cannot be trusted."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:2] == GZIP_MAGIC:
        return "gzip"
    if magic == ZSTD_MAGIC:
        raise ImageError(image, "zstd-compressed layers are not supported", blob=blob,
                         hint="push the image with gzip layers")
    return ""


def unpack_layer(image: str, blob: str, path: Path, dest: Path,
                 budget: Budget | None = None) -> LayerInfo:
    """Unpack the layer blob at ``path`` into the existing empty directory ``dest``, within
    ``budget`` (the image's; default: a fresh one with the default limits)."""
    budget = budget or Budget(image)
    compression = sniff_compression(image, blob, path)
    with open(path, "rb") as raw:
        stream = gzip.GzipFile(fileobj=raw) if compression == "gzip" else raw
        reader = _HashingReader(stream, blob, budget, dest)  # type: ignore[arg-type]
        extractor = _Extractor(image, blob, dest, budget)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
                for member in tar:
                    extractor.count_entry()
                    extractor.add(member, tar.extractfile)
            reader.drain()
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise ImageError(image, f"layer is not a valid {compression or 'plain'} tar "
                             f"({e or type(e).__name__})", blob=blob,
                             hint="the layer is truncated or corrupt; rebuild or re-push it") from e
        except OSError as e:
            raise ImageError(image, f"cannot unpack layer: {e}", blob=blob) from e
        extractor.finish()
    info = extractor.info
    info.diff_id = "sha256:" + reader.hash.hexdigest()
    info.size = reader.size
    return info


def safe_name(name: str) -> str | None:
    """The normalised relative name, "" for the root, None if it is absolute or has ``..``."""
    if name.startswith("/"):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        return None
    return "/".join(parts)


def name_problem(name: str, *, link: bool = False) -> str | None:
    """Why a tar name (or, with ``link``, a symlink target) cannot be written, or None."""
    if "\x00" in name:
        return "has a NUL byte"
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) >= PATH_MAX:
        return f"is longer than {PATH_MAX - 1} bytes"
    if not link and any(len(part) > NAME_MAX for part in raw.split(b"/")):
        return f"has a component longer than {NAME_MAX} bytes"
    return None


class _Extractor:
    def __init__(self, image: str, blob: str, root: Path, budget: Budget) -> None:
        self.image, self.blob, self.root, self.budget = image, blob, root, budget
        self.entries = 0  # tar entries and the parent directories they imply
        self.file_bytes = 0
        os.chmod(root, 0o755)
        self.dirs: set[str] = {""}  # verified real directories (relative names)
        self.regular: set[str] = set()  # regular files of this layer (hardlink targets)
        self.real: set[str] = set()  # every non-whiteout entry of this layer
        self.dir_times: dict[str, float] = {}
        self.info = LayerInfo()

    def count_entry(self) -> None:
        self.entries += 1
        self.budget.entries(self.blob, self.entries)
        if self.entries % FREE_CHECK_EVERY_ENTRIES == 0:
            self.budget.disk(self.blob, self.root)

    def _reject(self, member: tarfile.TarInfo, why: str) -> ImageError:
        shown = member.name if len(member.name) <= 200 else member.name[:200] + "..."
        return ImageError(self.image, f"layer entry {shown!r} {why}; rejected",
                          blob=self.blob, hint="the layer is unsafe; rebuild it without that entry")

    def _path(self, name: str) -> Path:
        return self.root / name if name else self.root

    def _ensure_parent(self, member: tarfile.TarInfo, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub in self.dirs:
                continue
            path = self._path(sub)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                self.count_entry()  # an implied parent costs an inode like an entry
                os.mkdir(path, 0o755)
                self.dirs.add(sub)
                continue
            if stat.S_ISLNK(st.st_mode):
                raise self._reject(member, f"goes through the symlink {sub!r}")
            if not stat.S_ISDIR(st.st_mode):
                raise self._reject(member, f"goes through {sub!r}, which is not a directory")
            self.dirs.add(sub)

    def _clear(self, name: str, keep_dir: bool) -> None:
        """Remove what exists at ``name`` (unless it is a directory and ``keep_dir``)."""
        if not name:
            raise ImageError(self.image, "refusing to remove the layer's root", blob=self.blob)
        path = self._path(name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            shutil.rmtree(path)
            prefix = name + "/"
            for group in (self.dirs, self.regular, self.real):
                group.difference_update({n for n in group if n == name or n.startswith(prefix)})
            self.dir_times = {n: t for n, t in self.dir_times.items()
                              if n != name and not n.startswith(prefix)}
        else:
            path.unlink()
            self.regular.discard(name)

    def add(self, member: tarfile.TarInfo,
            extractfile: Callable[[tarfile.TarInfo], BinaryIO | None]) -> None:
        problem = name_problem(member.name)
        if problem is None and (member.issym() or member.islnk()):
            target_problem = name_problem(member.linkname, link=True)
            problem = target_problem and f"points to a target that {target_problem}"
        if problem:
            raise self._reject(member, problem)
        name = safe_name(member.name)
        if name is None:
            why = "is absolute" if member.name.startswith("/") else "has a '..' component"
            raise self._reject(member, why)
        if not name and not member.isdir():  # "." as a file or link would replace dest
            raise self._reject(member, "would replace the layer's root directory")
        if name:
            self._ensure_parent(member, name)
        base = name.rsplit("/", 1)[-1]
        parent = name.rsplit("/", 1)[0] if "/" in name else ""
        if base == OPAQUE_MARKER:
            os.setxattr(self._path(parent), OPAQUE_XATTR, b"y")
            self._hide_tracked(parent, opaque=True)
            return
        if base.startswith(".wh..wh."):
            return
        if base.startswith(WHITEOUT_PREFIX):
            hidden = base[len(WHITEOUT_PREFIX):]
            if hidden in ("", ".", ".."):  # "." or ".." would remove the parent or the root
                shown = repr(hidden) if hidden else "nothing"
                raise self._reject(member, f"is a whiteout of {shown}")
            target = (parent + "/" if parent else "") + hidden
            if target in self.real:  # a whiteout never hides an entry of its own layer
                return
            self._clear(target, keep_dir=False)
            os.mknod(self._path(target), stat.S_IFCHR | 0o600, os.makedev(0, 0))
            self._hide_tracked(target, opaque=False)
            return
        self._add_entry(member, name, extractfile)

    def _add_entry(self, member: tarfile.TarInfo, name: str,
                   extractfile: Callable[[tarfile.TarInfo], BinaryIO | None]) -> None:
        path = self._path(name)
        if member.ischr() or member.isblk():
            self.info.skipped_devices += 1
            log.debug("%s: skipping device node %s", self.blob, name)
            return
        if member.islnk():
            target = safe_name(member.linkname)
            if target is None or target not in self.regular:
                raise self._reject(member, f"is a hardlink to {member.linkname!r}, which is not "
                                   "a regular file earlier in this layer")
            if target == name:
                return
            self._clear(name, keep_dir=False)
            os.link(self._path(target), path, follow_symlinks=False)
            self.regular.add(name)
        elif member.isdir():
            if not name:
                self._meta(path, member, is_dir=True)
                self.dir_times[name] = member.mtime
                return
            self._clear(name, keep_dir=True)
            if not path.is_dir():
                os.mkdir(path, 0o700)
            self.dirs.add(name)
            self._meta(path, member, is_dir=True)
            self.dir_times[name] = member.mtime
        elif member.issym():
            self._clear(name, keep_dir=False)
            os.symlink(member.linkname, path)
            self._meta(path, member, is_link=True)
        elif member.isfifo():
            self._clear(name, keep_dir=False)
            os.mkfifo(path, 0o600)
            self._meta(path, member)
        elif member.isreg():
            self.file_bytes += member.size  # before writing: a sparse file's holes count too
            self.budget.files(self.blob, self.file_bytes, member.size)
            self._clear(name, keep_dir=False)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                source = extractfile(member)
                if source is not None:
                    shutil.copyfileobj(source, out, 1 << 20)
            self._meta(path, member)
            self.regular.add(name)
        else:
            log.debug("%s: skipping %s of tar type %r", self.blob, name, member.type)
            return
        self.real.add(name)
        if name in TRACKED_FILES:
            self._track(name, path)

    def _meta(self, path: Path, member: tarfile.TarInfo, *, is_dir: bool = False,
              is_link: bool = False) -> None:
        os.chown(path, member.uid, member.gid, follow_symlinks=False)
        if not is_link:  # chown clears setuid bits: set the mode after it
            os.chmod(path, member.mode & 0o7777)
        for key, value in member.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            attr = key[len("SCHILY.xattr."):]
            if attr.startswith("trusted.overlay."):
                log.warning("%s: dropping %s on %s (layers may not set overlay xattrs)",
                            self.blob, attr, member.name)
                continue
            raw = value.encode("utf-8", "surrogateescape")
            try:
                os.setxattr(path, attr, raw, follow_symlinks=False)
            except OSError as e:
                if is_link:  # most namespaces refuse xattrs on symlinks
                    log.debug("%s: xattr %s on symlink %s: %s", self.blob, attr, member.name, e)
                    continue
                raise
        if not is_dir:
            os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)

    def _track(self, name: str, path: Path) -> None:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > _MAX_TRACKED:
            self.info.files[name] = None
            return
        self.info.files[name] = path.read_bytes().decode("utf-8", "replace")

    def _hide_tracked(self, name: str, *, opaque: bool) -> None:
        """A whiteout (or opaque dir) hides the lower layers' copies of tracked files."""
        for tracked in TRACKED_FILES:
            inside = tracked.startswith(name + "/") if name else True
            if (tracked == name and not opaque) or inside:
                if tracked not in self.real:
                    self.info.files[tracked] = None

    def finish(self) -> None:
        for name in sorted(self.dir_times, key=lambda n: n.count("/"), reverse=True):
            path = self._path(name)
            if path.is_dir() and not path.is_symlink():
                os.utime(path, (self.dir_times[name], self.dir_times[name]))
