"""The warm pool's refill and claim bookkeeping with the boots faked (no VMs): each kind gets
its target, an image that cannot be had backs off alone, and a claim never hands an image VM
to a pod of other layers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from executor.config import config_from_env
from executor.errors import PoolError
from executor.pool import WarmPool, _Idle
from executor.pool_spec import GENERIC, PoolConfig

WEB = ("/c/web0.erofs", "/c/web1.erofs")


class FakeHypervisor:
    def __init__(self) -> None:
        self.metadata: dict[str, dict[str, str]] = {}
        self.destroyed: list[str] = []

    def set_metadata(self, name: str, entries: dict[str, str]) -> None:
        self.metadata[name] = entries

    def destroy(self, name: str) -> None:
        self.destroyed.append(name)


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[WarmPool]:
    cfg = config_from_env({"HYPERVM_RUN_DIR": str(tmp_path)})
    pool = WarmPool(cfg, PoolConfig(size=2, images=("web:1",)), refill_delay=0.0,
                    resolve=lambda ref: [Path(p) for p in WEB])
    pool._hv = FakeHypervisor()
    yield pool
    pool._stopping.set()
    with pool._cond:
        pool._cond.notify_all()
    for vm in pool._idle:
        vm.sock.close()


def fake_boots(pool: WarmPool, tmp_path: Path, failing: set[str]) -> list[str]:
    """Replace the boot with one that succeeds at once (or fails for ``failing`` kinds)."""
    attempts: list[str] = []

    def boot_one(kind: str = GENERIC) -> bool:
        attempts.append(kind)
        if kind in failing:
            return False
        a, b = socket.socketpair()
        b.close()
        with pool._cond:
            pool._idle.append(_Idle(f"vm{len(attempts)}", tmp_path, a, {"version": 1}, kind,
                                    WEB if kind != GENERIC else ()))
            pool._cond.notify_all()
        return True

    pool._boot_one = boot_one  # type: ignore[method-assign]
    threading.Thread(target=pool._refill_loop, daemon=True).start()
    return attempts


def kinds(pool: WarmPool) -> list[str]:
    with pool._cond:
        return sorted(vm.kind for vm in pool._idle)


def test_each_kind_is_filled_to_its_target(pool: WarmPool, tmp_path: Path) -> None:
    attempts = fake_boots(pool, tmp_path, failing=set())
    assert pool.wait_full(5.0)
    time.sleep(0.2)  # nothing more is booted once full
    assert kinds(pool) == [GENERIC, GENERIC, "web:1"]
    assert len(attempts) == 3
    assert pool.status()["images"] == {"web:1": {"ready": 1, "booting": 0}}
    assert pool.status()["target"] == 3


def test_an_image_that_cannot_be_had_backs_off_alone(pool: WarmPool, tmp_path: Path) -> None:
    attempts = fake_boots(pool, tmp_path, failing={"web:1"})
    deadline = time.monotonic() + 5.0
    while kinds(pool) != [GENERIC, GENERIC] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert kinds(pool) == [GENERIC, GENERIC]
    time.sleep(0.5)
    # the failing image is retried after its back-off (1 s, doubling), not in a busy loop
    assert 1 <= attempts.count("web:1") <= 2


def test_claims_match_layers_exactly(pool: WarmPool, tmp_path: Path) -> None:
    fake_boots(pool, tmp_path, failing=set())
    assert pool.wait_full(5.0)
    pool._stopping.set()  # no refill from here on
    lease, sock = pool.claim(1, 128, owner_pid=1, layers=WEB)
    sock.close()
    assert lease.layers_attached
    # another image's pod, or the same layers in another order, get generic VMs
    for layers in (("/c/other.erofs",), WEB[::-1]):
        lease, sock = pool.claim(1, 128, owner_pid=1, layers=layers)
        sock.close()
        assert not lease.layers_attached
    with pytest.raises(PoolError, match="no warm VM is ready"):
        pool.claim(1, 128, owner_pid=1, layers=WEB)
    assert pool.claims == 3
