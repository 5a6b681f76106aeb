"""The on-disk, content-addressed image cache shared by every VM of the host.

Layout under ``HostConfig.image_dir`` (dirs 0755, files 0644: QEMU runs as libvirt-qemu)::

    layers/sha256/<diff id hex>.erofs   one read-only erofs image per layer (by uncompressed digest)
    layers/sha256/<diff id hex>.json    what unpacking learned (user database files, sizes)
    blobs/sha256/<blob hex>             index: compressed blob digest → diff id (no blob data)
    manifests/sha256/<hex>              raw manifests, by digest
    configs/sha256/<hex>                raw image configs, by digest
    images/sha256/<manifest hex>.json   a complete image: config digest + diff ids, written last
    refs/<sha256 of ref>.json           the tag index: ref → manifest digest
    locks/                              flock files: ``gc`` (shared by pulls), one per image/blob
    tmp/                                staging; renamed into place only after verification

Every entry is written to a temp name in its final directory and renamed, so a reader sees a
whole entry or none.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from hypervm.digest import sha256
from hypervm.errors import HostError
from hypervm.frozen import frozen_dataclass

#: typing.TYPE_CHECKING without importing typing (~3 ms of a cold run's start)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger(__name__)

SUBDIRS = ("layers/sha256", "blobs/sha256", "manifests/sha256", "configs/sha256",
           "images/sha256", "refs", "locks", "tmp")


def _hex(digest: str) -> str:
    return digest.split(":", 1)[1]


@frozen_dataclass
class ImageRecord:
    """A cached image: its manifest digest, config blob and layer diff ids."""

    digest: str
    config: str
    diff_ids: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "config": self.config, "diff_ids": list(self.diff_ids)}


class LockTimeout(HostError):
    """A cache lock stayed taken longer than the wait allowed (a stalled pull, or gc)."""

    def __init__(self, name: str, seconds: float) -> None:
        self.name, self.seconds = name, seconds
        super().__init__(f"the image cache's {name!r} lock stayed taken by another pull or gc "
                         f"for {seconds:g} s; gave up",
                         hint="another transfer is stalled or still running: retry later, or "
                              "the operator raises HYPERVM_IMAGE_LOCK_TIMEOUT")


class Cache:
    def __init__(self, root: Path, lock_timeout_s: float | None = None) -> None:
        self.root = root
        #: how long lock() waits for a lock another holder keeps; None: for ever
        self.lock_timeout_s = lock_timeout_s

    def ensure(self) -> None:
        for sub in ("",) + SUBDIRS:
            path = self.root / sub
            path.mkdir(mode=0o755, parents=True, exist_ok=True)
        for sub in ("", "layers", "layers/sha256"):  # QEMU must traverse to the layers
            os.chmod(self.root / sub, 0o755)
        for parent in self.root.parents:
            if parent.stat().st_mode & 0o001 == 0:
                log.warning("%s is not traversable by other users: QEMU (libvirt-qemu) will "
                            "not be able to open the layer images under %s", parent, self.root)
                break

    # -- paths ---------------------------------------------------------------------------
    def layer_path(self, diff_id: str) -> Path:
        return self.root / "layers/sha256" / f"{_hex(diff_id)}.erofs"

    def layer_meta_path(self, diff_id: str) -> Path:
        return self.root / "layers/sha256" / f"{_hex(diff_id)}.json"

    def _blob_index_path(self, blob: str) -> Path:
        return self.root / "blobs/sha256" / _hex(blob)

    def _manifest_path(self, digest: str) -> Path:
        return self.root / "manifests/sha256" / _hex(digest)

    def _config_path(self, digest: str) -> Path:
        return self.root / "configs/sha256" / _hex(digest)

    def _image_path(self, digest: str) -> Path:
        return self.root / "images/sha256" / f"{_hex(digest)}.json"

    def _ref_path(self, ref: str) -> Path:
        return self.root / "refs" / f"{sha256(ref.encode()).hexdigest()[:40]}.json"

    # -- atomic writes -------------------------------------------------------------------
    def write_atomic(self, path: Path, data: bytes) -> None:
        import tempfile  # deferred: writes only; a cold run's cache hit skips it (issue 17)

        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            os.rename(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _write_json(self, path: Path, doc: Any) -> None:
        self.write_atomic(path, json.dumps(doc, sort_keys=True).encode())

    @staticmethod
    def _read_json(path: Path) -> Any:
        try:
            return json.loads(path.read_bytes())
        except (FileNotFoundError, ValueError):
            return None

    # -- entries -------------------------------------------------------------------------
    def has_layer(self, diff_id: str) -> bool:
        return self.layer_path(diff_id).is_file() and self.layer_meta_path(diff_id).is_file()

    def layer_meta(self, diff_id: str) -> dict[str, Any]:
        return self._read_json(self.layer_meta_path(diff_id)) or {}

    def put_layer_meta(self, diff_id: str, meta: dict[str, Any]) -> None:
        self._write_json(self.layer_meta_path(diff_id), meta)

    def blob_diff_id(self, blob: str) -> str | None:
        """The diff id of a compressed blob already unpacked into a layer image, if any."""
        try:
            diff_id = self._blob_index_path(blob).read_text().strip()
        except FileNotFoundError:
            return None
        return diff_id if diff_id.startswith("sha256:") and self.has_layer(diff_id) else None

    def put_blob_diff_id(self, blob: str, diff_id: str) -> None:
        self.write_atomic(self._blob_index_path(blob), diff_id.encode())

    def manifest(self, digest: str) -> bytes | None:
        with contextlib.suppress(FileNotFoundError):
            return self._manifest_path(digest).read_bytes()
        return None

    def put_manifest(self, digest: str, data: bytes) -> None:
        self.write_atomic(self._manifest_path(digest), data)

    def config(self, digest: str) -> bytes | None:
        with contextlib.suppress(FileNotFoundError):
            return self._config_path(digest).read_bytes()
        return None

    def put_config(self, digest: str, data: bytes) -> None:
        self.write_atomic(self._config_path(digest), data)

    def image(self, digest: str) -> ImageRecord | None:
        doc = self._read_json(self._image_path(digest))
        if not isinstance(doc, dict):
            return None
        record = ImageRecord(doc["digest"], doc["config"], tuple(doc["diff_ids"]))
        if self.config(record.config) is None:
            return None
        if not all(self.has_layer(d) for d in record.diff_ids):
            return None
        return record

    def put_image(self, record: ImageRecord) -> None:
        self._write_json(self._image_path(record.digest), record.to_json())

    def put_ref(self, ref: str, digest: str) -> None:
        self._write_json(self._ref_path(ref), {"ref": ref, "digest": digest,
                                               "pulled": int(time.time())})

    def ref_digest(self, ref: str) -> str | None:
        doc = self._read_json(self._ref_path(ref))
        return doc.get("digest") if isinstance(doc, dict) else None

    def refs(self) -> dict[str, str]:
        """Every tagged ref → manifest digest."""
        found = {}
        for path in sorted((self.root / "refs").glob("*.json")):
            doc = self._read_json(path)
            if isinstance(doc, dict) and "ref" in doc and "digest" in doc:
                found[doc["ref"]] = doc["digest"]
        return found

    def remove_ref(self, ref: str) -> None:
        self._ref_path(ref).unlink(missing_ok=True)

    def images(self) -> list[ImageRecord]:
        records = []
        for path in sorted((self.root / "images/sha256").glob("*.json")):
            record = self.image("sha256:" + path.name[: -len(".json")])
            if record is not None:
                records.append(record)
        return records

    # -- locks and staging ---------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, name: str, *, shared: bool = False) -> Iterator[None]:
        """An flock held for the block: per process *and* per open file, so threads work too."""
        fd = os.open(self.root / "locks" / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._acquire(fd, name, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _acquire(self, fd: int, name: str, op: int) -> None:
        """flock ``fd``, waiting at most ``lock_timeout_s`` (LockTimeout after that)."""
        if self.lock_timeout_s is None:
            fcntl.flock(fd, op)
            return
        try:
            fcntl.flock(fd, op | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass  # held: wait for it below
        # deferred: only a held lock is waited for; an uncontended one (every cold run's cache
        # hit) takes no tenacity import (issue 17: a cold run's imports before its VM)
        import tenacity

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(BlockingIOError),
            wait=tenacity.wait_exponential(multiplier=0.02, max=1.0),
            stop=tenacity.stop_after_delay(self.lock_timeout_s), reraise=True)
        try:
            for attempt in retrying:
                with attempt:
                    fcntl.flock(fd, op | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise LockTimeout(name, self.lock_timeout_s) from e

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        import shutil  # deferred: a pull only (see write_atomic)
        import tempfile  # deferred: a pull only (see write_atomic)

        path = Path(tempfile.mkdtemp(prefix="pull-", dir=self.root / "tmp"))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    # -- listing -------------------------------------------------------------------------
    def entries(self) -> list[Path]:
        """Every cache entry (files outside locks/ and tmp/), for reports and tests."""
        return sorted(p for p in self.root.rglob("*")
                      if p.is_file() and p.relative_to(self.root).parts[0] not in ("locks", "tmp"))
