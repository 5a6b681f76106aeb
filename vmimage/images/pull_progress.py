"""Per-layer progress of a pull as plain lines (a log, a pipe, a terminal without skopeo's
bars): a line each time one of the fetched layers is complete in the copy's blob directory."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from .manifest import Descriptor


class LayerLines:
    """Called while a copy runs (and once after it): reports each layer that has arrived."""

    def __init__(self, name: str, blob_dir: Path, layers: Sequence[Descriptor],
                 say: Callable[[str], None]) -> None:
        self.name = name
        self.blob_dir = blob_dir
        self.pending = {d.digest: d for d in layers}
        self.total = len(self.pending)
        self.say = say

    def __call__(self) -> None:
        for digest, desc in list(self.pending.items()):
            path = self.blob_dir / desc.hex
            try:
                size = path.stat().st_size
            except OSError:
                continue
            if size == desc.size:
                del self.pending[digest]
                done = self.total - len(self.pending)
                self.say(f"{self.name}: layer {done} of {self.total} fetched "
                         f"({digest[:19]}, {desc.size / 1e6:.1f} MB)")


def both(first: Callable[[], None], second: Callable[[], None] | None) -> Callable[[], None]:
    def call() -> None:
        first()
        if second is not None:
            second()
    return call
