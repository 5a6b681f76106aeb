"""Fallback guest kernel: the host distro's kernel plus the modules the guest needs."""

from __future__ import annotations

from executor.config import HostConfig
from executor.errors import HostError


def find_distro_kernel(cfg: HostConfig):  # placeholder, replaced below
    return None


def ensure_distro_kernel(cfg: HostConfig):
    raise HostError("distro kernel fallback not implemented yet")
