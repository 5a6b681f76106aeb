"""Tenants: who may call the API, their Mesos role and their quota (a YAML or JSON file).

The file holds only SHA-256 hashes of the tokens (``token_sha256``); ``hypervm-scheduler
hash-token`` prints one. A plaintext ``token`` is refused so that no secret sits in the file.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from hypervm.errors import InvalidSpec
from hypervm.frozen import frozen_dataclass
from scheduler.errors import ConfigError

#: matched whole (fullmatch: ``^…$`` with ``match`` let a trailing newline through)
_ID_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?")
_ROLE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_HEX_RE = re.compile(r"[0-9a-f]{64}")
_QUOTA_KEYS = ("cpus", "mem", "instances")


@frozen_dataclass
class Quota:
    cpus: float
    mem: float
    instances: int


@frozen_dataclass
class Tenant:
    id: str
    role: str
    token_sha256: str
    quota: Quota
    #: may act on the scheduler itself, not only on its own workloads (``DELETE /v2/leader``)
    operator: bool = False


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Tenants:
    """The tenants of one scheduler, looked up by token (constant-time compare) or role."""

    def __init__(self, tenants: Iterable[Tenant]) -> None:
        self.all = tuple(tenants)
        self.by_role = {t.role: t for t in self.all}

    def authenticate(self, token: str) -> Tenant | None:
        digest = hash_token(token)
        found = None
        for tenant in self.all:
            if hmac.compare_digest(tenant.token_sha256, digest):
                found = tenant
        return found

    @property
    def roles(self) -> list[str]:
        return [t.role for t in self.all]


def parse_tenants(data: Any) -> Tenants:
    """A ``{"tenants": [...]}`` mapping → Tenants; InvalidSpec names the bad field."""
    if not isinstance(data, Mapping) or not isinstance(data.get("tenants"), list):
        raise InvalidSpec("tenants", "the file must hold a list under 'tenants'")
    tenants = [_parse_tenant(item, f"tenants[{i}]") for i, item in enumerate(data["tenants"])]
    for key in ("id", "role", "token_sha256"):
        seen: set[str] = set()
        for i, tenant in enumerate(tenants):
            value = getattr(tenant, key)
            if value in seen:
                raise InvalidSpec(f"tenants[{i}].{key}", f"{value!r} is used by another tenant")
            seen.add(value)
    return Tenants(tenants)


def _parse_tenant(item: Any, where: str) -> Tenant:
    if not isinstance(item, Mapping):
        raise InvalidSpec(where, "must be a mapping")
    unknown = set(item) - {"id", "role", "token_sha256", "token", "quota", "operator"}
    if unknown:
        raise InvalidSpec(f"{where}.{sorted(unknown)[0]}", "unknown field",
                          hint="allowed: id, role, token_sha256, quota, operator")
    if "token" in item:
        raise InvalidSpec(f"{where}.token", "plaintext tokens are not accepted",
                          hint="store token_sha256 (hypervm-scheduler hash-token TOKEN)")
    tid = item.get("id")
    if not isinstance(tid, str) or not _ID_RE.fullmatch(tid):
        raise InvalidSpec(f"{where}.id", f"{tid!r} is not a valid id",
                          hint="lowercase letters, digits and '-', at most 32")
    role = item.get("role", tid)
    if not isinstance(role, str) or not _ROLE_RE.fullmatch(role) or role in (".", ".."):
        raise InvalidSpec(f"{where}.role", f"{role!r} is not a valid Mesos role")
    digest = item.get("token_sha256")
    if not isinstance(digest, str) or not _HEX_RE.fullmatch(digest):
        raise InvalidSpec(f"{where}.token_sha256", "must be 64 lowercase hex digits")
    operator = item.get("operator", False)
    if not isinstance(operator, bool):
        raise InvalidSpec(f"{where}.operator", f"{operator!r} must be true or false")
    return Tenant(tid, role, digest, _parse_quota(item.get("quota"), f"{where}.quota"),
                  operator)


def _parse_quota(item: Any, where: str) -> Quota:
    if not isinstance(item, Mapping):
        raise InvalidSpec(where, "must be a mapping with cpus, mem and instances")
    values: dict[str, float] = {}
    for key in _QUOTA_KEYS:
        value = item.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise InvalidSpec(f"{where}.{key}", f"{value!r} must be a number >= 0")
        values[key] = value
    unknown = set(item) - set(_QUOTA_KEYS)
    if unknown:
        raise InvalidSpec(f"{where}.{sorted(unknown)[0]}", "unknown quota",
                          hint="allowed: cpus, mem, instances")
    return Quota(float(values["cpus"]), float(values["mem"]), int(values["instances"]))


def load_tenants(path: Path) -> Tenants:
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read the tenants file {path}: {e}") from e
    try:
        return parse_tenants(data)
    except InvalidSpec as e:
        raise ConfigError(f"{path}: {e}") from e
