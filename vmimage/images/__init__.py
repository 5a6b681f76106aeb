"""Docker/OCI images → a shared, content-addressed cache of read-only erofs layer images.

Public API: :class:`ImageStore` (``pull``, ``image``, ``resolve_user``, ``gc``,
``size_report``), :class:`Image` and :class:`ImageConfig`. See store.py for the pull, cache.py
for the on-disk layout, unpack.py for the unpack policy, skopeo.py for why skopeo.
"""

from .config import ImageConfig
from .gc import GCReport, SizeReport
from .store import Image, ImageStore

__all__ = ["GCReport", "Image", "ImageConfig", "ImageStore", "SizeReport"]
