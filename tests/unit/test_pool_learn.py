"""The images a warm pool learns from its claims (executor.pool.learn), with the boots faked (no
VMs): the N most recently claimed images get image VMs, per tenant; a learned VM goes only to
its tenant's pods of exactly its layers; the bound holds and a forgotten image's idle VMs are
destroyed; nothing is pulled for a client."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from executor.cli import pool as pool_cli
from executor.pool.daemon import WarmPool
from executor.pool.idle import IdleVM as _Idle
from executor.pool.learn import (
    DEFAULT_LEARN_IMAGES,
    MAX_LEARN_IMAGES,
    LearnedImage,
    LearnedImages,
    learn_images_for,
    learn_images_from_env,
)
from executor.pool.protocol import (
    GENERIC,
    PoolConfig,
    claim_request,
    parse_claim,
    pick_vm,
)
from hypervm.errors import ImageError, InvalidSpec, PoolError
from tests.unit.test_pool_refill import fake_pool

WEB = ("/c/web0.erofs", "/c/web1.erofs")
DB = ("/c/db0.erofs",)
CACHE = {"docker.io/library/web:1": WEB, "docker.io/library/db:2": DB}


def kind(ref: str, tenant: str = "default") -> str:
    return LearnedImage(tenant, f"docker.io/library/{ref}").kind


# -- the bookkeeping ---------------------------------------------------------------------------

def test_the_most_recently_claimed_images_are_kept_oldest_forgotten() -> None:
    learned = LearnedImages(2)
    assert learned.note("a", "web:1") == set()
    assert learned.note("a", "db:2") == set()
    assert learned.note("a", "web:1") == set()  # known: now the most recent
    assert learned.note("a", "cache:3") == {kind("db:2", "a")}
    assert [i.ref for i in learned] == ["docker.io/library/web:1", "docker.io/library/cache:3"]
    assert len(learned) == 2


def test_tenants_learn_apart_and_pinned_or_local_images_are_not_learned() -> None:
    learned = LearnedImages(4, pinned=("web:1",))
    assert learned.note("a", "docker.io/library/web:1") == set()  # listed: pinned
    learned.note("a", "db:2")
    learned.note("b", "db:2")
    assert {(i.tenant, i.ref) for i in learned} == {("a", "docker.io/library/db:2"),
                                                    ("b", "docker.io/library/db:2")}
    assert kind("db:2", "a") != kind("db:2", "b")
    for local in ("docker-archive:/tmp/x.tar", "oci:/tmp/layout", "x" * 600, "Bad Ref"):
        assert learned.note("a", local) == set()
    assert len(learned) == 2
    assert len(LearnedImages(0)) == 0 and LearnedImages(0).note("a", "db:2") == set()


def test_a_learned_kind_is_never_an_image_reference() -> None:
    # a listed image's VMs are keyed by its reference; a learned one's key has a space
    assert " " in kind("web:1") and kind("web:1").startswith("docker.io/library/web:1 ")


def test_the_setting_and_its_bounds() -> None:
    assert learn_images_from_env({}) == DEFAULT_LEARN_IMAGES
    assert learn_images_from_env({"HYPERVM_POOL_LEARN_IMAGES": "0"}) == 0
    for bad in ("-1", "x", str(MAX_LEARN_IMAGES + 1)):
        with pytest.raises(InvalidSpec):
            learn_images_from_env({"HYPERVM_POOL_LEARN_IMAGES": bad})
    # the built-in default fits in what room the pool has; an operator's own value is kept
    def learn(env: dict[str, str], given: int | None, fixed: int, per_image: int = 1) -> int:
        return learn_images_for(env, given, fixed, per_image, 64)

    assert learn({}, None, fixed=2) == DEFAULT_LEARN_IMAGES
    assert learn({}, None, fixed=64) == 0  # --size 64 stays valid
    assert learn({}, None, fixed=59, per_image=2) == 2
    assert learn({}, None, fixed=0) == 0  # --size 0 alone stays an error, not a learning pool
    assert learn({}, 2, fixed=0) == 2  # unless asked for
    assert learn({"HYPERVM_POOL_LEARN_IMAGES": "9"}, None, fixed=64) == 9
    assert learn({"HYPERVM_POOL_LEARN_IMAGES": "9"}, 1, fixed=64) == 1
    PoolConfig(size=0, learn_images=2).validate()  # a pool of learned images only
    with pytest.raises(InvalidSpec, match="learn_images"):
        PoolConfig(size=60, learn_images=5).validate()  # counted in the pool's bound
    with pytest.raises(InvalidSpec, match="learn_images"):
        PoolConfig(learn_images=MAX_LEARN_IMAGES + 1).validate()


# -- the protocol ------------------------------------------------------------------------------

def test_a_learned_vm_goes_only_to_its_tenant() -> None:
    idle = [WEB, (), WEB]
    kept = ["a", None, None]
    assert pick_vm(idle, WEB, kept, "a") == 0
    assert pick_vm(idle, WEB, kept, "b") == 2  # a listed image's VM serves any tenant
    assert pick_vm(idle[:2], WEB, kept[:2], "b") == 1  # else a generic one, never a's
    assert pick_vm(idle[:1], WEB, kept[:1], "b") is None


def test_a_claim_names_its_image_and_tenant() -> None:
    request = claim_request(1, 128, {"tenant": "a"}, WEB, image="web:1")
    claim = parse_claim(request)
    assert claim.image == "web:1" and claim.tenant == "a"
    assert parse_claim(claim_request(1, 128)).tenant == "default"
    assert "image" not in claim_request(1, 128)
    for bad in ({"image": 7}, {"image": "x" * 600}, {"metadata": {"tenant": "a b"}}):
        with pytest.raises(PoolError):
            parse_claim({**request, **bad})


# -- the daemon --------------------------------------------------------------------------------

@pytest.fixture
def pool(tmp_path: Path) -> Iterator[WarmPool]:
    yield from fake_pool(tmp_path, PoolConfig(size=1, learn_images=2),
                         cached=lambda ref: CACHE.get(ref))


def fake_boots(pool: WarmPool, tmp_path: Path) -> list[str]:
    """A boot that succeeds at once, with the layers and tenant the daemon's would give."""
    attempts: list[str] = []

    def boot_one(kind: str = GENERIC) -> bool:
        attempts.append(kind)
        with pool._cond:
            learned = pool._learned.get(kind)
        try:
            layers = pool._layers(kind, learned) if kind != GENERIC else ()
        except ImageError:
            return False
        a, b = socket.socketpair()
        b.close()
        with pool._cond:
            pool._idle.append(_Idle(f"vm{len(attempts)}", tmp_path, a, {"version": 1}, kind,
                                    layers, kept_for=learned.tenant if learned else None))
            pool._cond.notify_all()
        return True

    pool._boot_one = boot_one  # type: ignore[method-assign]
    threading.Thread(target=pool._refill_loop, daemon=True).start()
    return attempts


