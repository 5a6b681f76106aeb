"""Check a fetched blob file against its descriptor: size first (cheap), then sha256."""

from __future__ import annotations

import hashlib
from pathlib import Path

from hypervm.errors import ImageError

from .manifest import Descriptor


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def verify_blob_file(image: str, path: Path, desc: Descriptor) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError as e:
        raise ImageError(image, "the source did not deliver this blob", blob=desc.digest) from e
    if size != desc.size:
        raise ImageError(image, f"blob is {size} bytes, the manifest says {desc.size}",
                         blob=desc.digest, hint="the source is corrupt or the transfer was cut")
    actual = file_digest(path)
    if actual != desc.digest:
        raise ImageError(image, f"blob digest mismatch: got {actual}", blob=desc.digest,
                         hint="the source is corrupt or was changed during the pull; retry")
