"""The systemd units `make install` writes (examples/systemd): each service runs one of our
commands as it exists, each timer has its service, and the install target writes them all."""

from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path

import pytest

from executor.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "examples" / "systemd"
COMMANDS = {"hypervm", "hypervm-executor", "hypervm-scheduler"}


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    parser.read_string(path.read_text())
    return parser


@pytest.mark.parametrize("path", sorted(UNITS.glob("*.service")), ids=lambda p: p.name)
def test_a_service_runs_an_installed_command_that_exists(path: Path) -> None:
    argv = shlex.split(unit(path)["Service"]["ExecStart"])
    assert argv[0].startswith("@BINDIR@/"), "make install substitutes @BINDIR@"
    command = argv[0].removeprefix("@BINDIR@/")
    assert command in COMMANDS
    if command == "hypervm":
        build_parser(argv[1:]).parse_args(argv[1:])  # exits (SystemExit) on a bad command line


def test_the_gc_timer_starts_gc_hourly() -> None:
    timer = unit(UNITS / "hypervm-gc.timer")
    assert (UNITS / "hypervm-gc.service").exists()  # a timer starts the service of its name
    assert timer["Timer"]["OnUnitActiveSec"] == "1h"
    assert timer["Install"]["WantedBy"] == "timers.target"
    service = unit(UNITS / "hypervm-gc.service")["Service"]
    assert service["Type"] == "oneshot"
    assert shlex.split(service["ExecStart"])[1:] == ["gc"]  # never --all, never --images


def test_make_install_writes_every_unit() -> None:
    install = re.search(r"^install:.*?(?=^\S)", (ROOT / "Makefile").read_text(), re.M | re.S)
    assert install is not None
    for path in UNITS.iterdir():
        assert path.stem in install.group(0), f"make install does not write {path.name}"
