"""Issue 15 finding 8 through the Mesos executor: tenant A runs its private image with the
credentials its framework sends (Image.Docker.config); tenant B, naming the same image, which
is now cached on the agent, is refused without credentials and served with its own."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_TAG
from tests.integration import imagebuild
from tests.integration.registry import Registry, running_registry
from tests.integration.test_mesos_vm import BOOT, task
from tests.mesos.fixtures import vm_agents

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(400),
              pytest.mark.usefixtures("no_leaked_domains")]
USERS = {"alice": "alice-pw", "bob": "bob-pw"}


@pytest.fixture(scope="module")
def private_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("private-registry"), USERS) as reg:
        yield reg


@pytest.fixture
def agents() -> Iterator[Any]:
    with vm_agents("hypervm-authz-", f"{TEST_TAG}-authz", 4000) as make:
        yield make


def tenant_task(tid: str, ref: str, role: str, user: str | None = None) -> dict[str, Any]:
    out = task(tid, "echo ran", ref)
    for res in out["resources"]:
        res["allocation_info"] = {"role": role}
    if user is not None:
        token = base64.b64encode(f"{user}:{USERS[user]}".encode()).decode()
        host = ref.split("/", 1)[0]
        config = json.dumps({"auths": {host: {"auth": token}}}).encode()
        out["container"]["mesos"]["image"]["docker"]["config"] = {
            "type": "VALUE", "value": {"data": base64.b64encode(config).decode()}}
    return out


def test_a_cached_private_image_needs_the_tenants_own_credentials(
        agents: Any, private_registry: Registry, tmp_path: Path) -> None:
    built = imagebuild.busybox_base(tmp_path / "layout")
    ref = imagebuild.push(built, private_registry.host, f"{TEST_TAG}-private", "1",
                          creds="alice:alice-pw")
    a = agents()
    a.launch_group([tenant_task("a", ref, "tenant-a", "alice")])
    assert a.wait_terminal("a", BOOT)["state"] == "TASK_FINISHED"
    assert a.wait_executor_exit(60) == 0
    transferred = private_registry.blob_gets()
    # the image is in the agent's cache now; tenant B names it without credentials
    b = agents()
    b.launch_group([tenant_task("b", ref, "tenant-b")])
    status = b.wait_terminal("b", BOOT)
    assert status["state"] == "TASK_FAILED", status
    assert "tenant-b" in status["message"] and "docker.config" in status["message"], status
    assert "unauthorized" in status["message"], status
    # with credentials of its own it runs (from the cache)
    c = agents()
    c.launch_group([tenant_task("c", ref, "tenant-b", "bob")])
    assert c.wait_terminal("c", BOOT)["state"] == "TASK_FINISHED"
    assert c.wait_executor_exit(60) == 0
    assert private_registry.blob_gets() == transferred  # no blob fetched again
