"""The master double refuses the LAUNCH_GROUPs the real Mesos 1.11 master refuses, with its
messages (src/master/validation.cpp)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.mesos.master_resources import amounts
from tests.mesos.master_validation import (
    Context,
    validate_call,
    validate_framework,
    validate_launch_group,
    validate_offers,
)

ROLE = {"role": "r"}


def scalar(name: str, value: float) -> dict[str, Any]:
    return {"name": name, "type": "SCALAR", "scalar": {"value": value}, "allocation_info": ROLE}


def group() -> dict[str, Any]:
    executor = {"executor_id": {"value": "e1"}, "framework_id": {"value": "fw"},
                "type": "CUSTOM", "command": {"value": "hypervm-executor"},
                "resources": [scalar("cpus", 0.1), scalar("mem", 32), scalar("disk", 32)]}
    task = {"name": "t", "task_id": {"value": "t1"}, "agent_id": {"value": "a1"},
            "resources": [scalar("cpus", 0.5), scalar("mem", 64)],
            "container": {"type": "MESOS", "mesos": {"image": {
                "type": "DOCKER", "docker": {"name": "busybox"}}}}}
    return {"executor": executor, "task_group": {"tasks": [task]}}


def ctx(**over: Any) -> Context:
    offered = amounts([scalar("cpus", 2), scalar("mem", 1024), scalar("disk", 1024), {
        "name": "ports", "type": "RANGES", "allocation_info": ROLE,
        "ranges": {"range": [{"begin": 31000, "end": 31099}]}}])
    return Context(**{"framework_id": "fw", "agent_id": "a1", "role": "r",
                      "offered": offered, **over})


def _del_disk(g: dict[str, Any]) -> None:
    g["executor"]["resources"].pop()


def _two_tasks_on_one_port(g: dict[str, Any]) -> None:
    task = g["task_group"]["tasks"][0]
    task["resources"] = [scalar("cpus", 0.1), scalar("mem", 32)]
    other = {**copy.deepcopy(task), "task_id": {"value": "t2"}}
    g["task_group"]["tasks"].append(other)
    for t in g["task_group"]["tasks"]:
        t["resources"].append({"name": "ports", "type": "RANGES", "allocation_info": ROLE,
                               "ranges": {"range": [{"begin": 31000, "end": 31000}]}})


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(g: dict[str, Any]) -> None:
        node: Any = g
        *parents, last = path.split(".")
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[last] = value
    return apply


@pytest.mark.parametrize(("change", "message"), [
    (_del_disk, "Executor 'e1' uses no disk"),
    (_set("executor.resources.1.scalar.value", 16.5),
     "Executor 'e1' uses less memory (16MB) than the minimum required (32MB)"),
    (_set("executor.resources.1.scalar.value", 31.9),
     "Executor 'e1' uses less memory (31MB) than the minimum required (32MB)"),
    (_set("executor.resources.0.scalar.value", 0.001),
     "Executor 'e1' uses less CPUs (0.001) than the minimum required (0.01)"),
    (_set("task_group.tasks.0.task_id", {"value": "a/b"}),
     "Task 'a/b' is invalid: 'a/b' contains invalid characters"),
    (_set("task_group.tasks.0.task_id", {"value": "x" * 256}),
     f"Task '{'x' * 256}' is invalid: ID must not be greater than 255 characters"),
    (_set("task_group.tasks.0.resources", []), "Task 't1' is invalid: Task uses no resources"),
    (_set("task_group.tasks.0.agent_id", {"value": "a2"}),
     "Task 't1' is invalid: Task uses invalid agent a2 while agent a1 is expected"),
    (_set("task_group.tasks.0.container", {"type": "DOCKER", "docker": {"image": "x"}}),
     "Task 't1' is invalid: Docker ContainerInfo is not supported on the task"),
    (_set("task_group.tasks.0.health_check", {"type": "HTTP", "http": {"port": 1,
                                                                       "path": "x"}}),
     "Task 't1' is invalid: Task uses invalid health check: The path 'x' of HTTP health check "
     "must start with '/'"),
    (_set("executor.framework_id", {"value": "other"}),
     "ExecutorInfo has an invalid FrameworkID (Actual: other vs Expected: fw)"),
    (_set("executor.command", None), None),
    # the messages below are the real master's, seen on ../shared/realmesos (Mesos 1.11.0)
    (_set("task_group.tasks.0.resources.0.scalar.value", 5),
     "Total resources cpus(allocated: r):5.1; mem(allocated: r):96; disk(allocated: r):32 "
     "required by task group and its executor are more than available ports(allocated: r):"
     "[31000-31099]; cpus(allocated: r):2; mem(allocated: r):1024; disk(allocated: r):1024"),
    (_two_tasks_on_one_port,
     "There are overlapping resources in the task group's task resources [ cpus(allocated: "
     "r):0.1; mem(allocated: r):32; ports(allocated: r):[31000-31000], cpus(allocated: r):0.1; "
     "mem(allocated: r):32; ports(allocated: r):[31000-31000] ] and/or executor resources "
     '[{"allocation_info":{"role":"r"},"name":"cpus","scalar":{"value":0.1},"type":"SCALAR"},'
     '{"allocation_info":{"role":"r"},"name":"mem","scalar":{"value":32.0},"type":"SCALAR"},'
     '{"allocation_info":{"role":"r"},"name":"disk","scalar":{"value":32.0},"type":"SCALAR"}]'),
    (_set("task_group.tasks.0.resources.0.allocation_info", {"role": "other"}),
     "Task 't1' is invalid: Invalid task resources: The resources have multiple allocation "
     "roles ('r' and 'other') but only one allocation role is allowed"),
    (_set("task_group.tasks.0.resources.0.scalar.value", -1),
     "Resource 'cpus(allocated: r):-1' is invalid: Invalid scalar resource: value <= 0"),
])
def test_invalid_task_groups_get_the_masters_message(
        change: Callable[[dict[str, Any]], None], message: str | None) -> None:
    assert validate_launch_group(group(), ctx()) is None
    g = copy.deepcopy(group())
    change(g)
    if message is None:  # a CUSTOM executor without command
        g["executor"].pop("command")
        message = "'ExecutorInfo.command' must be set for 'CUSTOM' executor"
    assert validate_launch_group(g, ctx()) == message


def test_a_live_task_id_cannot_be_launched_again() -> None:
    assert validate_launch_group(group(), ctx(active_task_ids={"t1"})) == \
        "Task 't1' is invalid: Task has duplicate ID: t1"


def test_offers_no_longer_valid() -> None:
    offers = {"o1": ("fw", "a1", "r"), "o2": ("fw", "a2", "r")}
    assert validate_offers(["o1"], offers) is None
    assert validate_offers(["o3"], offers) == "Offer o3 is no longer valid"
    assert validate_offers(["o1", "o1"], offers) == "Duplicate offer o1 in offer list"
    assert validate_offers(["o1", "o2"], offers).startswith(
        "Aggregated offers must belong to one single agent")


def test_framework_roles_as_the_master_checks_them() -> None:
    multi = {"capabilities": [{"type": "MULTI_ROLE"}]}
    assert validate_framework({**multi, "roles": ["a", "b/c"]}) is None
    assert validate_framework({"roles": ["a"]}) == (
        "'FrameworkInfo.roles' must not be set when the framework is not MULTI_ROLE capable")
    assert validate_framework({**multi, "roles": ["a", "a"]}) == (
        "'FrameworkInfo.roles' contains duplicate items: { a }")
    assert validate_framework({**multi, "roles": ["-x"]}) == (
        "'FrameworkInfo.roles' contains invalid role: Role component '-x' is invalid because "
        "it starts with a dash")
    assert validate_framework({**multi, "role": "a"}).startswith("'FrameworkInfo.role' must not")


def test_calls_as_the_master_checks_them() -> None:
    fw = {"framework_id": {"value": "fw"}}
    assert validate_call({**fw, "type": "ACCEPT", "accept": {"offer_ids": []}}) is None
    assert validate_call({**fw, "type": "ACCEPT"}) == "Expecting 'accept' to be present"
    assert validate_call({"type": "KILL", "kill": {}}) == "Expecting 'framework_id' to be present"
    assert validate_call({**fw, "type": "ACKNOWLEDGE", "acknowledge": {"uuid": "eA=="}}) == \
        "Invalid UUID: 'eA==' is not 16 bytes"
    subscribe = {"type": "SUBSCRIBE", "subscribe": {"framework_info": {"principal": "p"}}}
    assert validate_call(subscribe, "p") is None
    assert validate_call(subscribe, "q").startswith("Authenticated principal 'q' does not match")
    assert validate_call({**subscribe, **fw}) == \
        "'framework_id' differs from 'subscribe.framework_info.id'"
