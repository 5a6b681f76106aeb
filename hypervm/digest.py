"""SHA-256 of the small values a cold ``hypervm run`` hashes before its VM is created (the
VM's MAC, an image reference's cache path, the kernel, QEMU and initrd cache keys) without
loading OpenSSL.

``hashlib`` imports ``_hashlib`` at its own import, which loads OpenSSL's libcrypto: ~2.3 ms
of every cold run's CLI before its createXML on this host's CPU (issue 17/18), for a few
hundred bytes hashed (and the guest init, ~190 KB). CPython's own SHA-256 (``_sha256``;
``_sha2`` from 3.12) is the same function, slower per byte (~3.6 ms a MiB vs OpenSSL's
~0.6 here): below :data:`LARGE` it is taken, from there on (or when this Python lacks it)
``hashlib``'s. The digests are the same either way (tests/unit/test_digest.py).
"""

from __future__ import annotations

#: typing.TYPE_CHECKING without importing typing (a cold run's CLI imports this module)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: from this many bytes, OpenSSL's SHA-256 (its load included) is the faster one
LARGE = 512 << 10


def _builtin_sha256() -> Any:
    """CPython's own SHA-256 constructor (None: this build has none)."""
    try:
        import _sha256  # optional dependency: CPython ≤ 3.11 has it

        return _sha256.sha256
    except ImportError:  # pragma: no cover - the interpreter's build
        pass
    try:
        import _sha2  # type: ignore[import-not-found]  # optional dependency: CPython ≥ 3.12

        return _sha2.sha256
    except ImportError:  # pragma: no cover - the interpreter's build
        return None


_builtin = _builtin_sha256()


def sha256(data: bytes) -> Any:
    """A SHA-256 hash object of ``data`` (``hexdigest()``, ``digest()``, as
    ``hashlib.sha256(data)``'s)."""
    if _builtin is None or len(data) >= LARGE:
        # deferred: loads OpenSSL (~2.3 ms), worth it for large inputs only (module docstring)
        import hashlib

        return hashlib.sha256(data)
    return _builtin(data)
