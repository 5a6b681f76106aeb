"""Where an image comes from → a source skopeo can read (side effects: auth file, engine export).

- registry refs: ``docker://`` with plain HTTP/unverified TLS only for loopback and listed hosts,
  credentials of the pull's holder (:mod:`.credentials`: the host's Docker config for the
  operator, the task's own for a Mesos task), written into a one-registry auth file;
- ``docker-daemon:``: exported through the Docker Engine API (docker-py ``image.save()``) into
  the pull's staging dir, then read as a docker-archive;
- ``docker-archive:`` and ``oci:``: read in place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from hypervm.errors import ImageError
from hypervm.frozen import frozen_dataclass
from hypervm.imageref import ArchiveRef, DaemonRef, ImageRef, LayoutRef, RegistryRef, is_insecure

from .credentials import Credentials, HostCredentials

log = logging.getLogger(__name__)


@frozen_dataclass
class Source:
    """Where and how skopeo reads an image reference."""

    #: the reference as the user should see it in messages and in ``hypervm images``
    display: str
    #: what skopeo reads for the reference as given (tag or digest)
    transport: str
    insecure: bool = False
    authfile: Path | None = None
    registry: RegistryRef | None = None

    def pinned(self, digest: str) -> str:
        """The skopeo source for exactly this manifest digest."""
        if self.registry is not None:
            pinned = self.registry.pinned(digest)
            return f"docker://{pinned.repository}@{digest}"
        return self.transport


@contextlib.contextmanager
def open_source(ref: ImageRef, staging: Path, insecure_registries: Iterable[str] = (),
                credentials: Credentials | None = None) -> Iterator[Source]:
    """``credentials``: whose registry credentials a registry ref is read with (default: the
    host's Docker config: the operator's pulls)."""
    if isinstance(ref, RegistryRef):
        insecure = is_insecure(ref, insecure_registries)
        authfile = write_authfile(ref, staging / "auth.json", credentials)
        transport = f"docker://{ref}"
        yield Source(str(ref), transport, insecure, authfile, ref)
    elif isinstance(ref, ArchiveRef):
        if not ref.path.is_file():
            raise ImageError(str(ref), f"{ref.path} is not a file",
                             hint="give the path of a `docker save` archive")
        yield Source(str(ref), f"docker-archive:{ref.path}")
    elif isinstance(ref, LayoutRef):
        if not (ref.path / "index.json").is_file():
            raise ImageError(str(ref), f"{ref.path} is not an OCI image layout (no index.json)")
        yield Source(str(ref), str(ref))
    elif isinstance(ref, DaemonRef):
        archive = export_from_engine(ref, staging / "engine.tar")
        yield Source(str(ref), f"docker-archive:{archive}")
    else:  # pragma: no cover - the union is exhaustive
        raise TypeError(ref)


def write_authfile(ref: RegistryRef, path: Path,
                   credentials: Credentials | None = None) -> Path | None:
    """A containers-auth.json with ``credentials``' entry for this registry, never the
    holder's other registries. Default (None): the host's Docker config, and no file when it
    has nothing for the registry (skopeo then looks in its own default places, as the
    operator expects). Given credentials always get a file, empty when they hold nothing for
    the registry: skopeo would otherwise read the host's auth files for a tenant."""
    creds = HostCredentials() if credentials is None else credentials
    entry = creds.entry_for(ref.domain)
    if not entry and credentials is None:
        return None
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"auths": {ref.domain: entry} if entry else {}}, out)
    log.debug("using %s credentials for %s", creds.kind if entry else "no", ref.domain)
    return path


def export_from_engine(ref: DaemonRef, dest: Path) -> Path:
    """``docker save`` through the Engine API (DOCKER_HOST or the default socket)."""
    # optional at run time: only docker-daemon: sources need docker-py (~0.2 s to import)
    import docker
    import requests  # comes with docker-py

    image = str(ref)
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        raise ImageError(image, "no Docker-compatible engine: DOCKER_HOST is unset and "
                         "/var/run/docker.sock does not exist",
                         hint="set DOCKER_HOST=unix:///path/to/engine.sock")
    try:
        client = docker.from_env()
        try:
            found = client.images.get(ref.name)
            with open(dest, "wb") as out:
                for chunk in found.save(named=True):
                    out.write(chunk)
        finally:
            client.close()
    except docker.errors.ImageNotFound as e:
        raise ImageError(image, f"the engine has no image {ref.name!r}",
                         hint="check `docker images` / `podman images`") from e
    except (docker.errors.DockerException, requests.RequestException, OSError) as e:
        raise ImageError(image, f"cannot export the image from the engine: {e}",
                         hint="check DOCKER_HOST and that the engine is running") from e
    log.info("exported %s from the engine (%d bytes)", ref.name, dest.stat().st_size)
    return dest
