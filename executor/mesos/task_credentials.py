"""A task's own registry credentials: Mesos ``Image.Docker.config``, a Secret the framework sends
with the TaskInfo (``container.mesos.image.docker.config``).

Mesos' Secret: ``{"type": "VALUE", "value": {"data": base64(Docker config JSON)}}``; a
``REFERENCE`` secret needs the agent's secret resolver, which hypervm does not have. The pull
then uses these credentials and no others (the host's Docker config only when the operator
allows it, ``HYPERVM_TASK_HOST_CREDENTIALS=on``); see vmimage/images/authorize.py for how a
cached image is authorized per tenant.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from hypervm.errors import InvalidSpec
from vmimage.images.credentials import MAX_CONFIG_BYTES, TaskCredentials, parse_docker_config

_HINT = ('send {"type": "VALUE", "value": {"data": base64 of a Docker config JSON}}')


def image_credentials(task: Mapping[str, Any], where: str) -> TaskCredentials | None:
    """The credentials in ``task.container.mesos.image.docker.config``, or None."""
    container = task.get("container")
    if not isinstance(container, Mapping):
        return None
    mesos = container.get("mesos")
    image = mesos.get("image") if isinstance(mesos, Mapping) else None
    docker = image.get("docker") if isinstance(image, Mapping) else None
    if not isinstance(docker, Mapping) or docker.get("config") is None:
        return None
    at = f"{where}.container.mesos.image.docker.config"
    return parse_docker_config(secret_value(docker["config"], at), at)


def secret_value(secret: Any, where: str) -> bytes:
    """The bytes of a Mesos Secret of type VALUE; InvalidSpec naming the field otherwise."""
    if not isinstance(secret, Mapping):
        raise InvalidSpec(where, "is not a Secret object", hint=_HINT)
    kind = secret.get("type", "VALUE" if "value" in secret else None)
    if kind == "REFERENCE" or "reference" in secret:
        raise InvalidSpec(f"{where}.reference", "secret references cannot be resolved here "
                          "(the agent has no secret resolver for hypervm)", hint=_HINT)
    if kind != "VALUE":
        raise InvalidSpec(f"{where}.type", f"unknown secret type {kind!r}", hint=_HINT)
    value = secret.get("value")
    data = value.get("data") if isinstance(value, Mapping) else None
    if not isinstance(data, str):
        raise InvalidSpec(f"{where}.value.data", "is missing or not a string", hint=_HINT)
    if len(data) > MAX_CONFIG_BYTES * 4 // 3 + 4:
        raise InvalidSpec(f"{where}.value.data", "is too long",
                          hint=f"a Docker config of at most {MAX_CONFIG_BYTES} bytes")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidSpec(f"{where}.value.data", "is not base64", hint=_HINT) from e
