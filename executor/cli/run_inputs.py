"""What ``hypervm run`` takes from its user, parsed as docker does: volumes, environment,
CPUs and memory; and the image, as ``--pull`` says. Pure apart from reading the host paths and
files the user names, and the image cache.

For the CLI the operator is the user: any existing host directory may be shared (unlike a Mesos
HOST_PATH volume, which must lie under HYPERVM_HOST_PATH_PREFIXES), resolved with ``realpath``
so the share is the directory the user meant, whatever links lead to it.
"""

from __future__ import annotations

import math
import os
import posixpath
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from executor.launcher import Launcher
from executor.volume_access import check_reachable
from hypervm.errors import ImageError, InvalidSpec
from hypervm.imageref import RegistryRef, parse_reference
from hypervm.podspec import Mount, Resources
from vmimage.images.store import Image

#: matched whole (fullmatch: ``-e "KEY\n=v"`` passed ``^…$``), sizes of ASCII digits only
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_MEMORY = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", re.IGNORECASE | re.ASCII)
_MIB = {"k": 1 / 1024, "": 1, "m": 1, "g": 1024, "t": 1024 * 1024}


def parse_volume(spec: str) -> Mount:
    """``HOST:CONTAINER[:ro|rw]`` → a 9p Mount of the real host directory."""
    parts = spec.split(":")
    if len(parts) == 3 and parts[2] in ("ro", "rw"):
        host, dest, mode = parts
    elif len(parts) == 2:
        (host, dest), mode = parts, "rw"
    else:
        raise InvalidSpec("--volume", f"{spec!r} is not HOST:CONTAINER[:ro]",
                          hint="e.g. -v /srv/data:/data:ro")
    if not host.startswith("/") and not host.startswith("."):
        raise InvalidSpec("--volume", f"{host!r} is not a host path",
                          hint="name a host directory by its path (/srv/data or ./data); "
                               "named volumes are not supported")
    if not dest.startswith("/") or "\x00" in dest or ".." in dest.split("/"):
        raise InvalidSpec("--volume", f"{dest!r} is not an absolute container path",
                          hint="e.g. -v /srv/data:/data")
    real = os.path.realpath(host)
    if not os.path.isdir(real):
        what = "does not exist" if not os.path.exists(real) else "is not a directory"
        raise InvalidSpec("--volume", f"{host} {what} on this host",
                          hint="share an existing directory")
    check_reachable(Path(real))
    return Mount(type="9p", destination=posixpath.normpath(dest), source=Path(real),
                 readonly=mode == "ro")


def volumes(specs: Iterable[str]) -> tuple[Mount, ...]:
    mounts = tuple(parse_volume(s) for s in specs)
    seen: set[str] = set()
    for m in mounts:
        if m.destination in seen:
            raise InvalidSpec("--volume", f"{m.destination} is mounted twice")
        seen.add(m.destination)
    return mounts


def env_items(items: Iterable[str], environ: Mapping[str, str]) -> list[str]:
    """``-e KEY=VALUE`` as given; ``-e KEY`` takes KEY's value from ``environ`` (skipped when
    KEY is unset there, as docker does)."""
    out = []
    for item in items:
        key, eq, _ = item.partition("=")
        if not key or not _ENV_KEY.fullmatch(key):
            raise InvalidSpec("--env", f"{item!r} is not KEY=VALUE or KEY",
                              hint="e.g. -e GREETING=hi or -e HOME")
        if eq:
            out.append(item)
        elif key in environ:
            out.append(f"{key}={environ[key]}")
    return out


def env_file_items(path: Path, environ: Mapping[str, str]) -> list[str]:
    """An ``--env-file``: one KEY=VALUE (or KEY) a line; blank lines and ``#`` comments are
    skipped; values are taken as written (no quotes removed), as docker does."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "it is not UTF-8 text"
        raise InvalidSpec("--env-file", f"cannot read {path}: {reason}") from e
    lines = [line.lstrip() for line in text.splitlines()]
    items = [line for line in lines if line and not line.startswith("#")]
    try:
        return env_items(items, environ)
    except InvalidSpec as e:
        raise InvalidSpec("--env-file", f"{path}: {str(e).split(': ', 1)[1]}") from e


def environment(env: Iterable[str], env_files: Iterable[Path],
                environ: Mapping[str, str]) -> tuple[str, ...]:
    """Files first, then ``-e`` (a later value of a key wins, as in docker)."""
    items = [i for f in env_files for i in env_file_items(f, environ)]
    items += env_items(env, environ)
    last = {item.partition("=")[0]: item for item in items}
    return tuple(last.values())


def parse_memory(text: str) -> int:
    """``512`` (MiB), ``512m``, ``1g``, ``1.5G``, ``2048k`` → MiB."""
    match = _MEMORY.fullmatch(text.strip())
    if not match:
        raise InvalidSpec("--memory", f"{text!r} is not a size",
                          hint="e.g. 512 (MiB), 512m or 1g")
    mib = float(match.group(1)) * _MIB[match.group(2).lower()]
    if mib != int(mib):
        raise InvalidSpec("--memory", f"{text!r} is not a whole number of MiB")
    return int(mib)


def parse_cpus(text: str) -> tuple[int, float | None]:
    """``--cpus``: (vCPUs, CPU quota in cores). ``1.5`` → 2 vCPUs limited to 1.5 cores; a
    whole number → that many vCPUs, no quota."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise InvalidSpec("--cpus", f"{text!r} is not a positive number of CPUs",
                          hint="e.g. 2 or 1.5")
    vcpus = math.ceil(value)
    return vcpus, (None if value == vcpus else value)


def resources(cpus: str, memory: str) -> Resources:
    vcpus, limit = parse_cpus(cpus)
    res = Resources(cpus=vcpus, memory_mib=parse_memory(memory), cpu_limit=limit)
    res.validate()
    return res


def resolve_image(launcher: Launcher, ref: str, pull: str) -> Image:
    """The image to run. ``--pull never``: a registry image only from the cache (local sources
    are read where they are, no network either way)."""
    if pull == "never" and isinstance(parse_reference(ref), RegistryRef):
        cached = launcher.images.image(ref)
        if cached is None:
            raise ImageError(ref, "is not in the image cache and --pull never forbids pulling",
                             hint=f"hypervm pull {ref}, or run with --pull missing")
        return cached
    return launcher.resolve(ref, "missing" if pull == "never" else pull)
