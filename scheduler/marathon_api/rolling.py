"""The next step of a rolling upgrade, as Marathon's ``upgradeStrategy`` defines it. Pure.

``minimumHealthCapacity`` m: at least ``ceil(N × m)`` instances (old ones, or new ones that are
ready: running and, with a health check, healthy) stay up while old ones are replaced;
``maximumOverCapacity`` o: at most ``floor(N × (1 + o))`` instances exist at once (old, new and
those being killed). When the two bounds leave no room to move (m = 1, o = 0), one old instance
is killed first, as Marathon does.
"""

from __future__ import annotations

import math
from typing import Any

from hypervm.frozen import frozen_dataclass

DEFAULT_STRATEGY = {"minimumHealthCapacity": 1.0, "maximumOverCapacity": 1.0}


@frozen_dataclass
class Inst:
    idx: int
    ready: bool


@frozen_dataclass
class Step:
    #: old instances (idx) to remove now
    kill: tuple[int, ...]
    #: how many new instances to add now
    launch: int


def strategy(definition: dict[str, Any]) -> tuple[float, float]:
    given = {**DEFAULT_STRATEGY, **(definition.get("upgradeStrategy") or {})}
    return float(given["minimumHealthCapacity"]), float(given["maximumOverCapacity"])


def bounds(target: int, min_health: float, over: float) -> tuple[int, int]:
    """(instances that must stay up, instances that may exist at once)."""
    min_up = math.ceil(target * min_health - 1e-9)
    max_total = max(math.floor(target * (1 + over) + 1e-9), target)
    return min_up, max_total


def next_step(target: int, min_health: float, over: float, old: list[Inst], new: list[Inst],
              dying: int) -> Step:
    """``old``/``new``: the live (not removing) instances; ``dying``: instances being killed."""
    min_up, max_total = bounds(target, min_health, over)
    new_ready = sum(i.ready for i in new)
    # old ones that are not ready (crashed, pending) go first: they serve nobody
    order = sorted(old, key=lambda i: (i.ready, -i.idx))
    room = max(0, len(old) + new_ready - min_up)
    kill = [i.idx for i in order[:room]]
    total = len(old) + len(new) + dying  # the killed ones still hold their resources
    launch = max(0, min(target - len(new), max_total - total))
    if not kill and not launch and old and len(new) < target and not dying \
            and new_ready == len(new):
        # no room either way (e.g. m = 1, o = 0): make room by killing one old instance
        kill = [order[0].idx]
    return Step(tuple(kill), launch)


def done(target: int, old: list[Inst], new: list[Inst], dying: int) -> bool:
    return not old and not dying and len(new) == target and all(i.ready for i in new)
