"""Docker/OCI images → a shared, content-addressed cache of read-only erofs layer images.

Public API: :class:`ImageStore` (``pull``, ``image``, ``resolve_user``, ``gc``,
``size_report``), :class:`Image` and :class:`ImageConfig`. See store.py for the pull, cache.py
for the on-disk layout, unpack.py for the unpack policy, skopeo.py for why skopeo.
"""

from __future__ import annotations

from .config import ImageConfig
from .store import Image, ImageStore

#: typing.TYPE_CHECKING without importing typing (~3 ms of a cold run's start)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .gc import GCReport, SizeReport

__all__ = ["GCReport", "Image", "ImageConfig", "ImageStore", "SizeReport"]


def __getattr__(name: str) -> Any:
    """GCReport and SizeReport on first use: gc is ``hypervm gc``'s, and a cold ``hypervm run``
    (whose image is a cache hit) leaves it unimported (issue 17)."""
    if name in ("GCReport", "SizeReport"):
        # deferred: see the docstring
        from . import gc

        return getattr(gc, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
