"""hypervm.digest: CPython's own SHA-256 for small inputs (no OpenSSL load before a cold run's
createXML), hashlib's from LARGE on; the digests are hashlib's either way."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from hypervm import digest
from vmimage.kernel import store


@pytest.mark.parametrize("size", [0, 1, 55, 64, 1000, digest.LARGE - 1, digest.LARGE,
                                  digest.LARGE + 1, 3 * digest.LARGE])
def test_the_digest_is_hashlibs(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert digest.sha256(data).hexdigest() == hashlib.sha256(data).hexdigest()
    assert digest.sha256(data).digest() == hashlib.sha256(data).digest()


def test_a_small_input_does_not_load_openssl() -> None:
    code = ("import sys; from hypervm.digest import sha256; sha256(b'x' * 1000).hexdigest(); "
            "print('hashlib' in sys.modules, '_hashlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[2]).stdout.split()
    assert out == ["False", "False"]


def test_a_large_input_takes_hashlibs() -> None:
    code = ("import sys; from hypervm.digest import LARGE, sha256; sha256(bytes(LARGE)); "
            "print('_hashlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[2]).stdout.split()
    assert out == ["True"]


def _cache_key_before(*parts: bytes | str) -> str:
    """vmimage.kernel.store.cache_key as it was (hashlib, one update a part): the caches'
    keys must not move."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()[:store.KEY_LENGTH]


@pytest.mark.parametrize("parts", [(), ("a",), ("ab", "c"), ("a", "bc"), (b"\x00" * 70000, "k"),
                                   (bytes(digest.LARGE), "kernel", b"x")])
def test_the_cache_keys_do_not_move(parts: tuple[bytes | str, ...]) -> None:
    assert store.cache_key(*parts) == _cache_key_before(*parts)
