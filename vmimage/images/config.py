"""The image configuration and user resolution through the image's /etc/passwd and /etc/group.

Pure functions: the passwd/group texts come from the layers (topmost wins, see cache.py).
User specs follow Docker/runc: ``""`` (root), ``name``, ``uid``, ``name:group``, ``uid:gid``.
"""

from __future__ import annotations

import json

from hypervm.errors import ImageError
from hypervm.frozen import frozen_dataclass
from hypervm.imageref import DIGEST_RE

#: typing.TYPE_CHECKING without importing typing (~3 ms of a cold run's start)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_ID = 2**32 - 2
#: files whose topmost version user resolution needs (:func:`resolve_user`): unpacking a layer
#: keeps their text in its metadata (vmimage.images.unpack), the store reads it from there.
#: Here, not in unpack: every launch resolves its user; unpack's imports are a pull's only
TRACKED_FILES = ("etc/passwd", "etc/group")


def load_json(image: str, what: str, blob: str, data: bytes) -> dict[str, Any]:
    """A JSON object blob of ``image`` (its config, a manifest), else an ImageError."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ImageError(image, f"{what} is not valid JSON ({e})", blob=blob) from e
    if not isinstance(doc, dict):
        raise ImageError(image, f"{what} is not a JSON object", blob=blob)
    return doc


@frozen_dataclass
class ImageConfig:
    """What an image's config says about its process (entrypoint, cmd, env, ...)."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = "/"
    user: str = ""


@frozen_dataclass
class ParsedConfig:
    """An image config blob, parsed and checked: its process and layer diff ids."""

    config: ImageConfig
    diff_ids: tuple[str, ...]


def _strings(image: str, blob: str, field: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageError(image, f"image config field {field} is not a list of strings", blob=blob)
    return tuple(value)


def parse_config(image: str, digest: str, data: bytes) -> ParsedConfig:
    doc = load_json(image, "image config", digest, data)
    section = doc.get("config") or {}
    if not isinstance(section, dict):
        raise ImageError(image, "image config field config is not an object", blob=digest)
    working_dir = section.get("WorkingDir") or "/"
    user = section.get("User") or ""
    if not isinstance(working_dir, str) or not isinstance(user, str):
        raise ImageError(image, "image config WorkingDir/User are not strings", blob=digest)
    if not working_dir.startswith("/"):
        working_dir = "/" + working_dir
    rootfs = doc.get("rootfs") or {}
    diff_ids = _strings(image, digest, "rootfs.diff_ids",
                        rootfs.get("diff_ids") if isinstance(rootfs, dict) else None)
    for diff_id in diff_ids:
        if not DIGEST_RE.fullmatch(diff_id):  # names a layer file of the cache
            raise ImageError(image, f"image config has a bad diff id {diff_id!r}", blob=digest)
    config = ImageConfig(
        entrypoint=_strings(image, digest, "Entrypoint", section.get("Entrypoint")),
        cmd=_strings(image, digest, "Cmd", section.get("Cmd")),
        env=_strings(image, digest, "Env", section.get("Env")),
        working_dir=working_dir,
        user=user,
    )
    return ParsedConfig(config, diff_ids)


@frozen_dataclass
class PasswdEntry:
    """One line of an image's /etc/passwd."""

    name: str
    uid: int
    gid: int


@frozen_dataclass
class GroupEntry:
    """One line of an image's /etc/group."""

    name: str
    gid: int
    members: tuple[str, ...]


def _int_id(text: str) -> int | None:
    if not (text.isascii() and text.isdigit()):  # "²".isdigit(), and int("²") raises
        return None
    value = int(text)
    return value if value <= MAX_ID else None


def parse_passwd(text: str) -> list[PasswdEntry]:
    entries = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 4 or line.startswith("#"):
            continue
        uid, gid = _int_id(fields[2]), _int_id(fields[3])
        if fields[0] and uid is not None and gid is not None:
            entries.append(PasswdEntry(fields[0], uid, gid))
    return entries


def parse_group(text: str) -> list[GroupEntry]:
    entries = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 3 or line.startswith("#"):
            continue
        gid = _int_id(fields[2])
        members = tuple(m for m in fields[3].split(",") if m) if len(fields) > 3 else ()
        if fields[0] and gid is not None:
            entries.append(GroupEntry(fields[0], gid, members))
    return entries


def resolve_user(image: str, spec: str, passwd_text: str | None,
                 group_text: str | None) -> tuple[int, int, tuple[int, ...]]:
    """``user[:group]`` → (uid, gid, additional gids) the way runc resolves it."""
    spec = spec.strip() or "0"
    user_part, _, group_part = spec.partition(":")
    passwd = parse_passwd(passwd_text or "")
    groups = parse_group(group_text or "")
    numeric = _int_id(user_part)
    entry = next((p for p in passwd if (p.uid == numeric if numeric is not None
                                        else p.name == user_part)), None)
    if numeric is None and entry is None:
        where = "/etc/passwd" if passwd_text is not None else "/etc/passwd (the image has none)"
        raise ImageError(image, f"user {user_part!r} is not in the image's {where}",
                         hint="use a numeric uid[:gid] or a user the image defines")
    uid = numeric if numeric is not None else entry.uid  # type: ignore[union-attr]
    gid = entry.gid if entry is not None else 0
    if group_part:
        group_id = _int_id(group_part)
        if group_id is None:
            match = next((g for g in groups if g.name == group_part), None)
            if match is None:
                raise ImageError(image, f"group {group_part!r} is not in the image's /etc/group",
                                 hint="use a numeric gid or a group the image defines")
            group_id = match.gid
        return uid, group_id, ()
    additional: list[int] = []
    if entry is not None:
        for group in groups:
            if entry.name in group.members and group.gid != gid and group.gid not in additional:
                additional.append(group.gid)
    return uid, gid, tuple(additional)
