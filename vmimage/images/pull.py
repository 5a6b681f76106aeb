"""One pull into the image cache (vmimage.images.store's ``pull``): the manifest (checked
against the limits before any transfer), the missing blobs through skopeo (verified, their
size watched), each layer unpacked, checked against the config's diff id and built as an erofs
image in staging, then everything moved into the cache at once.

A module of its own, imported by a pull only: a cold run of a cached image (a cache hit)
needs none of it before its VM is created (manifests' dataclasses, layers: issue 17).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hypervm.config import ImageLimits
from hypervm.errors import ImageError
from hypervm.frozen import frozen_dataclass
from hypervm.podspec import FEWER_LAYERS_HINT, MAX_ROOTFS_LAYERS
from vmimage import rootfs

from .cache import Cache, ImageRecord
from .config import parse_config
from .manifest import (
    DOCKER_MANIFEST,
    Descriptor,
    Manifest,
    check_digest,
    is_index,
    parse_manifest,
    select_platform,
    sha256_digest,
)

if TYPE_CHECKING:
    from .sources import Source
    from .unpack import Budget

Say = Callable[[str], None]
Locked = Callable[..., contextlib.AbstractContextManager[None]]


@frozen_dataclass
class _Built:
    """A layer verified and built in staging, not yet in the cache."""

    diff_id: str
    image: Path
    meta: dict[str, Any]


def _describe(blobs: list[Descriptor]) -> str:
    """The blobs a transfer fetches, for errors: the first digest (and how many more)."""
    if not blobs:
        return ""
    return blobs[0].digest + (f" and {len(blobs) - 1} more" if len(blobs) > 1 else "")


def _staged_bytes(root: Path) -> int:
    """Bytes of the regular files below ``root`` (links not followed; files may vanish)."""
    total = 0
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return 0
    for entry in entries:
        with contextlib.suppress(FileNotFoundError):
            if entry.is_dir(follow_symlinks=False):
                total += _staged_bytes(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
    return total


class Puller:
    """Pulls into ``cache`` within ``limits``; ``locked(image, name, blob=, shared=)``: the
    store's cache lock (its timeout an ImageError), ``say``: a progress line, ``progress``:
    the caller's progress callback (None: quiet), ``tty``: skopeo may draw its bars."""

    def __init__(self, cache: Cache, limits: ImageLimits, locked: Locked, say: Say,
                 progress: Say | None, *, tty: bool) -> None:
        self.cache = cache
        self.limits = limits
        self._locked = locked
        self._say = say
        self._progress = progress
        self._tty = tty

    def _check_manifest_limits(self, name: str, manifest: Manifest) -> None:
        """Refuse, before any transfer, what the manifest itself says is over a limit."""
        limits = self.limits
        if len(manifest.layers) > limits.max_layers:
            raise ImageError(name, f"the image has {len(manifest.layers)} layers, more than the "
                             f"limit of {limits.max_layers}", blob=manifest.digest,
                             hint="squash the image, or the operator raises "
                                  "HYPERVM_IMAGE_MAX_LAYERS")
        if len(manifest.layers) > MAX_ROOTFS_LAYERS:  # no VM's init could stack them
            raise ImageError(name, f"the image has {len(manifest.layers)} layers, more than the "
                             f"{MAX_ROOTFS_LAYERS} a container's root filesystem (rootfs.layers) "
                             "can have", blob=manifest.digest,
                             hint=FEWER_LAYERS_HINT)
        for desc in manifest.layers:
            if desc.size > limits.max_layer_bytes:
                raise ImageError(name, f"the layer is {desc.size} bytes compressed, more than "
                                 f"the limit of {limits.max_layer_bytes}", blob=desc.digest,
                                 hint="the operator raises HYPERVM_IMAGE_MAX_LAYER_BYTES")
        total = sum(d.size for d in manifest.layers)
        if total > limits.max_image_bytes:
            raise ImageError(name, f"the layers are {total} bytes compressed, more than the "
                             f"limit of {limits.max_image_bytes}", blob=manifest.digest,
                             hint="the operator raises HYPERVM_IMAGE_MAX_BYTES")

    def _manifest(self, source: Source) -> Manifest:
        from . import skopeo  # deferred: a pull's only (a cold run's cache hit imports less)

        name = source.display
        wanted = source.registry.digest if source.registry else None
        raw = skopeo.inspect_raw(name, source.transport, insecure=source.insecure,
                                 authfile=source.authfile)
        digest = sha256_digest(raw)
        if wanted:
            check_digest(name, "manifest", wanted, raw)
        if is_index(name, digest, raw):
            desc = select_platform(name, digest, raw)
            if source.registry is None:  # skopeo cannot address one manifest of a local list
                raise ImageError(name, "the reference is a manifest list; lists are read only "
                                 "from registries", blob=digest,
                                 hint=f"name the linux/amd64 image ({desc.digest}) by a tag "
                                 "of its own, or push the list to a registry")
            raw = skopeo.inspect_raw(name, source.pinned(desc.digest), insecure=source.insecure,
                                     authfile=source.authfile)
            check_digest(name, "manifest", desc.digest, raw)
            if len(raw) != desc.size:
                raise ImageError(name, f"manifest is {len(raw)} bytes, the list says {desc.size}",
                                 blob=desc.digest)
            digest = desc.digest
        return parse_manifest(name, digest, raw)

    def pull(self, source: Source, staging: Path) -> tuple[str, ImageRecord]:
        """Pull ``source`` into the cache (staging below ``staging``): the image's name and
        its cache record."""
        name = source.display
        manifest = self._manifest(source)
        self._check_manifest_limits(name, manifest)
        with self._locked(name, f"image-{manifest.digest.split(':')[1]}", blob=manifest.digest):
            record = self.cache.image(manifest.digest)
            if record is None:
                record = self._fetch(source, manifest, staging)
                self.cache.put_manifest(manifest.digest, manifest.raw)
                self.cache.put_image(record)  # last: the image is complete
        self.cache.put_ref(name, manifest.digest)
        self._say(f"{name}: {manifest.digest} ({len(record.diff_ids)} layers)")
        return name, record

    def _fetch(self, source: Source, manifest: Manifest, staging: Path) -> ImageRecord:
        name = source.display
        missing = [d for d in manifest.layers if self.cache.blob_diff_id(d.digest) is None]
        with contextlib.ExitStack() as locks:
            for blob in sorted({d.digest for d in missing}):  # sorted: no lock-order deadlock
                locks.enter_context(self._locked(name, f"blob-{blob.split(':')[1]}", blob=blob))
            missing = [d for d in manifest.layers if self.cache.blob_diff_id(d.digest) is None]
            config_raw = self.cache.config(manifest.config.digest)
            blob_dir = staging / "layout/blobs/sha256"
            if missing or config_raw is None:
                config_raw = self._transfer(source, manifest, missing, config_raw, blob_dir)
            parsed = parse_config(name, manifest.config.digest, config_raw)
            if len(parsed.diff_ids) != len(manifest.layers):
                raise ImageError(name, f"the config lists {len(parsed.diff_ids)} diff ids for "
                                 f"{len(manifest.layers)} layers", blob=manifest.config.digest)
            pending: dict[str, _Built] = {}
            from .unpack import Budget  # deferred: a pull's only (tarfile, gzip: issue 17)

            budget = Budget(name, self.limits)
            for index, (desc, diff_id) in enumerate(zip(manifest.layers, parsed.diff_ids,
                                                        strict=True)):
                known = self.cache.blob_diff_id(desc.digest)
                if known is not None and known != diff_id:
                    raise ImageError(name, f"layer {index} is {known}, the config says "
                                     f"{diff_id}", blob=desc.digest)
                if known is None and desc.digest not in pending:
                    pending[desc.digest] = self._build_layer(
                        name, index, len(manifest.layers), desc, diff_id, blob_dir, staging,
                        budget)
            # every layer verified and built: only now does anything enter the cache
            for blob, built in pending.items():
                self._commit_layer(blob, built)
            self.cache.put_config(manifest.config.digest, config_raw)
            return ImageRecord(manifest.digest, manifest.config.digest, parsed.diff_ids)

    def _transfer(self, source: Source, manifest: Manifest, missing: list[Descriptor],
                  config_raw: bytes | None, blob_dir: Path) -> bytes:
        """Fetch the missing blobs into ``blob_dir``; returns the verified config bytes."""
        # deferred: a pull's only (a cold run's cache hit skips their imports, issue 17)
        from . import skopeo
        from .pull_progress import LayerLines, both  # deferred (as skopeo)
        from .verify import verify_blob_file  # deferred (as skopeo)

        name = source.display
        pinned = source.pinned(manifest.digest)
        remote = source.registry is not None
        # skopeo's OCI destination rewrites Docker schema-2 configs: read the original instead
        if config_raw is None and remote and (manifest.media_type == DOCKER_MANIFEST
                                              or not missing):
            config_raw = skopeo.inspect_config(name, pinned, insecure=source.insecure,
                                               authfile=source.authfile)
            self._check_config(name, manifest, config_raw)
        if missing or config_raw is None:
            wanted = {d.digest for d in missing}
            total = sum(d.size for d in missing)
            self._say(f"{name}: fetching {len(wanted)} of {len(manifest.layers)} layers "
                      f"({total / 1e6:.1f} MB)")
            layout = blob_dir.parent.parent if remote else blob_dir
            # dir: copies every layer of a local source, the cached ones too
            copied = missing if remote else list(manifest.layers)
            watch = self._size_watch(name, layout, copied, manifest)
            lines = None
            if self._progress is not None and not (remote and self._tty):
                lines = LayerLines(name, blob_dir, copied, self._progress)
                watch = both(watch, lines)
            what = _describe(missing) or manifest.config.digest
            if remote:  # only the missing blobs cross the network
                skopeo.prepare_layout(layout, [d.digest for d in manifest.layers
                                               if d.digest not in wanted])
                skopeo.copy_blobs(name, pinned, layout, insecure=source.insecure,
                                  authfile=source.authfile, show_progress=self._tty,
                                  timeout=self.limits.pull_timeout_s, watch=watch, blob=what)
            else:  # local sources: dir: keeps every blob byte-identical (plain tars too)
                skopeo.copy_dir(name, pinned, blob_dir, timeout=self.limits.pull_timeout_s,
                                watch=watch, blob=what)
            if lines is not None:
                lines()
            for desc in missing:
                verify_blob_file(name, blob_dir / desc.hex, desc)
        if config_raw is None:
            path = blob_dir / manifest.config.hex
            if not path.is_file():
                raise ImageError(name, "the source did not deliver the image config",
                                 blob=manifest.config.digest)
            config_raw = path.read_bytes()
            self._check_config(name, manifest, config_raw)
        return config_raw

    @staticmethod
    def _size_watch(name: str, layout: Path, copied: list[Descriptor],
                    manifest: Manifest) -> Callable[[], None]:
        """Stops a copy whose files outgrow what the manifest declares for the ``copied``
        blobs (a source that streams without end would otherwise fill the cache's disk before
        any digest check); 1 MiB of slack for the manifest and layout files."""
        allowed = sum(d.size for d in copied) + manifest.config.size + (1 << 20)

        def watch() -> None:
            staged = _staged_bytes(layout)
            if staged > allowed:
                raise ImageError(name, f"the source sent {staged} bytes, more than the "
                                 f"{allowed} the manifest declares; stopped",
                                 blob=_describe(copied) or manifest.config.digest,
                                 hint="the source is broken or hostile")
        return watch

    @staticmethod
    def _check_config(name: str, manifest: Manifest, data: bytes) -> None:
        check_digest(name, "config", manifest.config.digest, data)
        if len(data) != manifest.config.size:
            raise ImageError(name, f"config is {len(data)} bytes, the manifest says "
                             f"{manifest.config.size}", blob=manifest.config.digest)

    def _build_layer(self, name: str, index: int, count: int, desc: Descriptor, diff_id: str,
                     blob_dir: Path, staging: Path, budget: Budget) -> _Built:
        """Unpack and check one layer, build its erofs image in ``staging``."""
        blob = blob_dir / desc.hex
        tree = staging / f"layer-{index}"
        tree.mkdir()
        from .unpack import unpack_layer  # deferred: a pull's only (see _fetch)

        info = unpack_layer(name, desc.digest, blob, tree, budget)
        if info.diff_id != diff_id:
            raise ImageError(name, f"layer {index} unpacks to {info.diff_id}, the config says "
                             f"{diff_id}", blob=desc.digest,
                             hint="the image is corrupt: rebuild or re-push it")
        image = staging / f"layer-{index}.erofs"
        rootfs.build_layer_image(tree, image)
        shutil.rmtree(tree, ignore_errors=True)
        blob.unlink()
        self._say(f"{name}: layer {index + 1}/{count} {desc.digest[:19]} unpacked "
                  f"({info.size / 1e6:.1f} MB)")
        meta = {"diff_id": diff_id, "size": info.size, "files": info.files,
                "skipped_devices": info.skipped_devices}
        return _Built(diff_id, image, meta)

    def _commit_layer(self, blob: str, built: _Built) -> None:
        if not self.cache.has_layer(built.diff_id):
            os.rename(built.image, self.cache.layer_path(built.diff_id))
            self.cache.put_layer_meta(built.diff_id, built.meta)
        self.cache.put_blob_diff_id(blob, built.diff_id)
