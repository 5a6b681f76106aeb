"""vmimage.qemu: which QEMU a HyperVM runs on, and the HyperQEMU build recipe (apt, dpkg-source,
configure and ninja faked; tests/integration/test_hyperqemu.py boots the real one)."""

from __future__ import annotations

import json
import logging
import re
import stat
from pathlib import Path

import pytest

from executor.libvirt.domain import MAX_VCPUS
from hypervm.config import HostConfig, config_from_env
from hypervm.errors import HostError, InvalidSpec
from vmimage import qemu as qmod
from vmimage.qemu import DISTRO, Qemu, hyperqemu


@pytest.fixture
def cfg(tmp_path: Path) -> HostConfig:
    return config_from_env({"HYPERVM_STATE_DIR": str(tmp_path / "state")})


def _fake_hyperqemu(cfg: HostConfig, key: str, features: list[str] | None = None) -> Path:
    d = cfg.qemu_dir / key
    (d / "bin").mkdir(parents=True)
    (d / "bin" / "qemu-system-x86_64").write_bytes(b"\x7fELF")
    (d / "meta.json").write_text(json.dumps({
        "kind": "hyperqemu", "version": "7.2.22",
        "features": ["tcg-flush"] if features is None else features}))
    return d


# -- the key ------------------------------------------------------------------------------------

def test_key_changes_with_devices_patch_source_version_and_recipe() -> None:
    base = hyperqemu.cache_key(b"CONFIG_I440FX=y\n", b"patch", "1:7.2+dfsg-7", "1")
    assert base == hyperqemu.cache_key(b"CONFIG_I440FX=y\n", b"patch", "1:7.2+dfsg-7", "1")
    for change in ((b"CONFIG_Q35=y\n", b"patch", "1:7.2+dfsg-7", "1"),
                   (b"CONFIG_I440FX=y\n", b"patch2", "1:7.2+dfsg-7", "1"),
                   (b"CONFIG_I440FX=y\n", b"patch", "1:7.2+dfsg-8", "1"),
                   (b"CONFIG_I440FX=y\n", b"patch", "1:7.2+dfsg-7", "2")):
        assert hyperqemu.cache_key(*change) != base


def test_key_covers_every_patch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(hyperqemu, "source_version", lambda: "1:7.2+dfsg-7")
    base = hyperqemu.current_key()
    changed = tmp_path / "idle-memory.patch"
    changed.write_bytes(hyperqemu.PATCHES[1].read_bytes() + b"\n")
    monkeypatch.setattr(hyperqemu, "PATCHES", (hyperqemu.PATCHES[0], changed))
    assert hyperqemu.current_key() != base
    monkeypatch.setattr(hyperqemu, "PATCHES", hyperqemu.PATCHES[:1])
    assert hyperqemu.current_key() != base


def test_key_covers_the_configure_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    base = hyperqemu.cache_key(b"d", b"p", "v")
    monkeypatch.setattr(hyperqemu, "CONFIGURE_ARGS", (*hyperqemu.CONFIGURE_ARGS, "--enable-vnc"))
    assert hyperqemu.cache_key(b"d", b"p", "v") != base


def test_without_debian_qemu_there_is_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hyperqemu, "source_version", lambda: None)
    with pytest.raises(HostError) as err:
        hyperqemu.current_key()
    assert "qemu-system-x86" in str(err.value) and "apt-get install" in (err.value.hint or "")


def test_the_device_list_is_what_the_domain_xml_uses() -> None:
    """Each device executor/libvirt_xml.py asks for has its Kconfig symbol (a missing one
    fails only when libvirt starts the VM: 'Device ... not found')."""
    wanted = {line.split("=")[0] for line in hyperqemu.DEVICES.read_text().splitlines()
              if line and not line.startswith("#")}
    assert wanted == {"CONFIG_I440FX", "CONFIG_SERIAL_ISA", "CONFIG_VIRTIO_PCI",
                      "CONFIG_VIRTIO_BLK", "CONFIG_VIRTIO_SCSI", "CONFIG_VIRTIO_NET",
                      "CONFIG_VIRTIO_SERIAL", "CONFIG_VIRTIO_BALLOON", "CONFIG_VIRTIO_RNG",
                      "CONFIG_VIRTIO_9P"}


# -- find / ensure ------------------------------------------------------------------------------

def test_find_qemu_returns_the_current_hyperqemu(cfg: HostConfig,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hyperqemu, "current_key", lambda: "q1")
    d = _fake_hyperqemu(cfg, "q1")
    q = qmod.find_qemu(cfg, env={})
    assert q == Qemu(path=d / "bin" / "qemu-system-x86_64", kind="hyperqemu",
                     features=("tcg-flush",), version="7.2.22", key="q1")
    assert q.emulator == q.path and q.can_flush_tcg


