"""setup.cfg ships what the code reads at run time: every directory of our packages holding
files is a package setuptools finds (a data directory that is not one makes setuptools print its
"Package would be ignored" banner on every install, as ``make demo`` did for
``scheduler/schemas``), and every data file is named by ``[options.package_data]`` (a wheel
would leave it out: ``pip install .`` is not editable)."""

from __future__ import annotations

import configparser
import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("hypervm", "executor", "vmimage", "scheduler")
#: files that document the source tree, not read at run time
NOT_DATA = {"README.md"}


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def _directories() -> list[Path]:
    return [d for top in PACKAGES for d in [ROOT / top, *(ROOT / top).rglob("*")]
            if d.is_dir() and d.name != "__pycache__" and any(
                f.is_file() and f.name not in NOT_DATA for f in d.iterdir())]


def test_every_directory_with_files_is_a_package() -> None:
    not_packages = [str(d.relative_to(ROOT)) for d in _directories()
                    if not (d / "__init__.py").is_file()]
    assert not_packages == []


def test_every_data_file_is_package_data() -> None:
    package_data = {package: [p.strip() for p in patterns.replace("\n", ",").split(",")]
                    for package, patterns in _setup_cfg()["options.package_data"].items()}
    missing = []
    for directory in _directories():
        package = ".".join(directory.relative_to(ROOT).parts)
        for f in directory.iterdir():
            if f.is_file() and f.suffix != ".py" and f.name not in NOT_DATA and not any(
                    fnmatch.fnmatch(f.name, p) for p in package_data.get(package, ())):
                missing.append(str(f.relative_to(ROOT)))
    assert missing == []
