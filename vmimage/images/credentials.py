"""Whose registry credentials a pull uses, and the one entry a registry gets.

Two kinds of holder:

- :class:`HostCredentials`: the host's Docker config (and its credential helpers), read by
  docker-py. The operator's: the CLI and the warm pool use it; Mesos tasks only when the
  operator allows it (``HYPERVM_TASK_HOST_CREDENTIALS=on``).
- :class:`TaskCredentials`: a Docker config JSON a framework sends with a task (Mesos
  ``Image.Docker.config``, a Secret). Only its ``auths`` entries count: ``credsStore`` and
  ``credHelpers`` would make the host run programs a tenant names.

:meth:`Credentials.identity` names a credential without revealing it (a digest of the entry),
so that an authorization can be remembered per credential (:mod:`.authorize`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import field
from typing import Any, Protocol

from hypervm.errors import InvalidSpec
from hypervm.frozen import frozen_dataclass

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
#: a Docker config a task sends is small; a bigger one is an attack on the executor's memory
MAX_CONFIG_BYTES = 64 * 1024
MAX_REGISTRIES = 64


class Credentials(Protocol):
    #: for logs and messages: "task" or "host"
    kind: str

    def entry_for(self, domain: str) -> dict[str, str] | None:
        """The containers-auth.json entry (``auth`` and/or ``identitytoken``) for a registry
        domain (``registry.example.com``, ``127.0.0.1:5000``, ``docker.io``), or None."""


def identity(creds: Credentials | None, domain: str) -> str:
    """A stable name of the credential ``creds`` hold for ``domain`` that reveals nothing of it:
    ``anonymous``, or ``sha256:<hex>`` of the entry."""
    entry = creds.entry_for(domain) if creds is not None else None
    if not entry:
        return ANONYMOUS
    canonical = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


def _entry(creds: Mapping[str, Any]) -> dict[str, str] | None:
    """A containers-auth.json entry from docker-py's resolved auth config."""
    user = creds.get("username") or creds.get("Username") or ""
    password = creds.get("password") or creds.get("Password") or ""
    entry: dict[str, str] = {}
    if user or password:
        entry["auth"] = base64.b64encode(f"{user}:{password}".encode()).decode()
    token = creds.get("IdentityToken") or creds.get("identitytoken")
    if token:
        entry["identitytoken"] = str(token)
    return entry or None


class NoCredentials:
    """Anonymous access: what a task without credentials of its own gets."""

    kind = "no"

    def entry_for(self, domain: str) -> dict[str, str] | None:
        return None


class HostCredentials:
    """The host's Docker config (DOCKER_CONFIG or ~/.docker/config.json, helpers included)."""

    kind = "host"

    def entry_for(self, domain: str) -> dict[str, str] | None:
        try:
            from docker import auth  # optional at run time (~0.2 s): the host's Docker config
        except ImportError:  # pragma: no cover - docker is an install requirement
            return None
        try:
            creds = auth.resolve_authconfig(auth.load_config(), registry=domain)
        except Exception as e:  # credential helpers fail in many ways: say so, then go anonymous
            log.warning("cannot read Docker credentials for %s: %s", domain, e)
            return None
        return _entry(creds) if creds else None


@frozen_dataclass
class TaskCredentials:
    """The ``auths`` of a Docker config a task brought (see :func:`parse_docker_config`)."""

    #: docker-py's parsed ``auths``: registry key as written -> {username, password, ...}
    auths: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    kind: str = "task"

    def entry_for(self, domain: str) -> dict[str, str] | None:
        from docker import auth  # optional at run time (~0.2 s): a task's Docker config

        # only auths: docker-py would run credsStore/credHelpers programs otherwise
        config = auth.AuthConfig({"auths": dict(self.auths)})
        creds = auth.resolve_authconfig(config, registry=domain)
        return _entry(creds) if creds else None

    def __repr__(self) -> str:  # never print a secret
        return f"TaskCredentials(registries={sorted(self.auths)})"


def parse_docker_config(data: bytes, where: str) -> TaskCredentials:
    """A Docker config JSON (``{"auths": {"host": {"auth": "base64(user:pw)"}}}``) sent with a
    task; InvalidSpec naming ``where`` when it is not one. Entries without usable credentials
    are dropped; ``credsStore``/``credHelpers`` are ignored (never run for a tenant)."""
    hint = 'send a Docker config JSON: {"auths": {"REGISTRY": {"auth": "base64(user:password)"}}}'
    if len(data) > MAX_CONFIG_BYTES:
        raise InvalidSpec(where, f"is {len(data)} bytes, more than {MAX_CONFIG_BYTES}", hint=hint)
    try:
        config = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidSpec(where, f"is not JSON ({e.__class__.__name__})", hint=hint) from e
    if not isinstance(config, dict) or not isinstance(config.get("auths", {}), dict):
        raise InvalidSpec(where, "is not a Docker config (no auths object)", hint=hint)
    if config.keys() & {"credsStore", "credHelpers"}:
        log.warning("%s: credsStore/credHelpers ignored: a task's credentials are only its "
                    "auths entries", where)
    auths = config.get("auths", {})
    if len(auths) > MAX_REGISTRIES:
        raise InvalidSpec(f"{where}.auths", f"names {len(auths)} registries, more than "
                          f"{MAX_REGISTRIES}", hint=hint)
    parsed: dict[str, dict[str, Any]] = {}
    for registry, entry in auths.items():
        at = f"{where}.auths[{registry!r}]"
        if not isinstance(entry, dict):
            raise InvalidSpec(at, "is not an object", hint=hint)
        parsed[registry] = _parse_entry(entry, at, hint)
    return TaskCredentials({k: v for k, v in parsed.items() if v})


def _parse_entry(entry: Mapping[str, Any], at: str, hint: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("username", "password", "identitytoken", "auth"):
        value = entry.get(key)
        if value is not None and not isinstance(value, str):
            raise InvalidSpec(f"{at}.{key}", "is not a string", hint=hint)
    if entry.get("auth"):
        try:
            user, sep, password = base64.b64decode(entry["auth"], validate=True).decode() \
                .partition(":")
        except (binascii.Error, UnicodeDecodeError) as e:
            raise InvalidSpec(f"{at}.auth", "is not base64 of user:password", hint=hint) from e
        if not sep:
            raise InvalidSpec(f"{at}.auth", "is not base64 of user:password", hint=hint)
        out.update(username=user, password=password)
    elif entry.get("username") or entry.get("password"):
        out.update(username=entry.get("username", ""), password=entry.get("password", ""))
    if entry.get("identitytoken"):
        out["IdentityToken"] = entry["identitytoken"]
    return out
