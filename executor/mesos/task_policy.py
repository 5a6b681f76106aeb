"""What a Mesos TaskInfo may ask of the host: the operator's policy, applied while parsing (pure).

Frameworks are tenants, not operators. Unless the operator says otherwise
(:class:`hypervm.config.MesosPolicy`):

- an image is a registry reference: ``docker-daemon:``, ``docker-archive:PATH`` and ``oci:PATH``
  would make root read the host's engine or any host file;
- a volume path never leaves its root: sandbox paths are relative without ``..``; HOST_PATH
  volumes (and the legacy absolute ``host_path``) are refused unless they lie under a prefix the
  operator allows. These checks are lexical; :mod:`executor.mesos.volume_paths` checks the resolved
  path again on the agent before anything is made or shared.
"""

from __future__ import annotations

import posixpath

from hypervm.config import MesosPolicy
from hypervm.errors import ImageError, InvalidSpec
from hypervm.imageref import RegistryRef, parse_reference

#: the transports of hypervm.imageref that read the host, not a registry
LOCAL_TRANSPORTS = ("docker-daemon:", "docker-archive:", "oci:")
#: the longest path we accept in a volume (Linux' PATH_MAX)
MAX_PATH = 4096


def check_image_source(ref: str, field: str, policy: MesosPolicy) -> None:
    """Refuse a local image source (engine, archive, layout) unless the operator allows them."""
    if policy.local_image_sources:
        return
    local = ref.strip().startswith(LOCAL_TRANSPORTS)  # refused without parsing: no stat()
    try:
        if not local and isinstance(parse_reference(ref), RegistryRef):
            return
    except ImageError as e:
        raise InvalidSpec(field, str(e)) from e
    raise InvalidSpec(field, f"{ref!r} is not a registry image: images from the host's "
                      "engine or files are not accepted from Mesos",
                      hint="push the image to a registry, or the operator sets "
                           "HYPERVM_MESOS_LOCAL_IMAGE_SOURCES=on")


def _clean(path: str, field: str) -> list[str]:
    if "\x00" in path or len(path) > MAX_PATH:
        raise InvalidSpec(field, "is not a valid path (NUL byte or longer than 4096)")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidSpec(field, "must not contain '..'")
    return parts


def sandbox_relative(path: str, field: str) -> str:
    """A path relative to a sandbox, normalised ("." for the sandbox itself); never absolute,
    never up."""
    if path.startswith("/"):
        raise InvalidSpec(field, "must be relative and stay inside the sandbox")
    return "/".join(_clean(path, field)) or "."


def under(path: str, prefix: str) -> bool:
    """``path`` is ``prefix`` or lies below it (both absolute and normalised)."""
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def host_path(path: str, field: str, policy: MesosPolicy) -> str:
    """An absolute host path under a prefix the operator allows, normalised."""
    if not path.startswith("/"):
        raise InvalidSpec(field, "must be absolute")
    normal = "/" + "/".join(_clean(path, field))
    if not any(under(normal, prefix) for prefix in policy.host_path_prefixes):
        allowed = ", ".join(policy.host_path_prefixes) or "none"
        raise InvalidSpec(field, f"{normal} is not under a host path the operator allows "
                          f"(allowed: {allowed})",
                          hint="use a SANDBOX_PATH volume, or the operator lists the directory "
                               "in HYPERVM_HOST_PATH_PREFIXES")
    return posixpath.normpath(normal)
