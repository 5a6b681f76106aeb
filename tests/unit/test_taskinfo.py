"""TaskInfo / TaskGroupInfo parsing: every field we use, every error naming its JSON path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from executor.mesos.runtime import PodPlan, build_container, container_names, task_env
from executor.mesos.taskinfo import (
    CONTAINER_SANDBOX,
    CommandSpec,
    ExecutorSpec,
    parse_launch,
    parse_task,
    parse_task_group,
    resolve_argv,
    vm_size,
)
from hypervm.config import MesosPolicy
from hypervm.errors import InvalidSpec
from vmimage.images.config import ImageConfig

IMAGE = {"type": "MESOS", "mesos": {"image": {"type": "DOCKER", "docker": {"name": "alpine:3"}}}}


def res(cpus: float = 0.5, mem: float = 128) -> list[dict[str, Any]]:
    return [{"name": "cpus", "type": "SCALAR", "scalar": {"value": cpus}},
            {"name": "mem", "type": "SCALAR", "scalar": {"value": mem}}]


def task(tid: str = "t1", **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"task_id": {"value": tid}, "name": tid, "agent_id": {"value": "a"},
                            "resources": res(), "container": IMAGE,
                            "command": {"value": "echo hi"}}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def invalid(field: str, fn: Any, *args: Any, **kwargs: Any) -> InvalidSpec:
    with pytest.raises(InvalidSpec) as info:
        fn(*args, **kwargs)
    assert info.value.field == field, str(info.value)
    return info.value


def test_group_of_two_tasks() -> None:
    specs = parse_task_group({"tasks": [task("a"), task("b", command={"value": "exit 2"})]})
    assert [s.task_id for s in specs] == ["a", "b"]
    assert specs[0].image == "alpine:3"
    assert specs[1].command == CommandSpec(shell=True, value="exit 2", present=True)
    assert specs[1].where == "task_group.tasks[1]"
    assert specs[0].cpus == 0.5 and specs[0].mem_mib == 128


def test_image_from_docker_container_only_for_launch() -> None:
    docker = {"type": "DOCKER", "docker": {"image": "nginx:1.25"}}
    assert parse_launch({"task": task(container=docker)}).image == "nginx:1.25"
    invalid("task_group.tasks[0].container.type", parse_task_group,
            {"tasks": [task(container=docker)]})


def test_image_from_marathon_label() -> None:
    labels = {"labels": [{"key": "hypervm.image", "value": "redis:7"}]}
    spec = parse_task(task(container=None, labels=labels), "task")
    assert spec.image == "redis:7"
    assert ("hypervm.image", "redis:7") in spec.labels


def test_pull_policy_follows_mesos_fields() -> None:
    assert parse_task(task(), "task").pull_policy == "missing"  # Image.cached defaults to true
    uncached = {"type": "MESOS", "mesos": {"image": {"type": "DOCKER", "cached": False,
                                                     "docker": {"name": "alpine:3"}}}}
    assert parse_task(task(container=uncached), "task").pull_policy == "always"
    forced = {"type": "DOCKER", "docker": {"image": "nginx:1.25", "force_pull_image": True}}
    assert parse_launch({"task": task(container=forced)}).pull_policy == "always"
    bad = {"type": "MESOS", "mesos": {"image": {"type": "DOCKER", "cached": "no",
                                                "docker": {"name": "alpine:3"}}}}
    invalid("task.container.mesos.image.cached", parse_task, task(container=bad), "task")


def test_no_image_names_the_fix() -> None:
    err = invalid("task.container", parse_task, task(container=None), "task")
    assert "hypervm.image" in str(err)


def test_appc_image_rejected() -> None:
    appc = {"type": "MESOS", "mesos": {"image": {"type": "APPC", "appc": {"name": "x"}}}}
    invalid("task.container.mesos.image.type", parse_task, task(container=appc), "task")


@pytest.mark.parametrize("resources, field", [
    (res(mem=-1), "task_group.tasks[1].resources.mem"),
    (res(cpus=0), "task_group.tasks[1].resources.cpus"),
    ([{"name": "mem", "type": "SCALAR", "scalar": {"value": "lots"}}],
     "task_group.tasks[1].resources[0].scalar.value"),
    ([], "task_group.tasks[1].resources"),
])
def test_bad_resources_name_the_field(resources: Any, field: str) -> None:
    invalid(field, parse_task_group, {"tasks": [task("a"), task("b", resources=resources)]})


@pytest.mark.parametrize("command, field", [
    ({"shell": True}, "task.command.value"),
    ({"value": 42}, "task.command.value"),
    ({"value": "x", "shell": "yes"}, "task.command.shell"),
    ({"shell": False, "arguments": "not a list"}, "task.command.arguments"),
    ({"value": "x", "uris": [{"value": "http://x"}]}, "task.command.uris"),
    ({"value": "x", "environment": {"variables": [{"name": "A", "type": "SECRET"}]}},
     "task.command.environment.variables[0].type"),
])
def test_malformed_commands(command: Any, field: str) -> None:
    invalid(field, parse_task, task(command=command), "task")


def test_command_env_and_user() -> None:
    env = {"variables": [{"name": "A", "value": "1"}, {"name": "B", "value": ""}]}
    spec = parse_task(task(command={"value": "true", "environment": env, "user": "nobody"}),
                      "task")
    assert spec.env == ("A=1", "B=")
    assert spec.user == "nobody"


@pytest.mark.parametrize("command, entrypoint, cmd, expected", [
    (CommandSpec(True, "echo hi", (), True), ("/ep",), ("c",), ("/bin/sh", "-c", "echo hi")),
    # Mesos' execv semantics: arguments[0] is argv[0]
    (CommandSpec(False, "/bin/echo", ("echo", "a", "b"), True), ("/ep",), (),
     ("/bin/echo", "a", "b")),
    (CommandSpec(False, "/bin/true", (), True), (), (), ("/bin/true",)),
    (CommandSpec(False, None, ("x", "y"), True), ("/ep",), ("c",), ("/ep", "x", "y")),
    (CommandSpec(False, None, (), True), ("/ep",), ("c",), ("/ep", "c")),
    (CommandSpec(), ("/ep",), ("c", "d"), ("/ep", "c", "d")),
    (CommandSpec(), (), ("sh",), ("sh",)),
])
def test_resolve_argv(command: CommandSpec, entrypoint: Any, cmd: Any, expected: Any) -> None:
    assert resolve_argv(command, entrypoint, cmd, "task") == expected


def test_no_command_and_no_image_command() -> None:
    invalid("task.command", resolve_argv, CommandSpec(), (), (), "task")


def test_volumes() -> None:
    volumes = [
        {"mode": "RW", "container_path": "data",
         "source": {"type": "SANDBOX_PATH", "sandbox_path": {"type": "PARENT", "path": "shared"}}},
        {"mode": "RO", "container_path": "/etc/cfg",
         "source": {"type": "HOST_PATH", "host_path": {"path": "/srv/cfg"}}},
        {"mode": "RO", "container_path": "/legacy", "host_path": "/srv/legacy"},
    ]
    container = dict(IMAGE, volumes=volumes)
    # the operator allows host paths under /srv (by default none is: see the tests below)
    spec = parse_task(task(container=container), "task",
                      policy=MesosPolicy(host_path_prefixes=("/srv",)))
    assert [(v.container_path, v.kind, v.source, v.readonly) for v in spec.volumes] == [
        (f"{CONTAINER_SANDBOX}/data", "sandbox_parent", "shared", False),
        ("/etc/cfg", "host", "/srv/cfg", True),
        ("/legacy", "host", "/srv/legacy", True),
    ]


@pytest.mark.parametrize("volume, field", [
    ({"mode": "RX", "container_path": "/x", "host_path": "/y"}, "mode"),
    ({"mode": "RO", "container_path": "/x",
      "source": {"type": "SANDBOX_PATH", "sandbox_path": {"type": "SELF", "path": "../up"}}},
     "source.sandbox_path.path"),
    ({"mode": "RO", "container_path": "/x", "source": {"type": "SECRET"}}, "source.type"),
    ({"mode": "RO", "container_path": "/x",
      "source": {"type": "HOST_PATH", "host_path": {"path": "relative"}}},
     "source.host_path.path"),
])
def test_bad_volumes(volume: Any, field: str) -> None:
    container = dict(IMAGE, volumes=[volume])
    invalid(f"task.container.volumes[0].{field}", parse_task, task(container=container), "task")


def test_kill_policy_and_health_check_defaults() -> None:
    spec = parse_task(task(kill_policy={"grace_period": {"nanoseconds": "2500000000"}},
                           health_check={"type": "COMMAND", "command": {"value": "true"}}),
                      "task")
    assert spec.kill_grace_s == 2.5
    hc = spec.health_check
    assert hc is not None
    assert (hc.delay_s, hc.interval_s, hc.timeout_s, hc.consecutive_failures,
            hc.grace_period_s) == (15.0, 10.0, 20.0, 3, 10.0)


@pytest.mark.parametrize("check, field", [
    ({"type": "GRPC"}, "type"),
    ({"type": "TCP", "tcp": {"port": 70000}}, "tcp.port"),
    ({"type": "HTTP", "http": {"port": 80, "path": "health"}}, "http.path"),
    ({"type": "COMMAND", "command": {"value": "true"}, "consecutive_failures": 0},
     "consecutive_failures"),
    ({"type": "COMMAND", "command": {"value": "true"}, "interval_seconds": -1},
     "interval_seconds"),
])
def test_bad_health_checks(check: Any, field: str) -> None:
    invalid(f"task.health_check.{field}", parse_task, task(health_check=check), "task")


def test_http_health_check_statuses() -> None:
    spec = parse_task(task(health_check={"type": "HTTP", "http": {"port": 8080}}), "task")
    assert spec.health_check is not None
    assert spec.health_check.http_ok(204) and not spec.health_check.http_ok(500)


def test_duplicate_and_missing_ids() -> None:
    invalid("task_group.tasks[1].task_id", parse_task_group, {"tasks": [task("a"), task("a")]})
    invalid("task_group.tasks[0].task_id", parse_task_group, {"tasks": [task(task_id=None)]})
    invalid("task_group.tasks", parse_task_group, {"tasks": []})


def test_group_tasks_carry_their_executor_as_the_master_sets_it() -> None:
    """The real master copies the group's ExecutorInfo into every task (master.cpp)."""
    mine = {"executor_id": {"value": "ex-1"}, "type": "CUSTOM",
            "command": {"value": "/usr/local/bin/hypervm-executor"}, "resources": res(0.1, 32)}
    specs = parse_task_group({"tasks": [task("a", executor=mine), task("b", executor=mine)]},
                             executor_id="ex-1")
    assert [s.task_id for s in specs] == ["a", "b"]
    other = dict(mine, executor_id={"value": "ex-2"})
    error = invalid("task_group.tasks[1].executor.executor_id", parse_task_group,
                    {"tasks": [task("a", executor=mine), task("b", executor=other)]},
                    executor_id="ex-1")
    assert "'ex-2'" in str(error)
    invalid("task_group.tasks[0].executor", parse_task_group,
            {"tasks": [task("a", executor="ex-1")]}, executor_id="ex-1")


