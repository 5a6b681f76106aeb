"""Manifests, indexes and their digests: parse and check what a source returned (pure).

Docker schema 2 and OCI v1 are accepted; manifest lists / OCI indexes are resolved to
linux/amd64. Nothing here trusts a registry: digests are recomputed from the bytes.
"""

from __future__ import annotations

import hashlib
from typing import Any

from hypervm.errors import ImageError
from hypervm.frozen import frozen_dataclass
from hypervm.imageref import DIGEST_RE

from .config import load_json

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
INDEX_TYPES = (DOCKER_LIST, OCI_INDEX)
MANIFEST_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST)

#: layer media types → compression ("gzip" or "" for a plain tar)
LAYER_TYPES = {
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar": "",
    "application/vnd.docker.image.rootfs.diff.tar": "",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}
PLATFORM = ("linux", "amd64")


@frozen_dataclass
class Descriptor:
    """An OCI descriptor: media type, digest and size of a blob."""

    media_type: str
    digest: str
    size: int

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]


@frozen_dataclass
class Manifest:
    """An image manifest for our platform: its config and layer descriptors."""

    digest: str
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    raw: bytes


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(image: str, what: str, expected: str, data: bytes) -> None:
    actual = sha256_digest(data)
    if actual != expected:
        raise ImageError(image, f"{what} digest mismatch: got {actual}", blob=expected,
                         hint="the source is corrupt or was changed during the pull; retry")


def media_type_of(doc: dict[str, Any]) -> str:
    media_type = doc.get("mediaType")
    if isinstance(media_type, str):
        return media_type
    # OCI allows omitting mediaType: tell an index from a manifest by its fields
    return OCI_INDEX if "manifests" in doc else OCI_MANIFEST


def is_index(image: str, blob: str, data: bytes) -> bool:
    return media_type_of(load_json(image, "manifest", blob, data)) in INDEX_TYPES


def _descriptor(image: str, blob: str, where: str, raw: Any) -> Descriptor:
    if not isinstance(raw, dict):
        raise ImageError(image, f"manifest {where} is not an object", blob=blob)
    digest, size = raw.get("digest"), raw.get("size")
    # whole: it names a blob file of the host (pull.py)
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        raise ImageError(image, f"manifest {where} has no sha256 digest", blob=blob)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageError(image, f"manifest {where} has no valid size", blob=digest)
    return Descriptor(str(raw.get("mediaType", "")), digest, size)


def select_platform(image: str, blob: str, data: bytes) -> Descriptor:
    """From a manifest list / OCI index, the linux/amd64 image manifest."""
    doc = load_json(image, "manifest list", blob, data)
    entries = doc.get("manifests")
    if not isinstance(entries, list):
        raise ImageError(image, "manifest list has no manifests", blob=blob)
    found = []
    for i, entry in enumerate(entries):
        desc = _descriptor(image, blob, f"manifests[{i}]", entry)
        platform = entry.get("platform") or {}
        found.append(f"{platform.get('os')}/{platform.get('architecture')}")
        if (platform.get("os"), platform.get("architecture")) == PLATFORM:
            if desc.media_type and desc.media_type not in MANIFEST_TYPES:
                continue
            return desc
    raise ImageError(image, f"no linux/amd64 image in the manifest list (has {', '.join(found)})",
                     blob=blob, hint="HyperVMs run linux/amd64 images only")


def parse_manifest(image: str, digest: str, data: bytes) -> Manifest:
    doc = load_json(image, "manifest", digest, data)
    media_type = media_type_of(doc)
    if media_type not in MANIFEST_TYPES or doc.get("schemaVersion") != 2:
        raise ImageError(image, f"unsupported manifest type {media_type!r} "
                         f"(schemaVersion {doc.get('schemaVersion')!r})", blob=digest,
                         hint="push the image as Docker schema 2 or OCI")
    config = _descriptor(image, digest, "config", doc.get("config"))
    raw_layers = doc.get("layers")
    if not isinstance(raw_layers, list):
        raise ImageError(image, "manifest has no layers list", blob=digest)
    layers = tuple(_descriptor(image, digest, f"layers[{i}]", raw)
                   for i, raw in enumerate(raw_layers))
    for layer in layers:
        if layer.media_type not in LAYER_TYPES:
            raise ImageError(image, f"unsupported layer type {layer.media_type!r}",
                             blob=layer.digest, hint="layers must be tar or tar+gzip")
    return Manifest(digest, media_type, config, layers, data)
