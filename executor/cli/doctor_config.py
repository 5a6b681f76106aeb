"""``hypervm doctor``'s configuration report: every setting's effective value and its source
(default, the configuration file, or the environment), from the one table in hypervm.settings.
(Here, not in hypervm.settings, which every command imports: only doctor reports sources, and
creating the ``Effective`` dataclass costs ~1 ms of every cold ``hypervm run``, issue 17.)"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from hypervm.frozen import frozen_dataclass
from hypervm.settings import SETTINGS, Setting, config_path, read_config_file


@frozen_dataclass
class Effective:
    """One setting's effective value and where it came from: default, file or environment."""

    setting: Setting
    value: str
    source: str


def effective(env: Mapping[str, str], file_values: Mapping[str, str],
              path: Path) -> list[Effective]:
    """Each setting's value with its source; the environment wins over the file."""
    out = []
    for s in SETTINGS:
        if env.get(s.env, "") != "" and env.get(s.env) != file_values.get(s.env):
            out.append(Effective(s, env[s.env], f"environment ({s.env})"))
        elif s.env in file_values:
            out.append(Effective(s, file_values[s.env], f"file ({path})"))
        else:
            out.append(Effective(s, s.default, "default"))
    return out


def configuration_lines(environ: Mapping[str, str]) -> list[str]:
    path = config_path(environ)
    file_values = read_config_file(path)
    state = "read" if path.is_file() else "absent"
    lines = [f"configuration: {path} ({state}); the environment overrides it"]
    for item in effective(environ, file_values, path):
        value = item.value if item.value != "" else "(unset)"
        lines.append(f"  {item.setting.key:<26} {value:<24} {item.source}")
    return lines
