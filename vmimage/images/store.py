"""ImageStore: pull an image into the cache and hand out its read-only layer images.

A pull (vmimage.images.pull): manifest (by tag: one manifest GET; by digest and cached:
nothing) → which layers the cache lacks → lock those blobs (sorted, so two pulls never
deadlock) → skopeo copies only them into staging → verify digest and size of every blob →
unpack, check the diff id → erofs image → rename into the cache → image record → tag. Pulls
hold the cache's ``gc`` lock shared; gc takes it exclusively.

Whose pull: without a :class:`PullAuth` the operator's (the CLI, the warm pool: the host's
Docker credentials, every cached image usable); with one a tenant's (a Mesos task): its own
credentials only (the host's too if ``HostConfig.task_host_credentials``), and every cache hit
is authorized by the registry for that tenant first (:mod:`.authorize`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from hypervm.config import HostConfig
from hypervm.errors import ImageError
from hypervm.frozen import frozen_dataclass
from hypervm.imageref import RegistryRef, insecure_from_env, is_insecure, parse_reference

from .cache import Cache, ImageRecord, LockTimeout
from .config import TRACKED_FILES, ImageConfig, parse_config
from .config import resolve_user as resolve_user_spec

#: typing.TYPE_CHECKING without importing typing (~3 ms of a cold run's start)
TYPE_CHECKING = False

if TYPE_CHECKING:
    from .authorize import Ledger, PullAuth
    from .gc import GCReport, SizeReport

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
PULL_POLICIES = ("missing", "always")


@frozen_dataclass
class Image:
    """A resolved image: its reference, digest, layer images and config."""

    ref: str
    digest: str
    layers: tuple[Path, ...]
    config: ImageConfig


def unique_layers(layers: tuple[Path, ...]) -> tuple[Path, ...]:
    """Each layer once, at its topmost place (old images repeat the empty layer): a layer also
    present higher up adds nothing below it, and overlayfs refuses a lowerdir given twice."""
    return tuple(reversed(dict.fromkeys(reversed(layers))))


class ImageStore:
    def __init__(self, cfg: HostConfig, insecure_registries: Iterable[str] = (),
                 progress: Progress | None = None) -> None:
        self.limits = cfg.image_limits
        self.cache = Cache(cfg.image_dir, lock_timeout_s=self.limits.lock_timeout_s)
        self._ledger_at = (cfg.image_dir / "grants", cfg.image_auth_ttl_s)
        self.task_host_credentials = cfg.task_host_credentials
        self.insecure_registries = tuple(insecure_registries)
        self._progress = progress
        # skopeo draws its own per-layer bars on a terminal; quiet (no progress): no bars
        self._tty = progress is not None and sys.stderr.isatty()

    @functools.cached_property
    def ledger(self) -> Ledger:
        """The tenants' grants (:mod:`.authorize`), made at a tenant's first pull or hit."""
        # deferred: only a tenant's pull checks grants; authorize and credentials (skopeo,
        # base64, two dataclasses) are ~4 ms of every operator's cold run (issue 17)
        from .authorize import Ledger

        return Ledger(*self._ledger_at)

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
            # deferred: a pull's only (the manifests, blobs and layers; the sources): a cold
            # run's cache hit imports neither before createXML (~3 ms, issue 17)
            from .pull import Puller
            from .sources import open_source  # deferred: see above

            puller = Puller(self.cache, self.limits, self._locked, self._say,
                            self._progress, tty=self._tty)
            with self.cache.staging() as staging, \
                    open_source(parsed, staging, self.insecure_registries, creds) as source:
                image = self._image(*puller.pull(source, staging))
            if auth is not None and isinstance(parsed, RegistryRef):
                from .authorize import remember_pull  # deferred: a tenant's only (see ledger)

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
        # deferred: a tenant's pull only (see ledger)
        from .authorize import PullAuth
        from .credentials import Credentials, HostCredentials, NoCredentials  # see above

        creds: Credentials = NoCredentials()
        if self.task_host_credentials:
            creds = HostCredentials()
        return PullAuth(auth.tenant, creds)

    def _authorize(self, ref: RegistryRef, digest: str, auth: PullAuth) -> None:
        from .authorize import authorize, granted  # deferred: a tenant's only (see ledger)

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

    # -- locks ---------------------------------------------------------------------------
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
