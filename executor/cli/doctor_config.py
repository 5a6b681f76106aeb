"""``hypervm doctor``'s configuration report: every setting's effective value and its source
(default, the configuration file, or the environment), from the one table in hypervm.settings."""

from __future__ import annotations

from collections.abc import Mapping

from hypervm.settings import config_path, effective, read_config_file


def configuration_lines(environ: Mapping[str, str]) -> list[str]:
    path = config_path(environ)
    file_values = read_config_file(path)
    state = "read" if path.is_file() else "absent"
    lines = [f"configuration: {path} ({state}); the environment overrides it"]
    for item in effective(environ, file_values, path):
        value = item.value if item.value != "" else "(unset)"
        lines.append(f"  {item.setting.key:<26} {value:<24} {item.source}")
    return lines
