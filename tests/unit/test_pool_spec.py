"""The warm pool's pure parts: settings, which pods fit a pool VM, the claim protocol."""

from __future__ import annotations

from pathlib import Path

import pytest

from executor.guest.protocol import WARMUP_SERIAL, layer_serial, prepare_request, warmup_start
from executor.pool.protocol import (
    GENERIC,
    Lease,
    PoolConfig,
    claim_request,
    decode,
    encode,
    next_kind,
    parse_claim,
    pick_vm,
    unfit_reason,
)
from hypervm.config import config_from_env
from hypervm.errors import InvalidSpec, PoolError
from hypervm.netspec import NetworkSpec, PortMapping
from hypervm.podspec import Container, PodSpec, Process, Resources, Rootfs


def _pod(**overrides: object) -> PodSpec:
    values: dict[str, object] = dict(
        name="web",
        containers=(Container("web", Rootfs((Path("/l0.erofs"),)), Process(args=("true",))),),
        resources=Resources(cpus=1, memory_mib=128),
    )
    values.update(overrides)
    return PodSpec(**values)  # type: ignore[arg-type]


def test_defaults_validate() -> None:
    assert PoolConfig().validate() == PoolConfig(size=2, vcpus=1, memory_mib=128, name="pool")


@pytest.mark.parametrize(("config", "field"), [
    (PoolConfig(size=0), "pool.size"),
    (PoolConfig(size=65), "pool.size"),
    (PoolConfig(size=60, images=("a", "b"), per_image=3), "pool.size"),
    (PoolConfig(images=("",)), "pool.images[0]"),
    (PoolConfig(images=("web:1", " db")), "pool.images[1]"),
    (PoolConfig(images=("web:1", "Web:1")), "pool.images[1]"),
    (PoolConfig(images=("web:1", "web:1")), "pool.images"),
    (PoolConfig(images=("web:1", "docker.io/library/web:1")), "pool.images"),
    (PoolConfig(images=("web:1",), per_image=0), "pool.per_image"),
    (PoolConfig(vcpus=0), "pool.vcpus"),
    (PoolConfig(memory_mib=16), "pool.memory_mib"),
    (PoolConfig(name="no spaces"), "pool.name"),
    (PoolConfig(name=""), "pool.name"),
])
def test_bad_settings_name_the_field(config: PoolConfig, field: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        config.validate()
    assert info.value.field == field
    assert info.value.hint


def test_targets_by_kind() -> None:
    assert PoolConfig(size=2).targets() == {GENERIC: 2}
    config = PoolConfig(size=0, images=("web:1", "db:2"), per_image=3).validate()
    assert config.targets() == {"web:1": 3, "db:2": 3}
    assert PoolConfig(size=1, images=("web:1",)).targets() == {GENERIC: 1, "web:1": 1}


def test_the_refill_boots_the_kind_furthest_below_its_target() -> None:
    targets = {GENERIC: 2, "web:1": 1, "db:2": 4}
    assert next_kind(targets, {}) == GENERIC  # all empty: generic first, then in order
    assert next_kind(targets, {GENERIC: 1}) == "web:1"
    assert next_kind(targets, {GENERIC: 1, "web:1": 1}) == "db:2"  # 0/4 < 1/2
    assert next_kind(targets, {GENERIC: 1, "web:1": 1, "db:2": 2}) == GENERIC  # 1/2 = 2/4
    assert next_kind(targets, {GENERIC: 2, "web:1": 1, "db:2": 3}) == "db:2"
    assert next_kind(targets, {GENERIC: 2, "web:1": 1, "db:2": 4}) is None
    assert next_kind({}, {}) is None


def test_a_claim_gets_its_image_vm_or_a_generic_one_never_another_images() -> None:
    web, db = ("/c/a.erofs", "/c/b.erofs"), ("/c/d.erofs",)
    idle = [db, (), web, ()]
    assert pick_vm(idle, web) == 2
    assert pick_vm(idle, db) == 0
    assert pick_vm(idle, ("/c/a.erofs",)) == 1  # a subset of web's layers is not web
    assert pick_vm(idle, web[::-1]) == 1  # nor the same layers in another order
    assert pick_vm(idle, ()) == 1
    assert pick_vm([db, web], ("/c/x.erofs",)) is None
    assert pick_vm([], web) is None


def test_warmup_mounts_an_image_vms_layers_under_the_warmup_layer() -> None:
    assert warmup_start()["rootfs"]["layers"] == [WARMUP_SERIAL]
    assert warmup_start(2)["rootfs"]["layers"] == [layer_serial(0), layer_serial(1),
                                                   WARMUP_SERIAL]


def test_an_image_vm_prepares_its_warmup_and_then_the_pods_container() -> None:
    pod = prepare_request(2)
    assert pod == {"rootfs": {"layers": ["l0", "l1"], "readonly": False, "wait_ms": 10_000},
                   "shares": ["pool"]}
    warmup = prepare_request(2, warmup=True)
    # the warm-up's PREPARE matches the warm-up START, so the warm-up walks the prepared path
    assert warmup["rootfs"] == warmup_start(2)["rootfs"] and warmup["shares"] == ["pool"]
    assert [m["source"] for m in warmup_start(2)["mounts"]] == warmup["shares"]


def test_a_pod_of_the_pool_shape_fits() -> None:
    assert unfit_reason(_pod(), 1, 128) is None
    # a CPU limit is applied to the running VM, so it does not stop a warm start
    assert unfit_reason(_pod(resources=Resources(1, 128, cpu_limit=0.5)), 1, 128) is None


@pytest.mark.parametrize(("pod", "words"), [
    (_pod(resources=Resources(cpus=2, memory_mib=128)), "2 vCPU / 128 MiB"),
    (_pod(resources=Resources(cpus=1, memory_mib=64)), "1 vCPU / 64 MiB"),
    (_pod(network=NetworkSpec(ports=tuple(PortMapping(9000 + i, 80) for i in range(300)))),
     "publishes 300 ports"),
    (_pod(network=NetworkSpec(mode="none")), "network mode"),
])
def test_other_pods_boot_cold_with_a_reason(pod: PodSpec, words: str) -> None:
    reason = unfit_reason(pod, 1, 128)
    assert reason is not None and words in reason


def test_protocol_lines_round_trip() -> None:
    line = encode(claim_request(2, 256, {"pod": "web", "label.a": "b & <c>"}))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    claim = parse_claim(decode(line, "request"))
    assert (claim.vcpus, claim.memory_mib) == (2, 256)
    assert claim.metadata == {"pod": "web", "label.a": "b & <c>"}
    assert claim.layers == ()
    assert parse_claim({"op": "claim", "vcpus": 1, "memory_mib": 64}).metadata == {}
    line = encode(claim_request(1, 128, {}, ["/c/a.erofs", "/c/b.erofs"]))
    assert parse_claim(decode(line, "request")).layers == ("/c/a.erofs", "/c/b.erofs")


@pytest.mark.parametrize(("line", "words"), [
    (b"{nope\n", "request: not JSON"),
    (b"[1]\n", "request: not a JSON object"),
    (b"\xff\n", "request: not JSON"),
    (b'{"op":"claim","x":"' + b"a" * 70000 + b'"}\n', "longer than"),
])
def test_bad_lines_are_pool_errors(line: bytes, words: str) -> None:
    with pytest.raises(PoolError, match=words):
        decode(line, "request")


@pytest.mark.parametrize(("request_", "words"), [
    ({"op": "claim", "memory_mib": 128}, "claim.vcpus"),
    ({"op": "claim", "vcpus": True, "memory_mib": 128}, "claim.vcpus"),
    ({"op": "claim", "vcpus": 1, "memory_mib": "128"}, "claim.memory_mib"),
    ({"op": "claim", "vcpus": 1, "memory_mib": 0}, "claim.memory_mib"),
    ({"op": "claim", "vcpus": 1, "memory_mib": 64, "metadata": []}, "claim.metadata"),
    ({"op": "claim", "vcpus": 1, "memory_mib": 64, "metadata": {"pod": 3}},
     r"claim.metadata\['pod'\]"),
    ({"op": "claim", "vcpus": 1, "memory_mib": 64, "metadata": {"k": "a\x01"}},
     r"claim.metadata\['k'\]: contains the control character"),
    ({"op": "claim", "vcpus": 1, "memory_mib": 64, "layers": "/c/a.erofs"}, "claim.layers"),
    ({"op": "claim", "vcpus": 1, "memory_mib": 64, "layers": ["a.erofs"]}, "claim.layers"),
    ({"op": "claim", "vcpus": 1, "memory_mib": 64, "layers": ["/a", "/a"]}, "claim.layers"),
    ({"op": "claim", "vcpus": 1, "memory_mib": 64, "layers": ["/a"] * 200}, "claim.layers"),
])
def test_bad_claims_name_the_field(request_: dict, words: str) -> None:
    with pytest.raises(PoolError, match=words):
        parse_claim(request_)


def test_lease_round_trips_and_errors_become_pool_errors() -> None:
    lease = Lease(vm="hypervm-pool-1", run_dir=Path("/run/x"), ready={"version": 1})
    assert Lease.from_reply(decode(encode(lease.reply()), "reply")) == lease
    attached = Lease(vm="hypervm-pool-2", run_dir=Path("/r"), ready={}, layers_attached=True)
    assert Lease.from_reply(decode(encode(attached.reply()), "reply")) == attached
    # a pool from before image VMs sends no flag: nothing is attached
    assert not Lease.from_reply({"vm": "v", "run_dir": "/r", "ready": {}}).layers_attached
    with pytest.raises(PoolError, match="no warm VM is ready"):
        Lease.from_reply({"error": "no warm VM is ready"})
    with pytest.raises(PoolError, match="malformed"):
        Lease.from_reply({"vm": "x", "run_dir": 3, "ready": {}})


def test_config_pool_settings() -> None:
    cfg = config_from_env({"HYPERVM_RUN_DIR": "/run/x"})
    assert cfg.use_pool and cfg.pool_socket == Path("/run/x/pool.sock")
    cfg = config_from_env({"HYPERVM_POOL": "off", "HYPERVM_POOL_SOCKET": "/tmp/p.sock"})
    assert not cfg.use_pool and cfg.pool_socket == Path("/tmp/p.sock")
    with pytest.raises(InvalidSpec) as info:
        config_from_env({"HYPERVM_POOL": "maybe"})
    assert info.value.field == "HYPERVM_POOL"


def test_config_ksm_is_off_unless_asked_for() -> None:
    assert not config_from_env({}).ksm
    assert config_from_env({"HYPERVM_KSM": "on"}).ksm
    with pytest.raises(InvalidSpec) as info:
        config_from_env({"HYPERVM_KSM": "yes"})
    assert info.value.field == "HYPERVM_KSM"


def test_config_free_page_reporting() -> None:
    assert config_from_env({}).free_page_reporting
    assert not config_from_env({"HYPERVM_FREE_PAGE_REPORTING": "off"}).free_page_reporting
    with pytest.raises(InvalidSpec) as info:
        config_from_env({"HYPERVM_FREE_PAGE_REPORTING": "no"})
    assert info.value.field == "HYPERVM_FREE_PAGE_REPORTING" and info.value.hint


def test_config_translation_cache() -> None:
    assert config_from_env({}).tb_cache_mib is None
    assert config_from_env({"HYPERVM_TCG_TB_CACHE_MIB": "8"}).tb_cache_mib == 8
    with pytest.raises(InvalidSpec) as info:
        config_from_env({"HYPERVM_TCG_TB_CACHE_MIB": "8M"})
    assert info.value.field == "HYPERVM_TCG_TB_CACHE_MIB"


def test_a_pool_shape_no_pod_can_claim_is_refused_with_one_line() -> None:
    with pytest.raises(InvalidSpec) as info:
        PoolConfig(memory_mib=48).validate()
    message = str(info.value)
    assert message.startswith("pool.memory_mib: 48 MiB is less than a pod can have (64 MiB)")
    assert "no pod could claim" in message and "--memory 64" in message
    assert "\n" not in message
