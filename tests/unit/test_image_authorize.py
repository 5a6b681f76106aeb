"""Issue 15 finding 8: a tenant's cache hit is authorized by the registry with the tenant's own
credentials, remembered for a TTL; a task's credentials come from Image.Docker.config."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from executor.mesos.taskinfo import parse_task
from hypervm.config import config_from_env
from hypervm.errors import ImageError, InvalidSpec
from hypervm.imageref import parse_registry_ref
from vmimage.images import authorize as authz
from vmimage.images.authorize import Ledger, PullAuth, authorize, grant_key
from vmimage.images.credentials import (
    ANONYMOUS,
    TaskCredentials,
    identity,
    parse_docker_config,
)

REF = parse_registry_ref("reg.example:5000/private/app:1")
DIGEST = "sha256:" + "a" * 64


def docker_config(user: str, password: str, registry: str = "reg.example:5000") -> bytes:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return json.dumps({"auths": {registry: {"auth": token}}}).encode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeRegistry:
    """skopeo.inspect_raw as a registry that lets only ``allowed`` auth files read."""

    def __init__(self, allowed: set[str | None]) -> None:
        self.allowed = allowed
        self.calls: list[tuple[str, str | None]] = []

    def __call__(self, image: str, source: str, *, insecure: bool = False,
                 authfile: Path | None = None) -> bytes:
        entry = None
        if authfile is not None:
            auths = json.loads(authfile.read_text())["auths"]
            entry = auths.get("reg.example:5000", {}).get("auth")
        self.calls.append((source, entry))
        if entry not in self.allowed:
            raise ImageError(image, "skopeo failed: unauthorized: authentication required",
                             hint="log in first")
        return b"{}"


def write_authfile(tmp_path: Path, creds: TaskCredentials | None, name: str) -> Path | None:
    entry = creds.entry_for(REF.domain) if creds else None
    if entry is None:
        return None
    path = tmp_path / name
    path.write_text(json.dumps({"auths": {REF.domain: entry}}))
    return path


def test_ledger_remembers_for_the_ttl_only(tmp_path: Path) -> None:
    clock = Clock()
    ledger = Ledger(tmp_path / "grants", ttl=300, clock=clock)
    assert not ledger.fresh("k")
    ledger.remember("k")
    assert ledger.fresh("k")
    assert (tmp_path / "grants").stat().st_mode & 0o077 == 0  # root only
    clock.now += 299
    assert ledger.fresh("k")
    clock.now += 2
    assert not ledger.fresh("k")
    clock.now -= 400  # a grant from the future (clock stepped back) is not trusted
    assert not ledger.fresh("k")
    ledger.prune()
    assert not (tmp_path / "grants" / "k").exists()


def test_ttl_zero_never_remembers(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "grants", ttl=0)
    ledger.remember("k")
    assert not ledger.fresh("k")


def test_grant_keys_separate_tenants_refs_digests_and_credentials() -> None:
    alice = identity(parse_docker_config(docker_config("alice", "pw"), "c"), REF.domain)
    bob = identity(parse_docker_config(docker_config("bob", "pw"), "c"), REF.domain)
    assert alice.startswith("sha256:") and alice != bob and "pw" not in alice
    key = grant_key("a", str(REF), DIGEST, alice)
    assert key != grant_key("b", str(REF), DIGEST, alice)
    assert key != grant_key("a", str(REF), DIGEST, bob)
    assert key != grant_key("a", str(REF), "sha256:" + "b" * 64, alice)
    assert key != grant_key("a", "reg.example:5000/private/app:2", DIGEST, alice)
    # public access proven once holds for every tenant
    assert grant_key("a", str(REF), DIGEST, ANONYMOUS) == grant_key("b", str(REF), DIGEST,
                                                                   ANONYMOUS)


def test_cache_hit_is_checked_with_the_tenants_credentials(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    alice = parse_docker_config(docker_config("alice", "pw"), "c")
    registry = FakeRegistry({alice.entry_for(REF.domain)["auth"]})  # type: ignore[index]
    monkeypatch.setattr(authz.skopeo, "inspect_raw", registry)
    clock = Clock()
    ledger = Ledger(tmp_path / "grants", ttl=300, clock=clock)

    def check(tenant: str, creds: TaskCredentials | None) -> None:
        authorize(ledger, REF, DIGEST, PullAuth(tenant, creds), insecure=True,
                  authfile=write_authfile(tmp_path, creds, f"{tenant}-{len(registry.calls)}"))

    check("a", alice)
    assert registry.calls == [(f"docker://reg.example:5000/private/app@{DIGEST}",
                               alice.entry_for(REF.domain)["auth"])]  # type: ignore[index]
    check("a", alice)  # remembered: no second registry round trip
    assert len(registry.calls) == 1
    with pytest.raises(ImageError) as info:  # tenant B, no credentials: refused
        check("b", None)
    assert "'b'" in str(info.value) and "anonymous" in str(info.value)
    assert "docker.config" in str(info.value)
    with pytest.raises(ImageError):  # tenant B, wrong credentials
        check("b", parse_docker_config(docker_config("alice", "guess"), "c"))
    assert len(registry.calls) == 3  # refusals are never remembered
    clock.now += 301  # the grant expired: ask the registry again
    check("a", alice)
    assert len(registry.calls) == 4
    registry.allowed.clear()  # access revoked: refused once the TTL is over
    clock.now += 301
    with pytest.raises(ImageError):
        check("a", alice)


def test_docker_config_parsing() -> None:
    creds = parse_docker_config(docker_config("alice", "pw", "https://reg.example:5000/v1/"),
                                "cfg")
    entry = creds.entry_for("reg.example:5000")
    assert entry == {"auth": base64.b64encode(b"alice:pw").decode()}
    assert creds.entry_for("other.example") is None
    assert "pw" not in repr(creds)
    # a tenant names no credential helper the host would run
    helper = json.dumps({"credsStore": "evil", "credHelpers": {"reg.example:5000": "evil"},
                         "auths": {}}).encode()
    assert parse_docker_config(helper, "cfg").entry_for("reg.example:5000") is None
    token = parse_docker_config(json.dumps({"auths": {"r.example": {
        "identitytoken": "tok"}}}).encode(), "cfg")
    assert token.entry_for("r.example") == {"identitytoken": "tok"}


@pytest.mark.parametrize("data, field", [
    (b"not json", "cfg"),
    (b"[]", "cfg"),
    (b'{"auths": {"r": "x"}}', "cfg.auths['r']"),
    (b'{"auths": {"r": {"auth": "!!"}}}', "cfg.auths['r'].auth"),
    (b'{"auths": {"r": {"auth": "bm9jb2xvbg=="}}}', "cfg.auths['r'].auth"),  # "nocolon"
    (b'{"auths": {"r": {"password": 5}}}', "cfg.auths['r'].password"),
    (b" " * 70000, "cfg"),
])
def test_bad_docker_configs_name_the_field(data: bytes, field: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_docker_config(data, "cfg")
    assert info.value.field == field


def mesos_task(config: Any) -> dict[str, Any]:
    docker: dict[str, Any] = {"name": "reg.example:5000/private/app:1"}
    if config is not None:
        docker["config"] = config
    return {"task_id": {"value": "t1"}, "name": "t1",
            "command": {"value": "true"},
            "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1},
                           "role": "tenant-a"}],
            "container": {"type": "MESOS", "mesos": {"image": {"type": "DOCKER",
                                                               "docker": docker}}}}


def test_image_docker_config_secret_reaches_the_task_spec() -> None:
    data = base64.b64encode(docker_config("alice", "pw")).decode()
    spec = parse_task(mesos_task({"type": "VALUE", "value": {"data": data}}), "task",
                      group=True)
    assert spec.role == "tenant-a"
    assert spec.image_credentials.entry_for("reg.example:5000") == {
        "auth": base64.b64encode(b"alice:pw").decode()}
    assert parse_task(mesos_task(None), "task", group=True).image_credentials is None


@pytest.mark.parametrize("secret, field", [
    ({"type": "REFERENCE", "reference": {"name": "x"}},
     "task.container.mesos.image.docker.config.reference"),
    ({"type": "VALUE", "value": {"data": "%%%"}},
     "task.container.mesos.image.docker.config.value.data"),
    ({"type": "VALUE", "value": {}}, "task.container.mesos.image.docker.config.value.data"),
    ({"type": "OTHER"}, "task.container.mesos.image.docker.config.type"),
    ("text", "task.container.mesos.image.docker.config"),
    ({"type": "VALUE", "value": {"data": base64.b64encode(b"{").decode()}},
     "task.container.mesos.image.docker.config"),
])
def test_bad_secrets_name_the_field(secret: Any, field: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_task(mesos_task(secret), "task", group=True)
    assert info.value.field == field


def test_settings() -> None:
    cfg = config_from_env({})
    assert cfg.image_auth_ttl_s == 300 and not cfg.task_host_credentials
    cfg = config_from_env({"HYPERVM_IMAGE_AUTH_TTL": "5", "HYPERVM_TASK_HOST_CREDENTIALS": "on"})
    assert cfg.image_auth_ttl_s == 5 and cfg.task_host_credentials
    for bad in ("-1", "soon"):
        with pytest.raises(InvalidSpec) as info:
            config_from_env({"HYPERVM_IMAGE_AUTH_TTL": bad})
        assert info.value.field == "HYPERVM_IMAGE_AUTH_TTL"


def test_a_fresh_grant_costs_no_staging_dir_nor_registry_call(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 18: a launch's cache hit with a fresh grant asks the ledger only (the staging dir
    and authfile it made before cost ~3 ms a launch); an expired grant asks the registry."""
    from vmimage.images.store import ImageStore

    registry = FakeRegistry({None})  # a public image: anonymous reads allowed
    monkeypatch.setattr(authz.skopeo, "inspect_raw", registry)
    store = ImageStore(config_from_env({"HYPERVM_STATE_DIR": str(tmp_path / "state")}))
    clock = Clock()
    store.ledger = Ledger(tmp_path / "grants", ttl=300, clock=clock)
    stagings: list[Path] = []
    staging = store.cache.staging

    def counted() -> Any:
        stagings.append(tmp_path)
        return staging()

    monkeypatch.setattr(store.cache, "staging", counted)
    auth = PullAuth("a", None)
    store._authorize(REF, DIGEST, auth)
    assert len(registry.calls) == 1 and len(stagings) == 1
    assert authz.granted(store.ledger, REF, DIGEST, auth)
    assert not authz.granted(store.ledger, REF, "sha256:" + "b" * 64, auth)  # another digest
    store._authorize(REF, DIGEST, auth)
    assert len(registry.calls) == 1 and len(stagings) == 1  # the ledger alone answered
    clock.now += 301
    assert not authz.granted(store.ledger, REF, DIGEST, auth)
    store._authorize(REF, DIGEST, auth)
    assert len(registry.calls) == 2 and len(stagings) == 2
    registry.allowed.clear()  # revoked: refused once the grant is stale
    clock.now += 301
    with pytest.raises(ImageError):
        store._authorize(REF, DIGEST, auth)
