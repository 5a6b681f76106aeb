"""One configuration file for every HYPERVM_* setting; the environment overrides it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from executor.cli import main as cli
from executor.cli.doctor_config import configuration_lines, effective
from hypervm import config
from hypervm.errors import InvalidSpec
from hypervm.settings import (
    BY_KEY,
    SETTINGS,
    apply_config_file,
    load_config_file,
    read_config_file,
)

REPO = Path(__file__).resolve().parents[2]
#: variables that are not operator settings: the file's own path, a test hook, a secret
NOT_IN_FILE = {"HYPERVM_CONFIG", "HYPERVM_EXECUTOR_RUNTIME", "HYPERVM_SCHEDULER_SECRET"}


def test_the_table_knows_every_variable_the_code_reads() -> None:
    read = set()
    for package in ("hypervm", "executor", "vmimage"):
        for path in (REPO / package).rglob("*.py"):
            read |= set(re.findall(r"\bHYPERVM_[A-Z0-9_]+", path.read_text()))
    assert read - NOT_IN_FILE == {s.env for s in SETTINGS}
    assert len(BY_KEY) == len(SETTINGS)


def test_table_defaults_match_the_parsers() -> None:
    from executor.mesos.kill import DEFAULT_ESCALATION_S, DEFAULT_MAX_GRACE_S
    from executor.mesos.logs import DEFAULT_BACKUPS, DEFAULT_MAX_BYTES

    defaults = {s.env: s.default for s in SETTINGS}
    cfg = config.config_from_env({s.env: s.default for s in SETTINGS})
    assert cfg == config.config_from_env({})
    assert config.mesos_policy_from_env(defaults) == config.mesos_policy_from_env({})
    assert float(defaults["HYPERVM_MAX_KILL_GRACE"]) == DEFAULT_MAX_GRACE_S
    assert float(defaults["HYPERVM_KILL_ESCALATION"]) == DEFAULT_ESCALATION_S
    assert int(defaults["HYPERVM_LOG_MAX_BYTES"]) == DEFAULT_MAX_BYTES
    assert int(defaults["HYPERVM_LOG_BACKUPS"]) == DEFAULT_BACKUPS


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_file_values_become_variables_and_the_environment_wins(tmp_path: Path) -> None:
    path = write(tmp_path, 'state_dir = "/srv/hv"\naccel = "tcg"\ntcg_flush = false\n'
                           'host_path_prefixes = ["/srv", "/data"]\ncontainer_pids = 100\n')
    environ = {"HYPERVM_CONFIG": str(path), "HYPERVM_ACCEL": "kvm"}
    values = load_config_file(environ)
    assert values["HYPERVM_ACCEL"] == "tcg"
    cfg = config.config_from_env(environ)
    assert (cfg.state_dir, cfg.accel, cfg.tcg_flush, cfg.container_pids) == (
        Path("/srv/hv"), "kvm", False, 100)
    assert config.mesos_policy_from_env(environ).host_path_prefixes == ("/srv", "/data")
    sources = {e.setting.key: (e.value, e.source) for e in effective(environ, values, path)}
    assert sources["accel"] == ("kvm", "environment (HYPERVM_ACCEL)")
    assert sources["state_dir"] == ("/srv/hv", f"file ({path})")
    assert sources["run_dir"] == ("/run/hypervm", "default")


def test_missing_file_is_an_empty_configuration(tmp_path: Path) -> None:
    environ = {"HYPERVM_CONFIG": str(tmp_path / "absent.toml")}
    assert apply_config_file(environ) == {}
    assert environ == {"HYPERVM_CONFIG": str(tmp_path / "absent.toml")}


def test_a_host_without_a_file_does_not_load_the_toml_parser(tmp_path: Path) -> None:
    """Every command reads the file first: without one, no parser to import (~3 ms)."""
    code = ("import sys; from hypervm.settings import load_config_file; "
            f"load_config_file({{'HYPERVM_CONFIG': {str(tmp_path / 'absent.toml')!r}}}); "
            "print('tomllib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout
    assert out.strip() == "False"


def test_a_file_that_is_not_utf8_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b'accel = "\xff"\n')
    with pytest.raises(InvalidSpec, match=re.escape("config.toml: is not valid TOML")):
        load_config_file({"HYPERVM_CONFIG": str(path)})


@pytest.mark.parametrize(("text", "message"), [
    ("bogus = 1\n", "config.toml: bogus: is not a hypervm setting"),
    ("accel = \n", "config.toml: is not valid TOML"),
    ("accel = \"fast\"\n", "config.toml: accel: unknown accelerator 'fast'"),
    ("vm_uid_range = \"1-2\"\n", "config.toml: vm_uid_range: '1-2' is out of range"),
    ("[image]\nmax = 1\n", "config.toml: image: "),
    ("state_dir = { a = 1 }\n", "config.toml: state_dir: "),
])
def test_bad_file_names_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InvalidSpec, match=re.escape(message)):
        load_config_file({"HYPERVM_CONFIG": str(path)})


def test_bad_variable_still_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, 'accel = "tcg"\n')
    with pytest.raises(InvalidSpec, match="^HYPERVM_POOL: "):
        load_config_file({"HYPERVM_CONFIG": str(path), "HYPERVM_POOL": "maybe"})


def test_cli_refuses_a_bad_file_with_125(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HYPERVM_CONFIG", str(write(tmp_path, "nope = 1\n")))
    assert cli.main(["images"]) == 125
    err = capsys.readouterr().err
    assert err == f"hypervm: error: {tmp_path}/config.toml: nope: is not a hypervm setting " \
                  "(hypervm doctor lists the settings)\n"


def test_doctor_reports_each_source(tmp_path: Path) -> None:
    path = write(tmp_path, 'run_dir = "/run/x"\n')
    lines = configuration_lines({"HYPERVM_CONFIG": str(path), "HYPERVM_ACCEL": "tcg"})
    assert lines[0] == f"configuration: {path} (read); the environment overrides it"
    by_key = {line.split()[0]: line.split(None, 2)[1:] for line in lines[1:]}
    assert by_key["run_dir"] == ["/run/x", f"file ({path})"]
    assert by_key["accel"] == ["tcg", "environment (HYPERVM_ACCEL)"]
    assert by_key["libvirt_uri"] == ["qemu:///system", "default"]
    assert len(lines) == 1 + len(SETTINGS)


def test_example_config_lists_every_setting_and_parses(tmp_path: Path) -> None:
    example = REPO / "examples" / "config.toml"
    assert read_config_file(example) == {}  # every key commented out: the defaults
    text = example.read_text()
    uncommented = "\n".join(line[2:] for line in text.splitlines()
                            if line.startswith("# ") and " = " in line and "\"" in line)
    values = read_config_file(write(tmp_path, uncommented))
    assert {s.env for s in SETTINGS if s.default} == set(values)
    for s in SETTINGS:
        assert f"# {s.key} =" in text
