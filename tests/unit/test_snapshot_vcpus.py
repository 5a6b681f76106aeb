"""Any vCPU count from one snapshot (issue 18 item 2): the template boots with 2 vCPUs present
(1 online) of a capacity (HYPERVM_SNAPSHOT_VCPUS), its clones get their pod's others onlined or
hot-plugged and brought online by RESEED's ``cpus``; the pure parts (key, domain, payload,
setting, the template's check of its init). Init's parser of ``cpus``:
tests/unit/test_init_fuzz.py."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from executor.guest.protocol import MAX_RESEED_CPUS, reseed_payload
from executor.libvirt import designer
from executor.libvirt.designer import template_domain
from executor.libvirt.domain_xml import domain_xml
from executor.snapshot import store, template
from executor.snapshot.store import Shape
from hypervm.config import MAX_SNAPSHOT_VCPUS, config_from_env
from hypervm.errors import HostError, InvalidSpec, ProtocolError
from tests.unit.test_snapshot import BOOT, FakeHypervisor, stub_template_guest


@pytest.fixture
def cfg(tmp_path: Path) -> Any:
    return config_from_env({"HYPERVM_STATE_DIR": str(tmp_path / "state"),
                            "HYPERVM_RUN_DIR": str(tmp_path / "run"),
                            "HYPERVM_SNAPSHOT_VCPUS": "4"})


def test_pods_of_up_to_the_capacity_share_one_template_larger_ones_have_their_own(
        cfg: Any) -> None:
    keys = {store.snapshot_key(BOOT, cfg, Shape(n, 256, "acme")) for n in (1, 2, 3, 4)}
    assert len(keys) == 1
    assert store.template_shape(cfg, Shape(2, 256, "acme")) == Shape(4, 256, "acme")
    assert store.template_shape(cfg, Shape(6, 256, "acme")) == Shape(6, 256, "acme")
    assert store.snapshot_key(BOOT, cfg, Shape(6, 256, "acme")) not in keys
    # memory and tenant still key it: two tenants never share a template
    assert store.snapshot_key(BOOT, cfg, Shape(2, 512, "acme")) not in keys
    assert store.snapshot_key(BOOT, cfg, Shape(2, 256, "globex")) not in keys


def test_a_template_has_two_vcpus_present_one_online_the_others_hotpluggable(
        cfg: Any) -> None:
    spec = template_domain("hypervm-template-1", BOOT, cfg, cfg.vms_dir / "t", 4, 256, {})
    assert (spec.vcpus, spec.max_vcpus) == (2, 4)
    # its init takes the spare present one offline before READY
    assert spec.cmdline.split()[-1] == "hypervm.spares=offline"
    xml = domain_xml(spec)
    assert '<vcpu placement="static" current="2">4</vcpu>' in xml
    # cores of one socket: a hot-plugged vCPU's TSC sync check runs 2 ms, not 20
    assert '<topology sockets="1" dies="1" cores="4" threads="1" />' in xml
    # a capacity of 1: nothing spare, the kernel's command line as a pool VM's
    one = template_domain("hypervm-template-1", BOOT, cfg, cfg.vms_dir / "t", 1, 256, {})
    assert one.vcpus == 1 and "spares" not in one.cmdline


def test_a_template_above_the_shared_capacity_has_all_its_vcpus_present(cfg: Any) -> None:
    """Pods of more vCPUs than HYPERVM_SNAPSHOT_VCPUS (4 here) have a template of their own
    count, which no pod of fewer starts from: all of them present (no ACPI hot-plug on the
    claim) and online when it is saved (its init is not asked to take spares offline: a claim,
    always of all of them, onlines none); its key is not the shared one's."""
    spec = template_domain("hypervm-template-1", BOOT, cfg, cfg.vms_dir / "t", 6, 256, {})
    assert (spec.vcpus, spec.max_vcpus) == (6, 6)
    assert designer.SPARES_OFFLINE_ARG not in spec.cmdline
    assert designer.online_vcpus(6, 4) == 6
    assert designer.online_vcpus(4, 4) == designer.online_vcpus(2, 4) == 1
    assert '<vcpu placement="static" current="6">6</vcpu>' in domain_xml(spec)
    assert designer.present_vcpus(6, 4) == 6 and designer.present_vcpus(4, 4) == 2
    assert designer.present_vcpus(3, 8) == 2 and designer.present_vcpus(1, 1) == 1
    assert store.template_shape(cfg, Shape(6, 256)) == Shape(6, 256)
    assert store.template_shape(cfg, Shape(5, 256)).vcpus == 5  # one count, one template


def test_max_vcpus_below_the_present_ones_or_above_the_bound_is_refused(cfg: Any) -> None:
    spec = template_domain("hypervm-template-1", BOOT, cfg, cfg.vms_dir / "t", 4, 256, {})
    for bad in (0, 65):
        with pytest.raises(InvalidSpec, match="max_vcpus"):
            type(spec)(**{**spec.__dict__, "max_vcpus": bad}).validate()


def test_reseed_carries_the_vcpus_to_bring_online() -> None:
    seed = bytes(range(64))
    assert reseed_payload(seed) == {"seed": seed.hex()}
    assert reseed_payload(seed, cpus=3) == {"seed": seed.hex(), "cpus": 3}
    for bad in (0, MAX_RESEED_CPUS + 1):
        with pytest.raises(ProtocolError):
            reseed_payload(seed, cpus=bad)


