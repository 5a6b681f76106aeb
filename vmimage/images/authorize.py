"""May this tenant run this cached image? Ask the registry, with the tenant's credentials.

The image cache is shared by every tenant of the host: without a check, tenant B runs tenant
A's private image just by naming it once A pulled it. So a Mesos task's cache hit is
authorized by the registry: a manifest read (``skopeo inspect --raw``, no blob) of exactly the
cached digest, with the task's credentials (or none: public images serve everybody). A grant
is remembered for ``ttl`` seconds per (tenant, reference, digest, credential identity) in a
root-only directory beside the cache, so a burst of launches costs one registry round trip.
The CLI (the operator) is not checked: the host's own credentials pulled the cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from hypervm.errors import ImageError
from hypervm.frozen import frozen_dataclass
from hypervm.imageref import RegistryRef

from . import skopeo
from .credentials import ANONYMOUS, Credentials, identity

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 300.0
LEDGER_MODE = 0o700


@frozen_dataclass
class PullAuth:
    """Who pulls: the tenant (a Mesos role) and the credentials its task brought."""

    tenant: str
    credentials: Credentials | None = None


def grant_key(tenant: str, ref: str, digest: str, credential: str) -> str:
    """The ledger's name for one grant. Anonymous access is the same for every tenant."""
    who = "*" if credential == ANONYMOUS else tenant
    text = "\0".join((who, ref, digest, credential))
    return hashlib.sha256(text.encode()).hexdigest()


class Ledger:
    """Grants remembered as files ``<root>/<key>`` holding the grant time (``clock()``)."""

    def __init__(self, root: Path, ttl: float = DEFAULT_TTL_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.root, self.ttl, self.clock = root, ttl, clock

    def fresh(self, key: str) -> bool:
        try:
            granted = float((self.root / key).read_text())
        except (OSError, ValueError):
            return False
        return 0.0 <= self.clock() - granted < self.ttl

    def remember(self, key: str) -> None:
        if self.ttl <= 0:
            return
        try:
            self.root.mkdir(mode=LEDGER_MODE, parents=True, exist_ok=True)
            os.chmod(self.root, LEDGER_MODE)
            tmp = self.root / f".{key}.{os.getpid()}"
            tmp.write_text(repr(self.clock()))
            os.replace(tmp, self.root / key)
        except OSError as e:  # only costs a registry check next time
            log.warning("cannot remember an image authorization in %s: %s", self.root, e)

    def prune(self) -> None:
        """Forget expired grants (``hypervm gc``)."""
        if not self.root.is_dir():
            return
        for path in self.root.iterdir():
            if not self.fresh(path.name):
                path.unlink(missing_ok=True)


def granted(ledger: Ledger, ref: RegistryRef, digest: str, auth: PullAuth) -> bool:
    """``auth`` holds a fresh grant for the cached ``digest`` of ``ref``: no registry round
    trip (nor an authfile for it) is needed. A launch's cache hit asks this first."""
    key = grant_key(auth.tenant, str(ref), digest, identity(auth.credentials, ref.domain))
    return ledger.fresh(key)


def authorize(ledger: Ledger, ref: RegistryRef, digest: str, auth: PullAuth, *,
              insecure: bool, authfile: Path | None) -> None:
    """Return when ``auth`` may use the cached ``digest`` of ``ref``; else ImageError.

    ``authfile``: the containers-auth.json written for ``auth.credentials`` (sources.py).
    """
    display = str(ref)
    credential = identity(auth.credentials, ref.domain)
    key = grant_key(auth.tenant, display, digest, credential)
    if ledger.fresh(key):
        return
    pinned = f"docker://{ref.pinned(digest).repository}@{digest}"
    try:
        skopeo.inspect_raw(display, pinned, insecure=insecure, authfile=authfile)
    except ImageError as e:
        who = "anonymous access" if credential == ANONYMOUS else "the task's credentials"
        raise ImageError(display, f"cached, but the registry does not let tenant "
                         f"{auth.tenant!r} read it with {who}: {_reason(e)}",
                         hint="give the task the registry's credentials "
                              "(container.mesos.image.docker.config)") from e
    log.info("%s@%s: the registry authorizes tenant %r (%s)", display, digest, auth.tenant,
             "anonymous" if credential == ANONYMOUS else "credentials")
    ledger.remember(key)


def remember_pull(ledger: Ledger, ref: RegistryRef, digest: str, auth: PullAuth) -> None:
    """A pull with ``auth``'s credentials just read the manifest: that is a grant too."""
    ledger.remember(grant_key(auth.tenant, str(ref), digest,
                              identity(auth.credentials, ref.domain)))


def _reason(error: ImageError) -> str:
    text = str(error.args[0]) if error.args else ""  # the message without the hint
    where = f"{error.image} (blob {error.blob})" if error.blob else error.image
    text = text.removeprefix(f"{where}: ")
    # skopeo's own wording repeats the reference: keep what the registry said
    return text.rsplit(": ", 2)[-2] + ": " + text.rsplit(": ", 1)[-1] if text.count(": ") > 2 \
        else text
