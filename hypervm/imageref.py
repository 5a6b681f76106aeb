"""Image references: what the user typed → where the image comes from (pure).

Accepted forms (the transports skopeo knows, with Docker's defaults for bare names)::

    busybox                         docker.io/library/busybox:latest
    localhost:5000/team/app:1.2     a registry reference (``docker://`` may be prefixed)
    name@sha256:<64 hex>            pinned by manifest digest
    docker-daemon:name:tag          an image in a Docker-compatible engine (DOCKER_HOST)
    docker-archive:/path/file.tar   a ``docker save`` archive
    oci:/path/layout[:tag]          an OCI image layout directory
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from pathlib import Path

from hypervm.errors import ImageError
from hypervm.frozen import frozen_dataclass

DEFAULT_DOMAIN = "docker.io"
DEFAULT_TAG = "latest"
#: each matched whole (fullmatch: ``^…$`` with ``match`` would let a trailing newline through)
_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
#: a sha256 content digest (images, layers, blobs), matched whole (fullmatch) wherever it names
#: a file of the host's cache
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_DOMAIN_RE = re.compile(r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?")


@frozen_dataclass
class RegistryRef:
    """An image in a registry: domain, repository path, tag and/or digest."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def repository(self) -> str:
        return f"{self.domain}/{self.path}"

    @property
    def host(self) -> str:
        """The domain without its port (``[::1]`` for IPv6)."""
        if self.domain.startswith("["):
            return self.domain[: self.domain.index("]") + 1]
        return self.domain.rsplit(":", 1)[0] if ":" in self.domain else self.domain

    def __str__(self) -> str:
        if self.digest:
            return f"{self.repository}@{self.digest}"
        return f"{self.repository}:{self.tag or DEFAULT_TAG}"

    def pinned(self, digest: str) -> RegistryRef:
        return RegistryRef(self.domain, self.path, self.tag, digest)


@frozen_dataclass
class DaemonRef:
    """An image of the local Docker daemon (``docker-daemon:NAME:TAG``)."""

    name: str

    def __str__(self) -> str:
        return f"docker-daemon:{self.name}"


@frozen_dataclass
class ArchiveRef:
    """An image in a ``docker save`` archive (``docker-archive:FILE``)."""

    path: Path

    def __str__(self) -> str:
        return f"docker-archive:{self.path}"


@frozen_dataclass
class LayoutRef:
    """An image in an OCI layout directory (``oci:DIR[:TAG]``)."""

    path: Path
    tag: str | None = None

    def __str__(self) -> str:
        return f"oci:{self.path}" + (f":{self.tag}" if self.tag else "")


ImageRef = RegistryRef | DaemonRef | ArchiveRef | LayoutRef


def parse_reference(text: str) -> ImageRef:
    """Parse what the user typed; raise ImageError naming the reference and the fix."""
    text = text.strip()
    if not text:
        raise ImageError("''", "the image reference is empty",
                         hint="give e.g. busybox:latest or localhost:5000/name:tag")
    if text.startswith("docker-daemon:"):
        name = text[len("docker-daemon:"):]
        if not name:
            raise ImageError(text, "docker-daemon: needs an image name",
                             hint="e.g. docker-daemon:busybox:latest")
        return DaemonRef(name if ":" in name.rsplit("/", 1)[-1] or "@" in name
                         else f"{name}:{DEFAULT_TAG}")
    if text.startswith("docker-archive:"):
        path = text[len("docker-archive:"):]
        if not path:
            raise ImageError(text, "docker-archive: needs a file",
                             hint="e.g. docker-archive:/tmp/image.tar")
        return ArchiveRef(Path(path).absolute())
    if text.startswith("oci:"):
        return _parse_layout(text)
    if text.startswith("docker://"):
        text = text[len("docker://"):]
    return parse_registry_ref(text)


def _parse_layout(text: str) -> LayoutRef:
    rest = text[len("oci:"):]
    if not rest:
        raise ImageError(text, "oci: needs a directory", hint="e.g. oci:/tmp/layout:tag")
    path, tag = rest, None
    if ":" in rest and not Path(rest).is_dir():
        path, tag = rest.rsplit(":", 1)
        if not _TAG_RE.fullmatch(tag):
            raise ImageError(text, f"{tag!r} is not a valid tag")
    return LayoutRef(Path(path).absolute(), tag)


def parse_registry_ref(text: str) -> RegistryRef:
    original = text
    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not DIGEST_RE.fullmatch(digest):
            raise ImageError(original, f"{digest!r} is not a sha256 digest",
                             hint="use name@sha256:<64 lowercase hex digits>")
    tag = None
    last = text.rsplit("/", 1)[-1]
    if ":" in last:
        text, tag = text.rsplit(":", 1)
        if not _TAG_RE.fullmatch(tag):
            raise ImageError(original, f"{tag!r} is not a valid tag",
                             hint="tags are [A-Za-z0-9_.-], at most 128, not starting with . or -")
    first, _, remainder = text.partition("/")
    if remainder and ("." in first or ":" in first or first == "localhost"
                      or first.startswith("[")):
        domain, path = first, remainder
        if not _DOMAIN_RE.fullmatch(domain):
            raise ImageError(original, f"{domain!r} is not a valid registry host")
    else:
        domain, path = DEFAULT_DOMAIN, text
    if domain in ("index.docker.io", "registry-1.docker.io"):
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = f"library/{path}"
    for component in path.split("/"):
        if not _COMPONENT_RE.fullmatch(component):
            raise ImageError(original, f"{component!r} is not a valid repository name component",
                             hint="repository names are lowercase letters, digits and . _ -")
    if digest is None and tag is None:
        tag = DEFAULT_TAG
    return RegistryRef(domain, path, tag, digest)


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_insecure(ref: RegistryRef, insecure_registries: Iterable[str]) -> bool:
    """Plain HTTP (and unverified TLS) only for listed hosts and for loopback registries."""
    if is_loopback(ref.host):
        return True
    listed = {entry.strip().lower() for entry in insecure_registries if entry.strip()}
    return ref.domain.lower() in listed or ref.host.lower() in listed


def insecure_from_env(value: str | None) -> tuple[str, ...]:
    """HYPERVM_INSECURE_REGISTRIES: comma- or space-separated ``host[:port]`` entries."""
    if not value:
        return ()
    return tuple(item for item in re.split(r"[,\s]+", value) if item)