def test_vm_size_policy() -> None:
    specs = parse_task_group({"tasks": [task("a", resources=res(0.5, 100)),
                                        task("b", resources=res(1.0, 28))]})
    executor = ExecutorSpec("e", "f", cpus=0.1, mem_mib=32)
    assert vm_size(specs, executor) == (2, 160)
    small = parse_task_group({"tasks": [task("a", resources=res(0.1, 16))]})
    assert vm_size(small, None) == (1, 64)
    huge = parse_task_group({"tasks": [task("a", resources=res(1000, 16))]})
    invalid("resources.cpus", vm_size, huge, None)


def test_build_container(tmp_path: Path) -> None:
    spec = parse_task(task(command={"value": "run", "environment": {
        "variables": [{"name": "PATH", "value": "/opt/bin"}]}}), "task")
    plan = PodPlan("p", (spec,), 1, 128, tmp_path, {"t1": tmp_path / "t1"})
    (tmp_path / "t1").mkdir()
    config = ImageConfig(env=("PATH=/usr/bin", "LANG=C"), working_dir="/srv", user="")
    container = build_container(spec, container_names((spec,))["t1"], (tmp_path / "l0",),
                                config, lambda _user: (1000, 1000, (10,)), plan)
    assert container.process.args == ("/bin/sh", "-c", "run")
    assert container.process.cwd == "/srv"
    assert (container.process.uid, container.process.gid) == (1000, 1000)
    assert container.process.env == ("PATH=/opt/bin", "LANG=C",
                                     f"MESOS_SANDBOX={CONTAINER_SANDBOX}", "MESOS_TASK_ID=t1")
    assert container.mounts[0].source == tmp_path / "t1"
    container.validate()


