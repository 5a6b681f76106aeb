"""What a Mesos TaskInfo may ask of the host (issue 15, findings 2 and 3): image sources and
volume paths, refused with the field named unless the operator allows them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from executor.mesos.runtime import PodPlan, task_mounts
from executor.mesos.taskinfo import parse_task, parse_task_group
from hypervm.config import MesosPolicy, mesos_policy_from_env
from hypervm.errors import InvalidSpec
from tests.mesos import fixtures
from tests.mesos.fake_runtime import journal
from tests.mesos.fixtures import agent, agent_factory  # noqa: F401
from tests.unit.test_taskinfo import IMAGE, invalid, task

LOCAL_SOURCES = ["docker-daemon:busybox:1.36", "docker-archive:/etc/shadow",
                 "oci:/var/lib/hypervm:x", " docker-archive:/root/.ssh/id_rsa"]
ALLOW_SRV = MesosPolicy(host_path_prefixes=("/srv/data",))


def mesos_image(name: str) -> dict[str, Any]:
    return {"type": "MESOS", "mesos": {"image": {"type": "DOCKER", "docker": {"name": name}}}}


# ---------------------------------------------------------------------------- image sources


@pytest.mark.parametrize("ref", LOCAL_SOURCES)
def test_local_image_sources_are_refused_naming_the_field(ref: str) -> None:
    error = invalid("task.container.mesos.image.docker.name", parse_task,
                    task(container=mesos_image(ref)), "task")
    assert "HYPERVM_MESOS_LOCAL_IMAGE_SOURCES" in str(error)
    invalid("task.container.docker.image", parse_task,
            task(container={"type": "DOCKER", "docker": {"image": ref}}), "task")
    label = {"labels": [{"key": "other", "value": "x"}, {"key": "hypervm.image", "value": ref}]}
    invalid("task.labels.labels[1].value", parse_task, task(container=None, labels=label), "task")
    invalid("task_group.tasks[1].container.mesos.image.docker.name", parse_task_group,
            {"tasks": [task("a"), task("b", container=mesos_image(ref))]})


@pytest.mark.parametrize("ref", LOCAL_SOURCES)
def test_the_operator_may_allow_local_image_sources(ref: str) -> None:
    policy = mesos_policy_from_env({"HYPERVM_MESOS_LOCAL_IMAGE_SOURCES": "on"})
    assert parse_task(task(container=mesos_image(ref)), "task", policy=policy).image == ref


@pytest.mark.parametrize("ref", ["busybox", "docker://busybox:1", "localhost:5000/a/b:1",
                                 "quay.io/x/y@sha256:" + "a" * 64])
def test_registry_images_are_accepted(ref: str) -> None:
    assert parse_task(task(container=mesos_image(ref)), "task").image == ref


def test_a_malformed_reference_names_the_field() -> None:
    invalid("task.container.mesos.image.docker.name", parse_task,
            task(container=mesos_image("dir:/etc")), "task")


# ---------------------------------------------------------------------------- volume paths


def volumes(*vols: dict[str, Any]) -> dict[str, Any]:
    return task(container=dict(IMAGE, volumes=list(vols)))


def host(path: str) -> dict[str, Any]:
    return {"mode": "RW", "container_path": "/x",
            "source": {"type": "HOST_PATH", "host_path": {"path": path}}}


def sandbox(path: str, which: str = "SELF") -> dict[str, Any]:
    return {"mode": "RW", "container_path": "/x",
            "source": {"type": "SANDBOX_PATH", "sandbox_path": {"type": which, "path": path}}}


@pytest.mark.parametrize("path", ["../../../etc", "a/../../x", "./..", "sub/.."])
def test_relative_legacy_host_path_cannot_leave_the_sandbox(path: str) -> None:
    vol = {"mode": "RW", "container_path": "/x", "host_path": path}
    invalid("task.container.volumes[0].host_path", parse_task, volumes(vol), "task")


def test_relative_legacy_host_path_is_a_sandbox_path() -> None:
    vol = {"mode": "RW", "container_path": "/x", "host_path": "./data//sub/"}
    spec = parse_task(volumes(vol), "task")
    assert [(v.kind, v.source) for v in spec.volumes] == [("sandbox_self", "data/sub")]


def test_host_path_volumes_are_refused_by_default() -> None:
    error = invalid("task.container.volumes[0].source.host_path.path", parse_task,
                    volumes(host("/srv/data/x")), "task")
    assert "HYPERVM_HOST_PATH_PREFIXES" in str(error)
    invalid("task.container.volumes[0].host_path", parse_task,
            volumes({"mode": "RO", "container_path": "/x", "host_path": "/etc"}), "task")


@pytest.mark.parametrize("path", ["/srv/data/../../etc", "/srv/database", "/srv", "/etc",
                                  "/srv/data/a\x00b", "/srv/data/" + "a" * 4096])
def test_host_paths_outside_the_allowed_prefixes_are_refused(path: str) -> None:
    invalid("task.container.volumes[1].source.host_path.path", parse_task,
            volumes(sandbox("ok"), host(path)), "task", policy=ALLOW_SRV)


def test_host_paths_under_an_allowed_prefix_are_accepted() -> None:
    spec = parse_task(volumes(host("/srv/data"), host("/srv/data//a/./b/")), "task",
                      policy=ALLOW_SRV)
    assert [v.source for v in spec.volumes] == ["/srv/data", "/srv/data/a/b"]


@pytest.mark.parametrize("path", ["/abs", "..", "x/../..", "a\x00"])
def test_sandbox_paths_stay_inside(path: str) -> None:
    invalid("task.container.volumes[0].source.sandbox_path.path", parse_task,
            volumes(sandbox(path)), "task")


def test_prefixes_from_the_environment() -> None:
    policy = mesos_policy_from_env({"HYPERVM_HOST_PATH_PREFIXES": "/srv/data/: /mnt/x"})
    assert policy == MesosPolicy(False, ("/srv/data", "/mnt/x"))
    assert mesos_policy_from_env({}) == MesosPolicy(False, ())
    for bad in ("relative", "/a/../b"):
        invalid("HYPERVM_HOST_PATH_PREFIXES", mesos_policy_from_env,
                {"HYPERVM_HOST_PATH_PREFIXES": bad})
    invalid("HYPERVM_MESOS_LOCAL_IMAGE_SOURCES", mesos_policy_from_env,
            {"HYPERVM_MESOS_LOCAL_IMAGE_SOURCES": "yes-please"})


# ---------------------------------------------------------------------------- on the agent


def plan_for(spec: Any, sandbox_dir: Path, prefixes: tuple[str, ...] = ()) -> PodPlan:
    return PodPlan("p", (spec,), 1, 128, sandbox_dir, {spec.task_id: sandbox_dir / "t1"},
                   host_path_prefixes=prefixes)


def test_a_guest_made_link_in_the_sandbox_is_not_followed(tmp_path: Path) -> None:
    """The guest writes the sandbox: a link it plants must not make root create (and then hand
    to QEMU) a directory elsewhere on the host."""
    (tmp_path / "sb" / "t1").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, tmp_path / "sb" / "t1" / "link")
    spec = parse_task(volumes(sandbox("link/sub")), "t1")
    with pytest.raises(InvalidSpec) as info:
        task_mounts(spec, plan_for(spec, tmp_path / "sb"))
    assert info.value.field == "t1.container.volumes[0].source.sandbox_path.path"
    assert list(outside.iterdir()) == []


def test_a_file_in_the_way_or_a_missing_sandbox_names_the_field(tmp_path: Path) -> None:
    (tmp_path / "sb" / "t1").mkdir(parents=True)
    (tmp_path / "sb" / "t1" / "file").write_text("guest-made")
    for path, plan in (("file/sub", plan_for), ("x", None)):
        spec = parse_task(volumes(sandbox(path)), "t1")
        pod = plan_for(spec, tmp_path / "sb") if plan else PodPlan(
            "p", (spec,), 1, 128, tmp_path / "gone", {"t1": tmp_path / "gone" / "t1"})
        with pytest.raises(InvalidSpec) as info:
            task_mounts(spec, pod)
        assert info.value.field == "t1.container.volumes[0].source.sandbox_path.path"


def test_sandbox_volumes_are_made_inside_the_sandbox(tmp_path: Path) -> None:
    (tmp_path / "sb" / "t1").mkdir(parents=True)
    spec = parse_task(volumes(sandbox("a/b"), sandbox("shared", "PARENT")), "t1")
    mounts = task_mounts(spec, plan_for(spec, tmp_path / "sb"))
    assert [m.source for m in mounts[1:]] == [tmp_path / "sb/t1/a/b", tmp_path / "sb/shared"]
    assert all(m.source.is_dir() and not m.source.is_symlink() for m in mounts[1:])


def test_host_path_is_checked_again_after_resolving_links(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    (allowed / "real").mkdir(parents=True)
    os.symlink("/etc", allowed / "escape")
    (tmp_path / "sb" / "t1").mkdir(parents=True)
    policy = MesosPolicy(host_path_prefixes=(str(allowed),))
    spec = parse_task(volumes(host(f"{allowed}/real"), host(f"{allowed}/escape")), "t1",
                      policy=policy)
    with pytest.raises(InvalidSpec) as info:
        task_mounts(spec, plan_for(spec, tmp_path / "sb", policy.host_path_prefixes))
    assert info.value.field == "t1.container.volumes[1].source.host_path.path"
    assert "/etc" in str(info.value)
    spec = parse_task(volumes(host(f"{allowed}/real")), "t1", policy=policy)
    mounts = task_mounts(spec, plan_for(spec, tmp_path / "sb", policy.host_path_prefixes))
    assert mounts[1].source == allowed / "real" and not mounts[1].owned


# ---------------------------------------------------------------------------- the executor


def test_the_executor_fails_a_local_image_naming_the_field(agent: Any) -> None:  # noqa: F811
    agent.launch(fixtures.task("local", "true", img="docker-archive:/etc/shadow"))
    status = agent.wait_terminal("local")
    assert status["state"] == "TASK_FAILED"
    assert status["reason"] == "REASON_TASK_INVALID"
    assert "task.container.mesos.image.docker.name" in status["message"]
    assert agent.states("local") == ["TASK_FAILED"]
    assert journal(agent.sandbox) == []  # nothing was pulled, no pod was made


def test_host_path_volumes_follow_the_operators_prefixes(agent_factory: Any,  # noqa: F811
                                                         tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    container = dict(fixtures.image(), volumes=[host(str(allowed))])
    refused = agent_factory()
    refused.start_executor()
    refused.wait_subscribed()
    refused.launch(fixtures.task("h", "true", container=container))
    status = refused.wait_terminal("h")
    assert status["state"] == "TASK_FAILED"
    assert "task.container.volumes[0].source.host_path.path" in status["message"]
    # configured: the operator allows the directory
    ok = agent_factory(env={"HYPERVM_HOST_PATH_PREFIXES": str(allowed)})
    ok.start_executor()
    ok.wait_subscribed()
    ok.launch(fixtures.task("h", "true", container=container))
    assert ok.wait_terminal("h")["state"] == "TASK_FINISHED"
    mounts = journal(ok.sandbox)[0]["containers"]["h"]["mounts"]
    assert ["/x", str(allowed), False] in mounts
