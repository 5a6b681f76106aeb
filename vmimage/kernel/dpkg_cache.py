"""dpkg-query's answers kept between processes while dpkg's database is unchanged.

Every cold boot looks its kernel and QEMU up by package version (vmimage.boot): one
``dpkg-query`` per process, ~15 ms of a ``hypervm run`` before its VM is created (fork, exec,
parsing dpkg's 1 MB status file). Its answers change only when dpkg's database does, so they
are kept in a small root-only file (``<run dir>/dpkg-fields.json``) under the identity of that
database: the inode, size and mtime of ``/var/lib/dpkg/status`` (dpkg replaces it by a rename
on every change) and the mtime of ``/var/lib/dpkg/updates`` (its journal of changes not yet
folded into the status file, which dpkg-query also reads). Any other identity, an unreadable
or malformed file: ask dpkg again. Only the host writes the file (its run directory is root's).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

DPKG_DIR = Path("/var/lib/dpkg")
CACHE_NAME = "dpkg-fields.json"
#: bounds on what is read back: a handful of (package, field) pairs is all we ever ask
MAX_BYTES = 64 * 1024
MAX_ENTRIES = 64

Fields = dict[tuple[str, str], "str | None"]


def database_identity(dpkg_dir: Path = DPKG_DIR) -> str | None:
    """What changes whenever dpkg's answers may: None when the database cannot be seen."""
    try:
        status = (dpkg_dir / "status").stat()
        updates = (dpkg_dir / "updates").stat()
    except OSError:
        return None
    return (f"{status.st_dev}:{status.st_ino}:{status.st_size}:{status.st_mtime_ns}:"
            f"{updates.st_mtime_ns}")


def _key(package: str, field: str) -> str:
    return f"{package}\t{field}"


def load(cache: Path, identity: str) -> Fields:
    """The (package, field) → value pairs cached under ``identity`` (empty when none)."""
    try:
        with cache.open("rb") as f:
            data = json.loads(f.read(MAX_BYTES + 1))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("database") != identity:
        return {}
    fields = data.get("fields")
    if not isinstance(fields, dict) or len(fields) > MAX_ENTRIES:
        return {}
    out: Fields = {}
    for key, value in fields.items():
        package, tab, field = key.partition("\t")
        if tab and (value is None or isinstance(value, str)):
            out[(package, field)] = value
    return out


def save(cache: Path, identity: str, fields: Fields) -> None:
    """Keep ``fields`` under ``identity`` (atomically); a failure only costs a query later."""
    pairs = dict(list(fields.items())[:MAX_ENTRIES])
    data = {"database": identity, "fields": {_key(p, f): v for (p, f), v in pairs.items()}}
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data) + "\n")
        tmp.replace(cache)
    except OSError as e:
        log.debug("cannot keep dpkg's answers in %s: %s", cache, e)
        tmp.unlink(missing_ok=True)


def cached_fields(cache: Path, wanted: Sequence[tuple[str, str]], identity: str | None
                  ) -> Fields:
    """Those of ``wanted`` the cache holds for this database (none without an identity)."""
    if identity is None:
        return {}
    held = load(cache, identity)
    return {w: held[w] for w in wanted if w in held}
