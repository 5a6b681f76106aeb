"""hypervm-scheduler's command line: configuration errors are one clear line and exit 1."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from scheduler.cli import main, master_address
from scheduler.errors import ConfigError
from scheduler.tenants import hash_token


def test_hash_token_prints_the_digest(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hash-token", "abc"]) == 0
    assert capsys.readouterr().out.strip() == hash_token("abc")
    assert main(["hash-token"]) == 2


def test_master_address() -> None:
    assert master_address("http://10.0.0.1:5050/") == "10.0.0.1:5050"
    assert master_address("zk://a:2181,b:2181/mesos") == "zk://a:2181,b:2181/mesos"
    with pytest.raises(ConfigError, match="--master"):
        master_address("http://host:5050/path")


@pytest.fixture
def tenants(tmp_path: Path) -> Path:
    path = tmp_path / "tenants.json"
    path.write_text(json.dumps({"tenants": [{
        "id": "a", "token_sha256": hash_token("t"),
        "quota": {"cpus": 1, "mem": 1, "instances": 1}}]}))
    return path


@pytest.mark.parametrize(("override", "message"), [
    ({"--state": "postgres://db/x"}, "only sqlite:///PATH is supported"),
    ({"--state": "sqlite://relative.db"}, "give an absolute path"),
    ({"--listen": "8080"}, "--listen '8080': give HOST:PORT"),
    ({"--master": "http://m:5050/x"}, "--master"),
    ({"--tenants": "/nonexistent/tenants.yaml"}, "cannot read the tenants file"),
    ({"--max-event-streams": "8"}, "--max-event-streams 8: give 0 to 7"),
    ({"--max-event-streams": "-1"}, "--max-event-streams -1: give 0 to 7"),
])
def test_configuration_errors_exit_1_with_one_line(
        tmp_path: Path, tenants: Path, caplog: pytest.LogCaptureFixture,
        override: dict[str, str], message: str) -> None:
    args = {"--master": "127.0.0.1:1", "--listen": "127.0.0.1:0",
            "--state": f"sqlite://{tmp_path}/s.db", "--tenants": str(tenants), **override}
    with caplog.at_level(logging.ERROR):
        assert main([x for kv in args.items() for x in kv]) == 1
    assert message in caplog.text


def test_a_plaintext_token_in_the_tenants_file_is_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("tenants:\n  - {id: a, token: hunter2, quota: {cpus: 1, mem: 1, "
                    "instances: 1}}\n")
    with caplog.at_level(logging.ERROR):
        assert main(["--master", "m:1", "--listen", "127.0.0.1:0", "--state",
                     f"sqlite://{tmp_path}/s.db", "--tenants", str(path)]) == 1
    assert "tenants[0].token: plaintext tokens are not accepted" in caplog.text
