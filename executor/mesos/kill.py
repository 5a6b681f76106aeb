"""Bounds on a kill: how long a framework may make a task's VM linger, and when a kill stops
asking the guest and destroys the VM.

A kill is SIGTERM, then SIGKILL after the grace period; both are requests to the guest init,
which is the tenant's (the guest kernel is theirs): a guest that never answers would keep its VM
until the executor shuts down. So ``escalation_s`` after the SIGKILL request the VM is destroyed
and the task reported TASK_KILLED. A framework's grace period is capped at ``max_grace_s``
(Marathon's ``taskKillGracePeriodSeconds`` has no maximum).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from hypervm.errors import InvalidSpec
from hypervm.frozen import frozen_dataclass

DEFAULT_MAX_GRACE_S = 300.0
DEFAULT_ESCALATION_S = 5.0
MAX_GRACE_ENV = "HYPERVM_MAX_KILL_GRACE"
ESCALATION_ENV = "HYPERVM_KILL_ESCALATION"


@frozen_dataclass
class KillLimits:
    max_grace_s: float = DEFAULT_MAX_GRACE_S
    escalation_s: float = DEFAULT_ESCALATION_S

    def grace(self, requested: float) -> float:
        """The grace period to use for ``requested``: within 0..max_grace_s."""
        return min(max(0.0, requested), self.max_grace_s)


#: the limits when the operator sets none
DEFAULT_LIMITS = KillLimits()


def kill_limits_from_env(env: Mapping[str, str]) -> KillLimits:
    """KillLimits from HYPERVM_MAX_KILL_GRACE / HYPERVM_KILL_ESCALATION (seconds)."""
    values = []
    for name, default in ((MAX_GRACE_ENV, DEFAULT_MAX_GRACE_S),
                          (ESCALATION_ENV, DEFAULT_ESCALATION_S)):
        text = env.get(name, "")
        try:
            value = float(text) if text else default
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value >= 0):
            raise InvalidSpec(name, f"{text!r} is not a number of seconds >= 0")
        values.append(value)
    return KillLimits(max_grace_s=values[0], escalation_s=values[1])
