"""examples/: the Marathon app validates against Marathon's schema, the TaskGroupInfo and
ExecutorInfo examples against the Mesos protos and our parser."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from executor.mesos.taskinfo import IMAGE_LABEL, parse_executor, parse_task_group
from tests.mesos import protos

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
SCHEMA = protos.SHARED / "marathon" / "AppDefinition.json"
MARATHON_APPS = sorted((EXAMPLES / "marathon").glob("*.json"))
TASK_GROUPS = sorted(p for p in (EXAMPLES / "taskgroups").glob("*.json")
                     if p.name != "executor-info.json")


def marathon_validator() -> Any:
    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft4Validator)
    cls.check_schema(schema)
    return cls(schema)  # local "#/definitions/…" $refs resolve against the schema itself


def test_there_are_examples() -> None:
    assert MARATHON_APPS and TASK_GROUPS


@pytest.mark.parametrize("path", MARATHON_APPS, ids=lambda p: p.name)
def test_marathon_app_validates(path: Path) -> None:
    app = json.loads(path.read_text())
    marathon_validator().validate(app)
    assert app["executor"].endswith("/hypervm-executor")
    assert app["labels"][IMAGE_LABEL]
    assert "container" not in app  # it would become the executor's container


def test_marathon_schema_check_can_fail() -> None:
    app = json.loads(MARATHON_APPS[0].read_text())
    validator = marathon_validator()
    for broken in ({**app, "executer": "/x"}, {**app, "cpus": "many"},
                   {**app, "labels": {"a": 1}}):
        assert list(validator.iter_errors(broken))


@pytest.mark.parametrize("path", TASK_GROUPS, ids=lambda p: p.name)
def test_task_group_validates(path: Path) -> None:
    group = json.loads(path.read_text())
    protos.parse("mesos.TaskGroupInfo", group)
    specs = parse_task_group(group)
    assert all(spec.image for spec in specs)


def test_executor_info_validates() -> None:
    info = json.loads((EXAMPLES / "taskgroups" / "executor-info.json").read_text())
    protos.parse("mesos.ExecutorInfo", info)
    spec = parse_executor(info, info["framework_id"]["value"])
    assert (spec.cpus, spec.mem_mib) == (0.1, 64)
    assert info["command"]["value"].endswith("hypervm-executor")