def test_snapshot_vcpus_setting() -> None:
    default = config_from_env({}).snapshot_vcpus
    assert default == max(1, min(os.cpu_count() or 1, MAX_SNAPSHOT_VCPUS))
    assert config_from_env({"HYPERVM_SNAPSHOT_VCPUS": "8"}).snapshot_vcpus == 8
    for bad in ("0", "65", "two", "-1"):
        with pytest.raises(InvalidSpec, match="HYPERVM_SNAPSHOT_VCPUS"):
            config_from_env({"HYPERVM_SNAPSHOT_VCPUS": bad})


@pytest.mark.parametrize(("reply", "init", "refusal"), [
    # older than 0.6.0: RESEED's ``cpus`` ignored, {} replied: its clones would have vCPUs the
    # guest never uses
    ({}, "0.5.0", "cannot online hot-plugged vCPUs"),
    # older than 0.7.0: every present CPU onlined: the template's spare would be online in
    # every clone of 1 vCPU (its guest scheduling onto a vCPU the host caps)
    ({"cpus": 2}, "0.6.1", "onlined 2 vCPUs when asked for 1"),
])
def test_no_snapshot_of_an_init_that_does_not_online_just_the_vcpus_asked(
        monkeypatch: pytest.MonkeyPatch, reply: dict[str, Any], init: str, refusal: str) -> None:
    """An init whose RESEED reply says it does not online the vCPUs asked for (and only
    them): no template of it is saved."""
    saved: list[Any] = []
    stub_template_guest(monkeypatch, saved, reply=reply, init=init)
    hv = FakeHypervisor()
    short = tempfile.mkdtemp(prefix="hv-")
    try:
        cfg = config_from_env({"HYPERVM_STATE_DIR": f"{short}/s", "HYPERVM_RUN_DIR": f"{short}/r"})
        with pytest.raises(HostError, match=refusal):
            template._boot_and_save(cfg, BOOT, hv, Shape(1, 128), 7, Path(short))
    finally:
        shutil.rmtree(short, ignore_errors=True)
    assert "save" not in saved and hv.destroyed == hv.created


def test_the_present_vcpus_are_in_the_key_old_snapshots_are_never_loaded(
        cfg: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A template of 1 present vCPU (before) and one of 2 (its spare offline) save different
    machines: their keys differ, so a store's entries of the old shape are never read again
    (they age out of the store's bound)."""
    now = store.snapshot_key(BOOT, cfg, Shape(1, 256, "acme"))
    monkeypatch.setattr(designer, "TEMPLATE_PRESENT_VCPUS", 1)
    assert store.snapshot_key(BOOT, cfg, Shape(1, 256, "acme")) != now


def test_a_template_saved_with_its_spares_offline_is_not_loaded_where_they_are_online(
        cfg: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line is in the key: a store's snapshot of a capacity above the shared one
    made before (its spares taken offline by init) is never loaded by a claim that expects
    them online; the shared template's key is unchanged."""
    above, shared = Shape(6, 256, "acme"), Shape(2, 256, "acme")
    now = [store.snapshot_key(BOOT, cfg, s) for s in (above, shared)]
    monkeypatch.setattr(designer, "online_vcpus", lambda max_vcpus, shared: 1)
    before = [store.snapshot_key(BOOT, cfg, s) for s in (above, shared)]
    assert before[0] != now[0] and before[1] == now[1]


def test_a_template_above_the_shared_capacity_asks_its_init_for_all_its_vcpus(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The template's check of its init's RESEED asks for the vCPUs it keeps online: all 3 of
    a capacity of 3 on a shared one of 2 (and refuses a reply of fewer); 1 of the shared one."""
    asked: list[Any] = []
    for shape, reply, refused in ((Shape(3, 128), {"cpus": 3}, False),
                                  (Shape(2, 128), {"cpus": 1}, False),
                                  (Shape(3, 128), {"cpus": 1}, True)):
        saved: list[Any] = []
        stub_template_guest(monkeypatch, saved, reply=reply, init="0.7.0")
        channel = template.RawChannel
        monkeypatch.setattr(template, "RawChannel", lambda sock, c=channel: _Noting(c(sock), asked))
        hv = FakeHypervisor()
        short = tempfile.mkdtemp(prefix="hv-")
        try:
            cfg = config_from_env({"HYPERVM_STATE_DIR": f"{short}/s",
                                   "HYPERVM_RUN_DIR": f"{short}/r", "HYPERVM_SNAPSHOT_VCPUS": "2"})
            monkeypatch.setattr(template.time, "sleep", lambda s: None)
            if refused:
                with pytest.raises(HostError, match="onlined 1 vCPUs when asked for 3"):
                    template._boot_and_save(cfg, BOOT, hv, shape, 7, Path(short))
            else:
                template._boot_and_save(cfg, BOOT, hv, shape, 7, Path(short))
        finally:
            shutil.rmtree(short, ignore_errors=True)
        assert ("save" in saved) is not refused
    assert [p.get("cpus") for p in asked if "seed" in p] == [3, 1, 3]


class _Noting:
    """A template channel double that notes each request's payload."""

    def __init__(self, channel: Any, payloads: list[Any]) -> None:
        self.channel, self.payloads = channel, payloads

    def ready(self, timeout: float) -> dict[str, Any]:
        return dict(self.channel.ready(timeout))

    def request(self, kind: Any, rid: int, payload: Any, timeout: float) -> Any:
        self.payloads.append(payload)
        return self.channel.request(kind, rid, payload, timeout)
