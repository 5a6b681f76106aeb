"""The warm pool's refill and claim bookkeeping with the boots faked (no VMs): each kind gets
its target, an image that cannot be had backs off alone, and a claim never hands an image VM
to a pod of other layers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from executor.guest.protocol import ExitStatus, MsgType
from executor.pool import warmup
from executor.pool.daemon import WarmPool
from executor.pool.idle import IdleVM as _Idle
from executor.pool.protocol import GENERIC, PoolConfig
from hypervm.config import config_from_env
from hypervm.errors import HypervisorError, PoolError

WARMUP_LAYER = Path("/var/lib/hypervm/rootfs/warmup.erofs")

WEB = ("/c/web0.erofs", "/c/web1.erofs")


class FakeHypervisor:
    def __init__(self) -> None:
        self.metadata: dict[str, dict[str, str]] = {}
        self.destroyed: list[str] = []

    def set_metadata(self, name: str, entries: dict[str, str]) -> None:
        self.metadata[name] = entries

    def destroy(self, name: str) -> None:
        self.destroyed.append(name)

    def close(self) -> None:
        pass


def fake_pool(tmp_path: Path, config: PoolConfig, **kwargs: Any) -> Iterator[WarmPool]:
    """A pool on a FakeHypervisor (no refill thread: tests call its steps), then stopped."""
    cfg = config_from_env({"HYPERVM_RUN_DIR": str(tmp_path)})
    pool = WarmPool(cfg, config, refill_delay=0.0, **kwargs)
    pool._hv = FakeHypervisor()
    yield pool
    pool._stopping.set()
    with pool._cond:
        pool._cond.notify_all()
    for vm in pool._idle:
        vm.sock.close()


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[WarmPool]:
    yield from fake_pool(tmp_path, PoolConfig(size=2, images=("web:1",)),
                         resolve=lambda ref: [Path(p) for p in WEB])


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


# -- a pool VM's preparation after READY (channel and libvirt faked) ---------------------------

class RecordingChannel:
    def __init__(self, events: list[str]) -> None:
        self.events = events

    def ready(self, timeout: float) -> dict:
        self.events.append("READY")
        return {"version": 1}

    def request(self, kind: MsgType, request_id: int, payload: dict, timeout: float) -> dict:
        self.events.append(kind.name)
        return {}

    def await_exit(self, handle: int, timeout: float) -> ExitStatus:
        self.events.append("exit")
        return ExitStatus(status=0, signal=None)


class RecordingHypervisor(FakeHypervisor):
    def __init__(self, events: list[str], flush_error: bool = False,
                 discard_error: bool = False) -> None:
        super().__init__()
        self.events = events
        self.flush_error = flush_error
        self.discard_error = discard_error

    def discard_zero_pages(self, name: str) -> str:
        self.events.append(f"discard {name}")
        if self.discard_error:
            raise HypervisorError(f"cannot discard the guest's zero pages of VM {name}")
        return "discarded 1490 zero pages"

    def attach_device(self, name: str, xml: str) -> None:
        self.events.append("attach")

    def flush_tcg(self, name: str) -> None:
        self.events.append(f"flush {name}")
        if self.flush_error:
            raise HypervisorError(f"cannot flush the TCG translations of VM {name}")


@pytest.mark.parametrize("flush", [True, False])
def test_the_boot_translations_go_before_the_warm_up(flush: bool) -> None:
    """Flushed after the NIC is up and before the warm-up container: the claimer's START then
    finds the warm-up's code translated, and the boot's is gone."""
    events: list[str] = []
    warmup.prepare_guest(RecordingHypervisor(events), "vm1",
                         RecordingChannel(events),  # type: ignore[arg-type]
                         (), WARMUP_LAYER, flush_tcg=flush, timeout=5)
    expected = ["READY", "NETWORK", "flush vm1", "attach", "START", "exit"]
    assert events == (expected if flush else [e for e in expected if e != "flush vm1"])


def test_a_failed_flush_costs_memory_not_the_vm(caplog: pytest.LogCaptureFixture) -> None:
    events: list[str] = []
    assert warmup.prepare_guest(RecordingHypervisor(events, flush_error=True), "vm1",
                                RecordingChannel(events),  # type: ignore[arg-type]
                                (), WARMUP_LAYER, flush_tcg=True, timeout=5) == {"version": 1}
    assert events[-2:] == ["START", "exit"]
    assert "vm1 keeps its boot's TCG translations" in caplog.text


@pytest.mark.parametrize("layers", [(), WEB])
def test_the_zero_pages_go_once_the_warm_up_is_done(layers: tuple[str, ...]) -> None:
    """A pool VM's guest RAM pages of zeros (~5.8 MiB of an idle 128 MiB pool VM's 18.4 MiB)
    go back last: after the warm-up container exited and an image VM's container is prepared,
    as a cold VM's do after its settled flush; without it, nothing is discarded."""
    for discard in (True, False):
        events: list[str] = []
        warmup.prepare_guest(RecordingHypervisor(events), "vm1",
                             RecordingChannel(events),  # type: ignore[arg-type]
                             layers, WARMUP_LAYER, flush_tcg=True, timeout=5,
                             discard_zeros=discard)
        tail = ["START", "exit"] + (["PREPARE"] if layers else [])
        assert events[-len(tail) - 1:] == (tail + ["discard vm1"] if discard
                                           else [events[-len(tail) - 1]] + tail)
        assert events.count("discard vm1") == int(discard)


def test_a_failed_discard_costs_memory_not_the_vm() -> None:
    events: list[str] = []
    assert warmup.prepare_guest(RecordingHypervisor(events, discard_error=True), "vm1",
                                RecordingChannel(events),  # type: ignore[arg-type]
                                (), WARMUP_LAYER, flush_tcg=True, timeout=5,
                                discard_zeros=True) == {"version": 1}
    assert events[-1] == "discard vm1"


def test_stopping_destroys_the_booting_vms_without_waiting_for_their_boot(
        pool: WarmPool) -> None:
    """A SIGTERM's stop ends a VM still booting at once, not after its boot and warm-up (seconds
    under TCG, during which a SIGKILL that follows would leave it running)."""
    with pool._cond:
        pool._booting["vm-booting"] = GENERIC
    saw: list[bool] = []

    def boot() -> None:  # the refill thread, in a boot that ends when its VM is destroyed
        deadline = time.monotonic() + 5.0
        while "vm-booting" not in pool._hv.destroyed and time.monotonic() < deadline:
            time.sleep(0.01)
        saw.append("vm-booting" in pool._hv.destroyed)

    thread = threading.Thread(target=boot)
    thread.start()
    pool._threads.append(thread)
    pool._records.flush = lambda: None  # type: ignore[method-assign]
    pool.stop()
    assert saw == [True]