def test_task_env_order() -> None:
    spec = parse_task(task(), "task")
    env = task_env(spec, ("MESOS_TASK_ID=x", "A=image"))
    assert "MESOS_TASK_ID=t1" in env and "MESOS_TASK_ID=x" not in env and "A=image" in env


def marathon_data(app: dict[str, Any]) -> str:
    import base64
    import json

    return base64.b64encode(json.dumps(app).encode()).decode()


def test_marathon_app_command_from_task_data() -> None:
    labels = {"labels": [{"key": "hypervm.image", "value": "busybox"}]}
    app = {"id": "/web", "cmd": "httpd -f", "env": {"A": "1", "S": {"secret": "x"}},
           "user": "www"}
    spec = parse_task(task(container=None, command=None, labels=labels,
                           data=marathon_data(app)), "task")
    assert spec.command == CommandSpec(shell=True, value="httpd -f", present=True)
    assert spec.env == ("A=1",) and spec.user == "www"
    args = parse_task(task(container=None, command=None, labels=labels,
                           data=marathon_data({"id": "/x", "args": ["-v", "1"]})), "task")
    assert resolve_argv(args.command, ("/ep",), ("c",), "task") == ("/ep", "-v", "1")
    opaque = parse_task(task(command=None, data="bm90IGpzb24="), "task")  # "not json"
    assert opaque.command == CommandSpec()


