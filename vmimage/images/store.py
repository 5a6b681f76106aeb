"""ImageStore: pull an image into the cache and hand out its read-only layer images.

A pull: manifest (by tag: one manifest GET; by digest and cached: nothing) → which layers the
cache lacks → lock those blobs (sorted, so two pulls never deadlock) → skopeo copies only them
into staging → verify digest and size of every blob → unpack, check the diff id →
erofs image → rename into the cache → image record → tag. Pulls hold the cache's ``gc`` lock
shared; gc takes it exclusively.

Whose pull: without a :class:`PullAuth` the operator's (the CLI, the warm pool: the host's
Docker credentials, every cached image usable); with one a tenant's (a Mesos task): its own
credentials only (the host's too if ``HostConfig.task_host_credentials``), and every cache hit
is authorized by the registry for that tenant first (:mod:`.authorize`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hypervm.config import HostConfig
from hypervm.errors import ImageError
from hypervm.imageref import RegistryRef, insecure_from_env, is_insecure, parse_reference
from vmimage import rootfs
from vmimage.images.credentials import HostCredentials

from .authorize import Ledger, PullAuth, authorize, granted, remember_pull
from .cache import Cache, ImageRecord, LockTimeout
from .config import TRACKED_FILES, ImageConfig, parse_config
from .config import resolve_user as resolve_user_spec
from .credentials import Credentials, NoCredentials
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
    from .gc import GCReport, SizeReport
    from .sources import Source
    from .unpack import Budget

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
PULL_POLICIES = ("missing", "always")


@dataclass(frozen=True)
class Image:
    """A resolved image: its reference, digest, layer images and config."""

    ref: str
    digest: str
    layers: tuple[Path, ...]
    config: ImageConfig


@dataclass(frozen=True)
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


def unique_layers(layers: tuple[Path, ...]) -> tuple[Path, ...]:
    """Each layer once, at its topmost place (old images repeat the empty layer): a layer also
    present higher up adds nothing below it, and overlayfs refuses a lowerdir given twice."""
    return tuple(reversed(dict.fromkeys(reversed(layers))))


class ImageStore:
    def __init__(self, cfg: HostConfig, insecure_registries: Iterable[str] = (),
                 progress: Progress | None = None) -> None:
        self.limits = cfg.image_limits
        self.cache = Cache(cfg.image_dir, lock_timeout_s=self.limits.lock_timeout_s)
        self.ledger = Ledger(cfg.image_dir / "grants", cfg.image_auth_ttl_s)
        self.task_host_credentials = cfg.task_host_credentials
        self.insecure_registries = tuple(insecure_registries)
        self._progress = progress
        # skopeo draws its own per-layer bars on a terminal; quiet (no progress): no bars
        self._tty = progress is not None and sys.stderr.isatty()

    @classmethod
    def from_env(cls, cfg: HostConfig, env: Mapping[str, str] | None = None, *,
                 insecure_registries: Iterable[str] = (),
                 progress: Progress | None = None) -> ImageStore:
        """A store honouring HYPERVM_INSECURE_REGISTRIES plus the given insecure hosts."""
        env = os.environ if env is None else env
        listed = insecure_from_env(env.get("HYPERVM_INSECURE_REGISTRIES"))
        return cls(cfg, (*listed, *insecure_registries), progress)

    def _say(self, message: str) -> None:
        if self._progress is not None:
            self._progress(message)
        else:
            log.info("%s", message)

    # -- public API ----------------------------------------------------------------------
    def pull(self, ref: str, auth: PullAuth | None = None) -> Image:
        """Pull ``ref``; ``auth``: a tenant's pull (see the module doc), None: the operator's."""
        parsed = parse_reference(ref)
        auth = self._effective(auth)
        self.cache.ensure()
        with self._locked(str(parsed), "gc", shared=True):
            if isinstance(parsed, RegistryRef) and parsed.digest:
                record = self.cache.image(parsed.digest)
                if record is not None:  # pinned and complete: no transfer
                    if auth is not None:
                        self._authorize(parsed, record.digest, auth)
                    self.cache.put_ref(str(parsed), record.digest)
                    return self._image(str(parsed), record)
            creds = auth.credentials if auth is not None else None
            from .sources import open_source  # deferred: a pull's only (issue 17: cache hits)

            with self.cache.staging() as staging, \
                    open_source(parsed, staging, self.insecure_registries, creds) as source:
                image = self._pull(source, staging)
            if auth is not None and isinstance(parsed, RegistryRef):
                remember_pull(self.ledger, parsed, image.digest, auth)
            return image

    def resolve(self, ref: str, policy: str = "missing", auth: PullAuth | None = None) -> Image:
        """The image to run for ``ref``. ``missing`` (Docker's default, and Mesos' for cached
        images): a registry ref pulled before is used from the cache (for a tenant's ``auth``
        once the registry authorizes it, no transfer); ``always``: pull (a tag is looked up
        again). Local sources are always read again."""
        if policy not in PULL_POLICIES:
            raise ImageError(ref, f"unknown pull policy {policy!r}",
                             hint=f"use one of {', '.join(PULL_POLICIES)}")
        parsed = parse_reference(ref)
        if policy == "missing" and isinstance(parsed, RegistryRef):
            cached = self.image(ref)
            if cached is not None:
                effective = self._effective(auth)
                if effective is not None:
                    self._authorize(parsed, cached.digest, effective)
                return cached
        return self.pull(ref, auth)

    def _effective(self, auth: PullAuth | None) -> PullAuth | None:
        """A tenant's pull with the credentials it really uses: its own, else the host's
        when the operator allows it, else none (anonymous)."""
        if auth is None or auth.credentials is not None:
            return auth
        creds: Credentials = NoCredentials()
        if self.task_host_credentials:
            creds = HostCredentials()
        return PullAuth(auth.tenant, creds)

    def _authorize(self, ref: RegistryRef, digest: str, auth: PullAuth) -> None:
        if granted(self.ledger, ref, digest, auth):
            return  # the common case of a launch: no staging dir, no authfile (~3 ms)
        insecure = is_insecure(ref, self.insecure_registries)
        from .sources import write_authfile  # deferred: see pull (cache hits import less)

        self.cache.ensure()
        with self.cache.staging() as staging:
            authfile = write_authfile(ref, staging / "auth.json", auth.credentials)
            authorize(self.ledger, ref, digest, auth, insecure=insecure, authfile=authfile)

    def image(self, ref: str) -> Image | None:
        """The cached image a ref was last pulled as, without any network access."""
        display = str(parse_reference(ref))
        digest = self.cache.ref_digest(display)
        record = self.cache.image(digest) if digest else None
        return self._image(display, record) if record else None

    def hold(self) -> contextlib.AbstractContextManager[None]:
        """Keep gc away while held: hold it from pull until the VM using the layers is
        registered as running (gc's ``in_use``), so no layer vanishes in between."""
        self.cache.ensure()
        return self.cache.lock("gc", shared=True)

    def resolve_user(self, image: Image, user_spec: str) -> tuple[int, int, tuple[int, ...]]:
        files = self._user_files(image)
        return resolve_user_spec(image.ref, user_spec, files.get("etc/passwd"),
                                 files.get("etc/group"))

    def gc(self, in_use: set[Path], keep_refs: Iterable[str] | None = None) -> GCReport:
        """Remove what no kept ref and no running VM (``in_use``: layer paths) needs;
        ``keep_refs=None`` keeps every tagged ref."""
        self.cache.ensure()
        kept = None if keep_refs is None else [str(parse_reference(r)) for r in keep_refs]
        self.ledger.prune()  # expired registry authorizations
        from .gc import collect  # deferred: gc's only (a cold run imports less, issue 17)

        return collect(self.cache, in_use, kept)

    def size_report(self) -> SizeReport:
        self.cache.ensure()
        from .gc import size_report  # deferred: gc's only (a cold run imports less)

        return size_report(self.cache)

    # -- the pull ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self, image: str, name: str, *, blob: str | None = None,
                shared: bool = False) -> Iterator[None]:
        """A cache lock, whose timeout is an ImageError naming the image and the blob."""
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(self.cache.lock(name, shared=shared))
            except LockTimeout as e:
                raise ImageError(image, str(e), blob=blob) from e
            yield

    def _check_manifest_limits(self, name: str, manifest: Manifest) -> None:
        """Refuse, before any transfer, what the manifest itself says is over a limit."""
        limits = self.limits
        if len(manifest.layers) > limits.max_layers:
            raise ImageError(name, f"the image has {len(manifest.layers)} layers, more than the "
                             f"limit of {limits.max_layers}", blob=manifest.digest,
                             hint="squash the image, or the operator raises "
                                  "HYPERVM_IMAGE_MAX_LAYERS")
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

    def _pull(self, source: Source, staging: Path) -> Image:
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
        return self._image(name, record)

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

    # -- helpers -------------------------------------------------------------------------
    def _image(self, ref: str, record: ImageRecord) -> Image:
        config_raw = self.cache.config(record.config)
        assert config_raw is not None  # cache.image() checked it
        parsed = parse_config(ref, record.config, config_raw)
        layers = unique_layers(tuple(self.cache.layer_path(d) for d in record.diff_ids))
        return Image(ref, record.digest, layers, parsed.config)

    def _user_files(self, image: Image) -> dict[str, str | None]:
        """/etc/passwd and /etc/group as the merged image sees them (topmost layer wins)."""
        found: dict[str, str | None] = {}
        for layer in reversed(image.layers):
            meta = self.cache.layer_meta("sha256:" + layer.name[: -len(".erofs")])
            for name, text in (meta.get("files") or {}).items():
                if name in TRACKED_FILES and name not in found:
                    found[name] = text
        return found