def test_a_build_that_is_not_current_is_read_with_its_own_features(
        cfg: HostConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    # bench.idlemem --qemu DIR: an older or patched build keeps the features its meta.json lists
    monkeypatch.setattr(hyperqemu, "current_key", lambda: "new")
    old = _fake_hyperqemu(cfg, "old", features=["idle-memory"])
    q = qmod.hyperqemu_from_dir(old)
    assert q == Qemu(path=old / "bin" / "qemu-system-x86_64", kind="hyperqemu",
                     features=("idle-memory",), version="7.2.22", key="old")
    assert not q.can_flush_tcg


def test_find_qemu_falls_back_to_debian_never_to_an_older_build(
        cfg: HostConfig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(hyperqemu, "current_key", lambda: "new")
    _fake_hyperqemu(cfg, "old")  # built from an older Debian QEMU: lacks its fixes
    (cfg.qemu_dir / "new").mkdir()  # an unfinished build: no meta.json, no binary
    with caplog.at_level(logging.WARNING):
        q = qmod.find_qemu(cfg, env={})
    assert q is DISTRO and q.emulator is None and not q.can_flush_tcg
    assert "make qemu" in caplog.text


def test_find_qemu_without_debian_qemu_warns_and_uses_libvirts_default(
        cfg: HostConfig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> str:
        raise HostError("qemu-system-x86 is not installed")

    monkeypatch.setattr(hyperqemu, "current_key", broken)
    with caplog.at_level(logging.WARNING):
        assert qmod.find_qemu(cfg, env={}) is DISTRO
    assert "qemu-system-x86 is not installed" in caplog.text


def test_distro_requested_never_looks_or_builds(cfg: HostConfig,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hyperqemu, "current_key", lambda: pytest.fail("must not look"))
    monkeypatch.setattr(hyperqemu, "ensure_hyperqemu", lambda c: pytest.fail("must not build"))
    assert qmod.find_qemu(cfg, env={"HYPERVM_QEMU": "distro"}) is DISTRO
    assert qmod.ensure_qemu(cfg, env={"HYPERVM_QEMU": " Distro "}) is DISTRO


def test_unknown_qemu_kind_names_the_variable(cfg: HostConfig) -> None:
    with pytest.raises(InvalidSpec) as err:
        qmod.find_qemu(cfg, env={"HYPERVM_QEMU": "firecracker"})
    assert err.value.field == "HYPERVM_QEMU" and "hyperqemu or distro" in (err.value.hint or "")


def test_ensure_qemu_builds_only_when_missing(cfg: HostConfig,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hyperqemu, "current_key", lambda: "q1")
    builds = []

    def fake_build(cfg_: HostConfig, key: str, final: Path) -> Path:
        builds.append(key)
        return _fake_hyperqemu(cfg_, key)

    monkeypatch.setattr(hyperqemu, "_build", fake_build)
    first = qmod.ensure_qemu(cfg, env={})
    assert qmod.ensure_qemu(cfg, env={}) == first
    assert builds == ["q1"] and first.kind == "hyperqemu"


def test_a_build_that_cannot_run_leaves_vms_on_debians_qemu(
        cfg: HostConfig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_source(cfg_: HostConfig) -> Path:
        raise HostError("cannot download the source of qemu=1:7.2", hint="run make qemu")

    monkeypatch.setattr(hyperqemu, "ensure_hyperqemu", no_source)
    with caplog.at_level(logging.WARNING):
        assert qmod.ensure_qemu(cfg, env={}) is DISTRO
    assert "cannot build HyperQEMU (cannot download the source" in caplog.text


@pytest.mark.parametrize(("features", "accel", "flush_env", "expected"), [
    (["tcg-flush"], "tcg", "on", True),
    (["tcg-flush"], "kvm", "on", False),  # no translations under KVM
    (["tcg-flush"], "tcg", "off", False),
    ([], "tcg", "on", False),  # a HyperQEMU built before the patch
])
def test_which_vms_flush_after_boot(cfg: HostConfig, monkeypatch: pytest.MonkeyPatch,
                                    features: list[str], accel: str, flush_env: str,
                                    expected: bool) -> None:
    monkeypatch.setattr(hyperqemu, "current_key", lambda: "q1")
    _fake_hyperqemu(cfg, "q1", features)
    q = qmod.find_qemu(cfg, env={})
    host = config_from_env({"HYPERVM_STATE_DIR": str(cfg.state_dir),
                            "HYPERVM_TCG_FLUSH": flush_env})
    assert q.flushes_after_boot(host, accel) is expected
    assert not DISTRO.flushes_after_boot(host, accel)


@pytest.mark.parametrize(("features", "accel", "env", "expected"), [
    (["tcg-flush", "zero-discard"], "tcg", {}, True),
    (["tcg-flush", "zero-discard"], "kvm", {}, False),  # no settled flush under KVM
    (["tcg-flush", "zero-discard"], "tcg", {"HYPERVM_DISCARD_ZERO_PAGES": "off"}, False),
    (["tcg-flush", "zero-discard"], "tcg", {"HYPERVM_TCG_FLUSH": "off"}, False),
    # anonymous guest RAM (KSM): QEMU would refuse, there is no shared file to punch
    (["tcg-flush", "zero-discard"], "tcg", {"HYPERVM_KSM": "on"}, False),
    (["tcg-flush"], "tcg", {}, False),  # a HyperQEMU built before the patch
])
def test_which_vms_discard_their_zero_pages(cfg: HostConfig, monkeypatch: pytest.MonkeyPatch,
                                            features: list[str], accel: str,
                                            env: dict[str, str], expected: bool) -> None:
    monkeypatch.setattr(hyperqemu, "current_key", lambda: "q1")
    _fake_hyperqemu(cfg, "q1", features)
    q = qmod.find_qemu(cfg, env={})
    host = config_from_env({"HYPERVM_STATE_DIR": str(cfg.state_dir), **env})
    assert q.discards_zero_pages(host, accel) is expected
    assert not DISTRO.discards_zero_pages(host, accel)


def test_the_current_recipe_applies_zero_discard() -> None:
    assert "zero-discard" in hyperqemu.FEATURES
    assert hyperqemu.HERE / "zero-discard.patch" in hyperqemu.PATCHES
    patch = (hyperqemu.HERE / "zero-discard.patch").read_text()
    # the guards that keep a discard from losing a write or reading back non-zero
    for guard in ("pause_all_vcpus", "virtio_device_has_inflight", "qemu_ram_is_shared",
                  "rb->fd < 0", "migration_is_idle", "buffer_is_zero"):
        assert guard in patch, guard


def test_tcg_flush_setting_is_checked() -> None:
    with pytest.raises(InvalidSpec) as err:
        config_from_env({"HYPERVM_TCG_FLUSH": "yes"})
    assert err.value.field == "HYPERVM_TCG_FLUSH"
    assert config_from_env({}).tcg_flush is True
    with pytest.raises(InvalidSpec) as err:
        config_from_env({"HYPERVM_DISCARD_ZERO_PAGES": "1"})
    assert err.value.field == "HYPERVM_DISCARD_ZERO_PAGES"
    assert config_from_env({}).discard_zero_pages is True


# -- the build recipe, with the tools faked -----------------------------------------------------

def _fake_tools(calls: list[tuple[list[str], Path | None]]):  # noqa: ANN202
    """A stand-in for hyperqemu._run: records each step and leaves what the tool would."""

    def run(argv: list[str], logfile: Path | None, cwd: Path | None = None,
            meter: object = None) -> None:
        calls.append((argv, cwd))
        if argv[0] == "dpkg-source":
            src = Path(argv[-1])
            (src / "configs/devices/x86_64-softmmu").mkdir(parents=True)
            (src / "configure").write_text("#!/bin/sh\n")
        elif argv[0] == "ninja" and cwd is not None:
            (cwd / argv[-1]).write_bytes(b"\x7fELF unstripped")
        elif argv[0] == "strip":
            Path(argv[2]).write_bytes(Path(argv[3]).read_bytes())
        if logfile is not None:
            with open(logfile, "a") as fh:
                fh.write(" ".join(argv) + "\n")

    return run


@pytest.fixture
def fake_source(cfg: HostConfig, monkeypatch: pytest.MonkeyPatch) -> Path:
    dsc = cfg.qemu_dir / ".src" / "1_7.2+dfsg-7" / "qemu_7.2+dfsg-7.dsc"
    dsc.parent.mkdir(parents=True)
    dsc.write_text("Format: 3.0 (quilt)\n")
    monkeypatch.setattr(hyperqemu, "source_version", lambda: "1:7.2+dfsg-7")
    monkeypatch.setattr(hyperqemu, "current_key", lambda: "feedbeef")
    monkeypatch.setattr(hyperqemu, "_qemu_version", lambda binary: "7.2.22")
    monkeypatch.setattr(hyperqemu, "_hardening_flags",
                        lambda: ("-O2 -fstack-protector-strong", "-Wl,-z,relro"))
    return dsc


def test_build_recipe_patches_configures_builds_and_publishes(
        cfg: HostConfig, fake_source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[list[str], Path | None]] = []
    monkeypatch.setattr(hyperqemu, "_run", _fake_tools(calls))
    out = hyperqemu.ensure_hyperqemu(cfg)
    assert out == cfg.qemu_dir / "feedbeef"
    steps = [Path(argv[0]).name for argv, _ in calls]
    assert steps == ["dpkg-source", *["patch"] * 6, "configure", "ninja", "strip"]
    (dpkg, _), (_, patch_cwd), *patches, (configure, _) = calls[:8]
    assert dpkg[-2:] == [str(fake_source), str(patch_cwd)]
    applied = [calls[1][0][-1], *(argv[-1] for argv, _ in patches)]
    assert applied == [str(p) for p in hyperqemu.PATCHES]
    assert [Path(p).name for p in applied] == [
        "tcg-flush.patch", "idle-memory.patch", "cpu-probe.patch", "ram-template.patch",
        "zero-discard.patch", "tcg-invtsc.patch"]
    assert "--with-devices-x86_64=hyperqemu" in configure
    assert f"--prefix={out}" in configure
    assert "--extra-cflags=-O2 -fstack-protector-strong" in configure
    assert calls[8][0][-1] == "qemu-system-x86_64"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "hyperqemu" and meta["features"] == [
        "tcg-flush", "idle-memory", "cpu-probe", "ram-template", "zero-discard", "tcg-invtsc"]
    assert meta["source_package"] == "qemu=1:7.2+dfsg-7" and meta["version"] == "7.2.22"
    assert sorted(p.name for p in out.iterdir()) == ["bin", "build.log", "meta.json"]
    binary = out / "bin" / "qemu-system-x86_64"
    assert stat.S_IMODE(binary.stat().st_mode) & 0o005 == 0o005  # libvirt-qemu runs it
    assert qmod.find_qemu(cfg, env={}).path == binary


def test_failed_build_keeps_its_log_and_publishes_nothing(
        cfg: HostConfig, fake_source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tools = _fake_tools([])

    def failing(argv: list[str], logfile: Path | None, cwd: Path | None = None,
                meter: object = None) -> None:
        tools(argv, logfile, cwd)
        if argv[0] == "ninja":
            raise HostError("ninja -j2 qemu-system-x86_64 … failed with status 1")

    monkeypatch.setattr(hyperqemu, "_run", failing)
    with pytest.raises(HostError):
        hyperqemu.ensure_hyperqemu(cfg)
    assert "ninja" in (cfg.qemu_dir / "failed-feedbeef.log").read_text()
    assert not (cfg.qemu_dir / "feedbeef").exists()
    assert not [p for p in cfg.qemu_dir.iterdir() if p.name.startswith(".tmp-")]


def test_source_download_failure_says_how_to_get_the_source(
        cfg: HostConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_deb_src(argv: list[str], logfile: Path | None, cwd: Path | None = None) -> None:
        raise HostError("apt-get source --download-only … failed with status 100:\n"
                        "E: You must put some 'deb-src' URIs in your sources.list")

    monkeypatch.setattr(hyperqemu, "source_version", lambda: "1:7.2+dfsg-7")
    monkeypatch.setattr(hyperqemu, "current_key", lambda: "feedbeef")
    monkeypatch.setattr(hyperqemu, "_run", no_deb_src)
    with pytest.raises(HostError) as err:
        hyperqemu.ensure_hyperqemu(cfg)
    assert "deb-src" in str(err.value) and "make qemu" in (err.value.hint or "")
    assert not (cfg.qemu_dir / ".src" / "1_7.2+dfsg-7").exists()  # nothing half-downloaded


def test_hyperqemus_virtio_queue_limit_fits_every_device_a_hypervm_has() -> None:
    """The idle-memory patch lowers VIRTIO_QUEUE_MAX (1024 VirtQueues per device were ~1 MiB
    per VM); QEMU aborts when a device adds more queues than that, so it must fit the
    largest: virtio-serial's 31 ports (64 queues) and virtio-blk/scsi with one queue per
    vCPU (+2 for scsi) at the most vCPUs a domain may have."""
    patch = (hyperqemu.HERE / "idle-memory.patch").read_text()
    added = re.findall(r"^\+#define VIRTIO_QUEUE_MAX (\d+)$", patch, re.MULTILINE)
    assert len(added) == 1, added
    assert int(added[0]) >= max(2 * (31 + 1), MAX_VCPUS + 2)
