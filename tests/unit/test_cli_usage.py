"""Exit statuses, --version, completion and help of ``hypervm`` (issue 17, part 5)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from executor.cli import main as cli
from executor.cli import usage
from executor.cli.usage import EXIT_HYPERVM, subcommands
from tests.conftest import REPO


@pytest.fixture(autouse=True)
def no_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYPERVM_CONFIG", str(tmp_path / "absent.toml"))


@pytest.mark.parametrize("argv", [
    ["run", "--bogus"], ["no-such-command"], ["run", "--cpus"], ["run", "--pull", "sometimes"],
    ["completion", "fish"], ["pool"], []])
def test_usage_errors_exit_125(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == EXIT_HYPERVM == 125
    assert "usage: hypervm" in capsys.readouterr().err


def test_hypervm_errors_exit_125(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYPERVM_STATE_DIR", str(tmp_path))
    assert cli.main(["run", "--rootfs", "/nonexistent-rootfs", "--", "true"]) == 125
    assert capsys.readouterr().err.startswith("hypervm: error: --rootfs")


def test_usage_error_exits_125_from_the_console_script() -> None:
    result = subprocess.run([sys.executable, "-m", "executor.cli", "run", "--nope"], cwd=REPO,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 125
    assert "unrecognized arguments: --nope" in result.stderr


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"hypervm {version('hypervm')}"


@pytest.mark.parametrize(("shell", "marker"), [("bash", "complete -o"), ("zsh", "#compdef")])
def test_completion_scripts_know_the_commands(shell: str, marker: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["completion", shell]) == 0
    out = capsys.readouterr().out
    assert marker in out
    for word in ("run", "doctor", "pool", "--env-file", "--volume"):
        assert word in out


def test_every_command_has_help_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    paths = subcommands(cli.build_parser())
    assert {"run", "doctor", "completion", "pool serve"} <= {p for p, _ in paths}
    for path, _ in paths:
        assert cli.main([*path.split(), "--help"]) == 0
        out = capsys.readouterr().out
        assert "examples:\n  hypervm " in out, f"hypervm {path} --help has no example"


def test_run_help_says_v_is_a_volume(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    assert "-v HOST:CONTAINER[:ro], --volume HOST:CONTAINER[:ro]" in out
    assert "hypervm --verbose" in out


def test_a_command_line_imports_only_its_command_module() -> None:
    """``hypervm run`` builds a parser of run alone (its start-up is on every run's clock);
    without a known command every command is there (help, usage errors)."""
    code = ("import sys; from executor.cli.main import build_parser, COMMANDS, COMMAND_MODULES\n"
            "build_parser(['--verbose', 'run', 'IMAGE'])\n"
            "print(sorted(set(COMMAND_MODULES) & set(sys.modules)))\n"
            "build_parser()\n"
            "print(sorted(set(COMMAND_MODULES) - set(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout.splitlines()
    # run alone: detach (run -d/-t) is imported only when a supervised run starts (issue 17)
    assert out == ["['executor.cli.run']", "[]"]
    assert {p for p, _ in subcommands(cli.build_parser(["ps"]))} == {"ps", "inspect"}
    assert {p for p, _ in subcommands(cli.build_parser())} >= set(cli.COMMANDS)


@pytest.mark.parametrize("columns", [None, "0", "x", "-3", "37", "132"])
def test_the_help_is_as_wide_as_argparse_would_make_it(columns: str | None,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Our formatter finds the terminal's width without importing shutil (a cold run's
    createXML comes ~2.5 ms sooner: issue 17), and finds the one argparse's own would:
    shutil.get_terminal_size's columns ($COLUMNS when a positive number, else stdout's
    terminal, else 80), for every parser, sub-commands' included."""
    import shutil  # the reference: what argparse's own formatter asks

    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    assert usage.terminal_columns() == shutil.get_terminal_size().columns
    parser = cli.build_parser(["run"])
    for _, sub in [("", parser), *subcommands(parser)]:
        formatter = sub._get_formatter()
        assert isinstance(formatter, usage.LineFormatter)
        assert formatter._width == shutil.get_terminal_size().columns - 2
    assert usage.LineFormatter("p", width=50)._width == 50
