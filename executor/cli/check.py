"""One line of ``hypervm doctor``: what was checked, whether it is fine, how to fix it."""

from __future__ import annotations

from hypervm.frozen import frozen_dataclass


@frozen_dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    #: works, but weaker than it should be (reported, not a failure)
    warn: bool = False