def learn(pool: WarmPool, ref: str, tenant: str = "default", memory_mib: int = 128) -> None:
    pool.learn(parse_claim(claim_request(1, memory_mib, {"tenant": tenant}, (), image=ref)))


def wait_for(pool: WarmPool, ready: dict[str, int], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        have = {f"{i['tenant']} {i['image']}": i["ready"] for i in pool.status()["learned"]}
        if have == ready:
            return
        time.sleep(0.02)
    raise AssertionError(f"{pool.status()['learned']} is not {ready}")


def test_a_claimed_image_gets_vms_for_its_tenant_only(pool: WarmPool, tmp_path: Path) -> None:
    fake_boots(pool, tmp_path)
    assert pool.wait_full(5.0)
    learn(pool, "web:1", "a")
    wait_for(pool, {"a docker.io/library/web:1": 1})
    assert pool.status()["target"] == 2
    lease, sock = pool.claim(1, 128, owner_pid=1, layers=WEB, tenant="b")
    sock.close()
    assert not lease.layers_attached  # b gets the generic VM, never a's image VM
    lease, sock = pool.claim(1, 128, owner_pid=1, layers=WEB, tenant="a")
    sock.close()
    assert lease.layers_attached
    assert pool.status()["served_by"] == {"generic": 1, "image": 0, "learned": 1}


def test_the_bound_holds_and_forgotten_images_lose_their_vms(pool: WarmPool,
                                                             tmp_path: Path) -> None:
    fake_boots(pool, tmp_path)
    assert pool.wait_full(5.0)
    learn(pool, "web:1")
    learn(pool, "db:2")
    wait_for(pool, {"default docker.io/library/web:1": 1, "default docker.io/library/db:2": 1})
    with pool._cond:
        (web_vm,) = [vm.name for vm in pool._idle if vm.kind == kind("web:1")]
    learn(pool, "cache:3")  # not in the cache: learned, its boot finds nothing, forgotten
    assert web_vm in pool._hv.destroyed  # web:1 was the oldest: its idle VM is destroyed
    wait_for(pool, {"default docker.io/library/db:2": 1})
    assert len(pool.status()["learned"]) == 1
    assert sum(pool._targets().values()) <= 1 + 2


def test_other_shapes_and_unnamed_images_are_not_learned(pool: WarmPool) -> None:
    learn(pool, "web:1", memory_mib=256)
    pool.learn(parse_claim(claim_request(1, 128, {}, WEB)))
    assert pool.status()["learned"] == [] and pool.status()["learn_images"] == 2


def test_a_learned_image_is_taken_from_the_cache_never_pulled(pool: WarmPool) -> None:
    pulled: list[str] = []
    pool._resolve = lambda ref: pulled.append(ref) or ()  # type: ignore[assignment, func-returns-value]
    learn(pool, "gone:1")
    with pool._cond:
        learned = pool._learned.get(kind("gone:1"))
    with pytest.raises(ImageError, match="no longer in the image cache"):
        pool._layers(kind("gone:1"), learned)
    with pytest.raises(ImageError):  # forgotten before its boot: neither resolved nor pulled
        pool._layers(kind("db:2"), None)
    assert pulled == [] and pool.status()["learned"] == []


def test_status_text_shows_the_learned_images_and_who_served(pool: WarmPool,
                                                             tmp_path: Path) -> None:
    fake_boots(pool, tmp_path)
    assert pool.wait_full(5.0)
    learn(pool, "web:1", "a")
    wait_for(pool, {"a docker.io/library/web:1": 1})
    lease, sock = pool.claim(1, 128, owner_pid=1, layers=WEB, tenant="a")
    sock.close()
    lines = pool_cli.status_lines(pool.status())
    # its replacement may be booting or ready already
    assert any(re.fullmatch(r"learned image docker\.io/library/web:1 \(tenant a\): "
                            r"[01] ready, [01] booting", line) for line in lines), lines
    assert any(line.startswith("claims 1 (generic 0, image 0, learned 1), boots ")
               for line in lines), lines
