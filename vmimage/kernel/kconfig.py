"""Pure helpers over Kconfig text: parse a .config or a fragment, find what Kconfig dropped.

``merge_config.sh`` + ``olddefconfig`` silently drop an option whose dependencies are not met;
:func:`dropped_options` names every ``=y`` (or ``=m``/value) line of the fragment that did not
survive into the final .config, so the build can fail loudly instead.
"""

from __future__ import annotations

import re

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


def parse_config(text: str) -> dict[str, str]:
    """Map every option named in ``text`` to its value; ``"n"`` for ``# CONFIG_X is not set``."""
    options: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if m := _SET.match(line):
            options[m.group(1)] = m.group(2)
        elif m := _UNSET.match(line):
            options[m.group(1)] = "n"
    return options


def dropped_options(fragment: str, final: str) -> list[str]:
    """Options the fragment sets that the final .config does not have with the same value.

    Each entry reads ``CONFIG_X (wanted y, got n)``, in fragment order. An option the fragment
    turns off (``is not set``) counts as kept when the final config lacks it entirely, since
    Kconfig does not write symbols that are not visible.
    """
    wanted = parse_config(fragment)
    got = parse_config(final)
    dropped = []
    for name, value in wanted.items():
        have = got.get(name, "n")
        if have != value:
            dropped.append(f"{name} (wanted {value}, got {have})")
    return dropped
