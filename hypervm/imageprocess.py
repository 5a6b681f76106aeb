"""The process an image runs: its config (Entrypoint, Cmd, Env, WorkingDir, User) merged with
what the user or the TaskInfo overrides, the way Docker does it. Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from hypervm.errors import InvalidSpec
from hypervm.podspec import Process

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


def image_argv(image_entrypoint: Sequence[str], image_cmd: Sequence[str], *,
               entrypoint: Sequence[str] | None = None, command: Sequence[str] | None = None,
               field: str = "command", image_name: str = "image",
               hint: str = "give one: hypervm run IMAGE -- CMD") -> tuple[str, ...]:
    """Docker's rules, the only copy of them: ``command`` replaces Cmd, ``entrypoint`` replaces
    Entrypoint (and then drops Cmd unless a command is given). Raises InvalidSpec naming
    ``field`` when nothing is left to run."""
    if entrypoint is not None:
        args = (*entrypoint, *(command or ()))
    else:
        args = (*(image_entrypoint or ()), *(command if command else (image_cmd or ())))
    if not args or not args[0]:
        raise InvalidSpec(field, f"{image_name} has no Entrypoint or Cmd and no command "
                                 "was given", hint=hint)
    return tuple(args)


def image_process(config: object, resolve_user: UserResolver, *,
                  command: Sequence[str] | None = None,
                  entrypoint: Sequence[str] | None = None,
                  env: Sequence[str] = (), cwd: str | None = None, user: str | None = None,
                  stdin: bool = False, image_name: str = "image",
                  field: str = "command", hint: str = "give one: hypervm run IMAGE -- CMD"
                  ) -> Process:
    """The process of an image (``config``: vmimage's ImageConfig) with the user's or the
    TaskInfo's overrides: argv by :func:`image_argv`; env overrides by key; cwd and user
    override (the image's user, else root)."""
    args = image_argv(tuple(getattr(config, "entrypoint", ()) or ()),
                      tuple(getattr(config, "cmd", ()) or ()), entrypoint=entrypoint,
                      command=command, field=field, image_name=image_name, hint=hint)
    user_spec = user if user is not None else (getattr(config, "user", "") or "0")
    uid, gid, groups = resolve_user(user_spec)
    return Process(
        args=args,
        env=merge_env(tuple(getattr(config, "env", ()) or ()), env),
        cwd=cwd or getattr(config, "working_dir", "") or "/",
        uid=uid, gid=gid, additional_gids=groups, stdin=stdin,
    )