def ports(*ranges: tuple[int, int]) -> dict[str, Any]:
    return {"name": "ports", "type": "RANGES", "allocation_info": {"role": "tenant-a"},
            "ranges": {"range": [{"begin": b, "end": e} for b, e in ranges]}}


def test_ports_discovery_and_role() -> None:
    discovery = {"visibility": "FRAMEWORK",
                 "ports": {"ports": [{"number": 80, "protocol": "tcp"}, {"number": 53,
                                                                         "protocol": "udp"}]}}
    spec = parse_task(task(resources=[*res(), ports((31000, 31001), (31005, 31005))],
                           discovery=discovery), "task")
    assert spec.port_ranges == ((31000, 31001), (31005, 31005))
    assert spec.container_ports == ((80, "tcp"), (53, "udp"))
    assert spec.role == "tenant-a"
    from executor.mesos.runtime import pod_network, probe_address

    network = pod_network((spec,))
    assert network.tenant == "tenant-a"
    assert [(m.host_port, m.container_port, m.protocol) for m in network.ports] == [
        (31000, 80, "tcp"), (31001, 53, "udp"), (31005, 31005, "tcp")]
    assert probe_address(network, 80, "check") == ("127.0.0.1", 31000)
    with pytest.raises(Exception, match="not published"):
        probe_address(network, 8080, "check")


def test_bad_port_ranges_name_the_field() -> None:
    invalid("task.resources[2].ranges.range[0]", parse_task,
            task(resources=[*res(), ports((32000, 31000))]), "task")
    too_many = {"ports": {"ports": [{"number": 1}, {"number": 2}]}}
    spec = parse_task(task(resources=[*res(), ports((31000, 31000))], discovery=too_many),
                      "task")
    from executor.mesos.runtime import pod_network

    invalid("task.resources.ports", pod_network, (spec,))


def test_tcp_check_sees_a_connection_the_user_mode_network_drops(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """QEMU's hostfwd accepts every connection and closes it when the guest refuses: that is a
    failed check, a connection that stays open (or gets data) a passed one."""
    import contextlib
    import socket
    import threading

    from executor.mesos import runtime as mesos_runtime

    def serve(behaviour: str) -> tuple[str, int]:
        listener = socket.create_server(("127.0.0.1", 0))

        def run() -> None:
            conn, _ = listener.accept()
            with conn, listener:
                if behaviour == "greet":
                    conn.sendall(b"220 hi\r\n")
                if behaviour != "close":  # keep it open until the client goes
                    with contextlib.suppress(OSError):
                        conn.recv(1)

        threading.Thread(target=run, daemon=True).start()
        return listener.getsockname()

    monkeypatch.setattr(mesos_runtime, "TCP_SETTLE_S", 0.3)
    with pytest.raises(ConnectionRefusedError):
        mesos_runtime.tcp_check(serve("close"), 5)
    assert mesos_runtime.tcp_check(serve("open"), 5) is True
    assert mesos_runtime.tcp_check(serve("greet"), 5) is True
