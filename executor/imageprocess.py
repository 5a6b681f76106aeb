"""The process an image runs: its config (Entrypoint, Cmd, Env, WorkingDir, User) merged with
what the user or the TaskInfo overrides, the way Docker does it. Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from executor.errors import InvalidSpec
from executor.podspec import Process

#: resolves a ``user[:group]`` spec through the image's /etc/passwd and /etc/group
UserResolver = Callable[[str], tuple[int, int, tuple[int, ...]]]


def merge_env(base: Sequence[str], overrides: Sequence[str]) -> tuple[str, ...]:
    """``KEY=VALUE`` lists: overrides replace same-named keys and keep the base's order."""
    merged: dict[str, str] = {}
    for item in (*base, *overrides):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidSpec("env", f"{item!r} is not KEY=VALUE")
        merged[key] = value
    return tuple(f"{k}={v}" for k, v in merged.items())


def image_process(config: object, resolve_user: UserResolver, *,
                  command: Sequence[str] | None = None,
                  entrypoint: Sequence[str] | None = None,
                  env: Sequence[str] = (), cwd: str | None = None, user: str | None = None,
                  stdin: bool = False, image_name: str = "image") -> Process:
    """Docker's rules: ``command`` replaces Cmd, ``entrypoint`` replaces Entrypoint (and then
    drops Cmd unless a command is given); env overrides by key; cwd and user override."""
    image_entrypoint = tuple(getattr(config, "entrypoint", ()) or ())
    image_cmd = tuple(getattr(config, "cmd", ()) or ())
    if entrypoint is not None:
        args = (*entrypoint, *(command or ()))
    else:
        args = (*image_entrypoint, *(command if command else image_cmd))
    if not args:
        raise InvalidSpec("command", f"{image_name} has no Entrypoint or Cmd and no command "
                                     "was given", hint="give one: hypervm run IMAGE -- CMD")
    user_spec = user if user is not None else (getattr(config, "user", "") or "0")
    uid, gid, groups = resolve_user(user_spec)
    return Process(
        args=tuple(args),
        env=merge_env(tuple(getattr(config, "env", ()) or ()), env),
        cwd=cwd or getattr(config, "working_dir", "") or "/",
        uid=uid, gid=gid, additional_gids=groups, stdin=stdin,
    )
