"""vmimage.kernel: cache key, Kconfig drop check, fragment contents, store, distro fallback."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from hypervm.config import config_from_env
from hypervm.errors import HostError, InvalidSpec
from vmimage import boot
from vmimage import kernel as kmod
from vmimage.kernel import Kernel, distro, hyperkernel, store
from vmimage.kernel.kconfig import dropped_options, parse_config


@pytest.fixture
def cfg(tmp_path: Path):  # noqa: ANN201
    return config_from_env({"HYPERVM_STATE_DIR": str(tmp_path / "state"),
                            "HYPERVM_RUN_DIR": str(tmp_path / "run")})


# -- cache key -------------------------------------------------------------------------------

def test_cache_key_is_stable_and_short() -> None:
    a = hyperkernel.cache_key(b"CONFIG_X=y\n", "6.1.1-1", "1")
    assert a == hyperkernel.cache_key(b"CONFIG_X=y\n", "6.1.1-1", "1")
    assert len(a) == store.KEY_LENGTH and int(a, 16) >= 0


@pytest.mark.parametrize("change", [
    (b"CONFIG_X=n\n", "6.1.1-1", "1"),
    (b"CONFIG_X=y\n", "6.1.1-2", "1"),
    (b"CONFIG_X=y\n", "6.1.1-1", "2"),
])
def test_cache_key_changes_with_each_input(change: tuple[bytes, str, str]) -> None:
    assert hyperkernel.cache_key(*change) != hyperkernel.cache_key(b"CONFIG_X=y\n", "6.1.1-1", "1")


def test_cache_key_parts_do_not_run_together() -> None:
    assert hyperkernel.cache_key(b"ab", "c", "1") != hyperkernel.cache_key(b"a", "bc", "1")


# -- Kconfig ---------------------------------------------------------------------------------

def test_parse_config_reads_set_and_unset() -> None:
    text = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x y\"\n# a comment\n\nCONFIG_D=64\n"
    assert parse_config(text) == {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": '"x y"',
                                  "CONFIG_D": "64"}


def test_dropped_options_names_each_dropped_option() -> None:
    fragment = "CONFIG_A=y\nCONFIG_B=y\n# CONFIG_M is not set\nCONFIG_C=y\n"
    final = "CONFIG_A=y\n# CONFIG_B is not set\n"
    assert dropped_options(fragment, final) == [
        "CONFIG_B (wanted y, got n)", "CONFIG_C (wanted y, got n)"]


def test_dropped_options_empty_when_all_kept() -> None:
    assert dropped_options("CONFIG_A=y\n# CONFIG_M is not set\n", "CONFIG_A=y\n") == []


def test_dropped_options_sees_a_module_instead_of_builtin() -> None:
    assert dropped_options("CONFIG_A=y\n", "CONFIG_A=m\n") == ["CONFIG_A (wanted y, got m)"]


REQUIRED = """
64BIT PVH PCI VIRTIO_PCI VIRTIO_BLK VIRTIO_CONSOLE VIRTIO_NET NET_9P NET_9P_VIRTIO 9P_FS
9P_FS_POSIX_ACL OVERLAY_FS EROFS_FS EROFS_FS_XATTR EXT4_FS TMPFS TMPFS_XATTR DEVTMPFS PROC_FS
SYSFS NAMESPACES UTS_NS IPC_NS PID_NS NET_NS USER_NS CGROUPS SERIAL_8250 SERIAL_8250_CONSOLE
PRINTK TTY UNIX98_PTYS MULTIUSER FUTEX EPOLL SIGNALFD TIMERFD EVENTFD SHMEM AIO FILE_LOCKING
POSIX_TIMERS BINFMT_ELF BINFMT_SCRIPT NET UNIX INET IPV6 PACKET SYSVIPC POSIX_MQUEUE FHANDLE
INOTIFY_USER BLK_DEV_INITRD
""".split()


def test_fragment_enables_what_the_guest_needs() -> None:
    options = parse_config(hyperkernel.FRAGMENT.read_text())
    missing = [o for o in REQUIRED if options.get(f"CONFIG_{o}") != "y"]
    assert not missing, f"fragment lacks {missing}"
    assert options.get("CONFIG_MODULES") == "n"
    assert not any(name.startswith("CONFIG_NETFILTER") and v == "y"
                   for name, v in options.items())


def test_fragment_leaves_out_what_costs_every_idle_vm_memory() -> None:
    """Issue 18: each guest holds its own copy of the kernel image; these were measured off
    (bench.idlemem) and nothing in a HyperVM uses them (the initrd is an uncompressed cpio)."""
    options = parse_config(hyperkernel.FRAGMENT.read_text())
    off = ["RD_GZIP", "RD_ZSTD", "RD_XZ", "MQ_IOSCHED_DEADLINE", "MQ_IOSCHED_KYBER", "SWAP",
           "ETHTOOL_NETLINK", "PTP_1588_CLOCK", "SCHED_DEBUG", "SLUB_DEBUG"]
    assert [o for o in off if options.get(f"CONFIG_{o}") != "n"] == []


def test_fragment_has_no_partition_parsers() -> None:
    """Every disk of ours is a whole-disk erofs or ext4 (image layers, the pool's hot-added
    LUNs; volumes are 9p): the MSDOS and EFI parsers only read each new disk's first page at
    its probe (a cold VM's boot), and its close truncated that page again."""
    options = parse_config(hyperkernel.FRAGMENT.read_text())
    assert options.get("CONFIG_PARTITION_ADVANCED") == "y"
    assert options.get("CONFIG_MSDOS_PARTITION") == "n"
    assert options.get("CONFIG_EFI_PARTITION") == "n"


def test_fragment_ships_as_package_data() -> None:
    setup_cfg = (Path(__file__).resolve().parents[2] / "setup.cfg").read_text()
    assert "vmimage.kernel = *.config" in setup_cfg


# -- store -----------------------------------------------------------------------------------

def test_publish_is_atomic_and_world_readable(tmp_path: Path) -> None:
    with store.staging(tmp_path, "k1") as tmp:
        (tmp / "a").write_text("x")
        (tmp / "run").write_text("#!/bin/sh\n")
        (tmp / "run").chmod(0o700)
        (tmp / "sub").mkdir(mode=0o700)
        (tmp / "a").chmod(0o600)
        assert not (tmp_path / "k1").exists()
        store.publish(tmp, tmp_path / "k1")
    final = tmp_path / "k1"
    assert stat.S_IMODE(final.stat().st_mode) == 0o755
    assert stat.S_IMODE((final / "a").stat().st_mode) == 0o644
    assert stat.S_IMODE((final / "run").stat().st_mode) == 0o755
    assert stat.S_IMODE((final / "sub").stat().st_mode) == 0o755
    assert [p.name for p in tmp_path.iterdir()] == ["k1"]  # staging dir gone


def test_staging_is_removed_on_failure(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), store.staging(tmp_path, "k") as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("build failed")
    assert list(tmp_path.iterdir()) == []


def test_publish_race_keeps_the_first(tmp_path: Path) -> None:
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "first").write_text("1")
    with store.staging(tmp_path, "k") as tmp:
        (tmp / "second").write_text("2")
        (tmp / "extra").mkdir()
        (tmp / "extra" / "f").write_text("x")  # non-empty: rename onto a non-empty dir fails
        store.publish(tmp, tmp_path / "k")
    assert (tmp_path / "k" / "first").exists()


def test_lock_serialises_builders(tmp_path: Path) -> None:
    inside = []
    overlap = []

    def worker() -> None:
        with store.locked(tmp_path / ".lock"):
            if inside:
                overlap.append(True)
            inside.append(1)
            threading.Event().wait(0.05)
            inside.pop()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not overlap


# -- ensure / find ---------------------------------------------------------------------------

def _fake_hyperkernel(cfg, key: str) -> Path:  # noqa: ANN001
    d = cfg.kernel_dir / key
    d.mkdir(parents=True)
    (d / "vmlinux").write_bytes(b"\x7fELF")
    (d / "meta.json").write_text(json.dumps({"version": "6.1.192", "kind": "hyperkernel"}))
    return d


def test_find_kernel_returns_the_cached_hyperkernel(cfg, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(hyperkernel, "current_key", lambda: "abc123")
    _fake_hyperkernel(cfg, "abc123")
    k = kmod.find_kernel(cfg, env={})
    assert k == Kernel(path=cfg.kernel_dir / "abc123" / "vmlinux", version="6.1.192",
                       kind="hyperkernel", modules=(), key="abc123")


def test_find_kernel_without_kernel_says_run_make_kernel(cfg, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(hyperkernel, "current_key", lambda: "abc123")
    (cfg.kernel_dir / "half0000").mkdir(parents=True)  # no meta.json: an unfinished build
    with pytest.raises(HostError) as err:
        kmod.find_kernel(cfg, env={})
    assert "make kernel" in str(err.value)


def test_find_kernel_uses_the_newest_stale_kernel(cfg, monkeypatch, caplog) -> None:  # noqa: ANN001
    monkeypatch.setattr(hyperkernel, "current_key", lambda: "abc123")
    old = _fake_hyperkernel(cfg, "old0000")
    newer = _fake_hyperkernel(cfg, "old1111")
    os.utime(old / "meta.json", (1, 1))
    k = kmod.find_kernel(cfg, env={})
    assert k.key == newer.name
    assert "make kernel" in caplog.text


def test_kernel_from_dir_reads_a_kernel_outside_the_store(tmp_path: Path) -> None:
    d = tmp_path / "k1"
    d.mkdir()
    with pytest.raises(HostError) as err:
        kmod.kernel_from_dir(d)
    assert "no vmlinux" in str(err.value)
    (d / "vmlinux").write_bytes(b"\x7fELF")
    (d / "meta.json").write_text(json.dumps({"version": "6.1.192"}))
    assert kmod.kernel_from_dir(d) == Kernel(path=d / "vmlinux", version="6.1.192",
                                             kind="hyperkernel", key="k1")


def test_ensure_kernel_builds_only_when_missing(cfg, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(hyperkernel, "current_key", lambda: "k1")
    builds = []

    def fake_build(cfg_, key, final):  # noqa: ANN001, ANN202
        builds.append(key)
        return _fake_hyperkernel(cfg_, key)

    monkeypatch.setattr(hyperkernel, "_build", fake_build)
    first = kmod.ensure_kernel(cfg, env={})
    second = kmod.ensure_kernel(cfg, env={})
    assert builds == ["k1"] and first == second and first.kind == "hyperkernel"


def test_ensure_kernel_falls_back_to_distro(cfg, monkeypatch) -> None:  # noqa: ANN001
    def broken() -> str:
        raise HostError("linux-source-6.1 is not installed")

    fallback = Kernel(path=Path("/x/vmlinuz"), version="6.1.0-1-amd64", kind="distro")
    monkeypatch.setattr(hyperkernel, "current_key", broken)
    monkeypatch.setattr(distro, "ensure_distro_kernel", lambda c: fallback)
    assert kmod.ensure_kernel(cfg, env={}) is fallback


def test_both_kernels_failing_names_both_causes(cfg, monkeypatch) -> None:  # noqa: ANN001
    def broken() -> str:
        raise HostError("linux-source-6.1 is not installed")

    def no_distro(c):  # noqa: ANN001, ANN202
        raise HostError("no kernel in /boot")

    monkeypatch.setattr(hyperkernel, "current_key", broken)
    monkeypatch.setattr(distro, "ensure_distro_kernel", no_distro)
    with pytest.raises(HostError) as err:
        kmod.ensure_kernel(cfg, env={})
    assert "linux-source-6.1 is not installed" in str(err.value)
    assert "no kernel in /boot" in str(err.value)


def test_distro_requested_skips_the_build(cfg, monkeypatch) -> None:  # noqa: ANN001
    fallback = Kernel(path=Path("/x/vmlinuz"), version="6.1.0-1-amd64", kind="distro")
    monkeypatch.setattr(hyperkernel, "ensure_hyperkernel",
                        lambda c: pytest.fail("must not build"))
    monkeypatch.setattr(distro, "ensure_distro_kernel", lambda c: fallback)
    assert kmod.ensure_kernel(cfg, env={"HYPERVM_KERNEL": "distro"}) is fallback


def test_unknown_kernel_kind_names_the_variable(cfg) -> None:  # noqa: ANN001
    with pytest.raises(InvalidSpec) as err:
        kmod.find_kernel(cfg, env={"HYPERVM_KERNEL": "zImage"})
    assert err.value.field == "HYPERVM_KERNEL"


# -- distro fallback -------------------------------------------------------------------------

MODULES_DEP = """\
kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz kernel/fs/mbcache.ko.xz kernel/fs/jbd2/jbd2.ko.xz
kernel/fs/jbd2/jbd2.ko.xz:
kernel/fs/mbcache.ko.xz:
kernel/lib/crc16.ko.xz:
kernel/drivers/virtio/virtio_pci.ko.xz: kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz
kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz:
kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz
kernel/net/9p/9pnet.ko.xz:
kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz
kernel/fs/netfs/netfs.ko.xz:
kernel/fs/overlayfs/overlay.ko.xz:
kernel/drivers/block/virtio_blk.ko.xz:
kernel/drivers/char/virtio_console.ko.xz:
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz \
kernel/net/core/failover.ko.xz
kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz
kernel/net/core/failover.ko.xz:
kernel/drivers/char/hw_random/virtio-rng.ko.xz:
kernel/crypto/crc32c_generic.ko.xz:
"""


def test_module_name_normalises() -> None:
    assert distro.module_name("kernel/drivers/char/hw_random/virtio-rng.ko.xz") == "virtio_rng"
    assert distro.module_name("kernel/fs/9p/9p.ko") == "9p"


def test_select_modules_orders_dependencies_first() -> None:
    table = distro.parse_modules_dep(MODULES_DEP)
    order = distro.select_modules(table, builtin={"erofs"})
    names = [distro.module_name(p) for p in order]
    assert len(names) == len(set(names))
    for mod, deps in table.items():
        if mod in names:
            for dep in deps[1]:
                assert names.index(distro.module_name(dep)) < names.index(mod), (dep, mod)
    assert "virtio_rng" in names  # optional and present
    assert names[0] == "crc32c_generic"  # before libcrc32c users
    assert "erofs" not in names  # built in


def test_select_modules_names_every_missing_module() -> None:
    table = distro.parse_modules_dep(MODULES_DEP)
    with pytest.raises(HostError) as err:
        distro.select_modules(table, builtin=set())
    assert "erofs" in str(err.value)


def test_load_order_detects_cycles() -> None:
    table = {"a": ("a.ko", ["b.ko"]), "b": ("b.ko", ["a.ko"])}
    with pytest.raises(HostError):
        distro.load_order(["a"], table)


def test_pick_release_prefers_running_then_newest(tmp_path: Path) -> None:
    boot, mods = tmp_path / "boot", tmp_path / "modules"
    boot.mkdir()
    for rel in ("6.1.0-9-amd64", "6.1.0-10-amd64", "6.1.0-11-amd64"):
        (boot / f"vmlinuz-{rel}").write_bytes(b"")
        if rel != "6.1.0-11-amd64":  # no modules: unusable
            (mods / rel).mkdir(parents=True)
            (mods / rel / "modules.dep").write_text("")
    assert distro.pick_release(boot, mods, running="6.1.0-9-amd64") == "6.1.0-9-amd64"
    assert distro.pick_release(boot, mods, running="6.18.0") == "6.1.0-10-amd64"
    assert distro.pick_release(tmp_path / "none", mods, running="x") is None


def test_distro_kernel_is_prepared_with_decompressed_modules(cfg, tmp_path: Path,
                                                             monkeypatch) -> None:  # noqa: ANN001
    import lzma

    release = "6.1.0-99-amd64"
    boot, mods = tmp_path / "boot", tmp_path / "lib-modules"
    boot.mkdir()
    (boot / f"vmlinuz-{release}").write_bytes(b"bzImage")
    root = mods / release
    table = distro.parse_modules_dep(MODULES_DEP)
    for path, _ in table.values():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(lzma.compress(f"module {path}".encode()))
    (root / "modules.dep").write_text(MODULES_DEP)
    (root / "modules.builtin").write_text("kernel/fs/erofs/erofs.ko\n")
    monkeypatch.setattr(distro, "BOOT", boot)
    monkeypatch.setattr(distro, "MODULES_ROOT", mods)
    monkeypatch.setattr(distro, "_install_distro_kernel", lambda: pytest.fail("no apt here"))
    k = kmod.ensure_kernel(cfg, env={"HYPERVM_KERNEL": "distro"})
    assert k.kind == "distro" and k.version == release
    assert k.path.read_bytes() == b"bzImage"
    assert [m.name for m in k.modules][-1] == "virtio_rng.ko"
    assert k.modules[0].read_bytes().startswith(b"module kernel/")
    assert all(os.stat(m).st_mode & 0o044 == 0o044 for m in k.modules)
    assert kmod.find_kernel(cfg, env={"HYPERVM_KERNEL": "distro"}) == k


# -- the build recipe, with make faked ---------------------------------------------------------

def _fake_make(final_config: str, calls: list[list[str]]):  # noqa: ANN202
    """A stand-in for hyperkernel._run: records each step and writes what make would."""

    def run(argv: list[str], logfile, cwd=None, meter=None) -> None:  # noqa: ANN001
        calls.append(argv)
        objdir = next((Path(a[2:]) for a in argv if a.startswith("O=")), None)
        if argv[-1] == "olddefconfig" and objdir:
            (objdir / ".config").write_text(final_config)
        if argv[0] == "objcopy":
            Path(argv[-1]).write_bytes(Path(argv[-2]).read_bytes())
        if argv[-1] == "vmlinux" and objdir:
            (objdir / "vmlinux").write_bytes(b"\x7fELF")
            (objdir / "include/config").mkdir(parents=True)
            (objdir / "include/config/kernel.release").write_text("6.1.999\n")
        if logfile is not None:
            with open(logfile, "a") as fh:
                fh.write(" ".join(argv) + "\n")

    return run


@pytest.fixture
def fake_source(cfg, monkeypatch, tmp_path: Path) -> Path:  # noqa: ANN001
    fragment = tmp_path / "frag.config"
    fragment.write_text("CONFIG_A=y\n# CONFIG_B is not set\n")
    tree = hyperkernel.source_tree(cfg, "6.1.1-1")
    tree.mkdir(parents=True)
    (tree / "Makefile").write_text("")
    monkeypatch.setattr(hyperkernel, "FRAGMENT", fragment)
    monkeypatch.setattr(hyperkernel, "source_package_version", lambda: "6.1.1-1")
    monkeypatch.setattr(hyperkernel, "current_key", lambda: "feedbeef")
    return fragment


def test_build_recipe_publishes_vmlinux_config_and_meta(cfg, fake_source, monkeypatch) -> None:  # noqa: ANN001
    calls: list[list[str]] = []
    monkeypatch.setattr(hyperkernel, "_run", _fake_make("CONFIG_A=y\n", calls))
    out = hyperkernel.ensure_hyperkernel(cfg)
    steps = [c[-1] if c[0] == "make" else Path(c[0]).name for c in calls]
    assert steps == ["tinyconfig", "merge_config.sh", "olddefconfig", "vmlinux", "objcopy"]
    assert any(a.startswith("-j") for a in calls[-2])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["version"] == "6.1.999" and meta["kind"] == "hyperkernel"
    assert meta["source_package"] == "linux-source-6.1=6.1.1-1" and "build_seconds" in meta
    assert (out / "config").read_text() == "CONFIG_A=y\n"
    assert sorted(p.name for p in out.iterdir()) == ["build.log", "config", "meta.json",
                                                     "vmlinux", "vmlinux.debug"]
    assert stat.S_IMODE((out / "vmlinux").stat().st_mode) == 0o644


def test_build_fails_naming_dropped_options_before_compiling(cfg, fake_source,
                                                             monkeypatch) -> None:  # noqa: ANN001
    calls: list[list[str]] = []
    monkeypatch.setattr(hyperkernel, "_run", _fake_make("# CONFIG_A is not set\nCONFIG_B=y\n",
                                                        calls))
    with pytest.raises(HostError) as err:
        hyperkernel.ensure_hyperkernel(cfg)
    assert "CONFIG_A (wanted y, got n)" in str(err.value)
    assert "CONFIG_B (wanted n, got y)" in str(err.value)
    assert calls[-1][-1] == "olddefconfig"  # never started the long compile
    assert (cfg.kernel_dir / "failed-feedbeef.log").exists()
    assert not (cfg.kernel_dir / "feedbeef").exists()
    assert not [p for p in cfg.kernel_dir.iterdir() if p.name.startswith(".tmp-")]


def test_package_versions_are_asked_of_dpkg_once_per_process(monkeypatch) -> None:  # noqa: ANN001
    """Every cold boot looks its kernel and QEMU up by package version: dpkg-query runs once
    for both (vmimage.boot.PACKAGE_FIELDS), and not again."""
    import subprocess

    calls = []

    def fake_run(argv, **kwargs):  # noqa: ANN001, ANN003, ANN202
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, stdout=(
            "linux-source-6.1\tinstall ok installed\t6.1.1-1\t6.1.1-1\n"
            "qemu-system-x86:amd64\tinstall ok installed\t1:7.2+b3\t1:7.2\n"), stderr="")

    store.forget_package_versions()
    monkeypatch.setattr(subprocess, "run", fake_run)  # the module store imports
    try:
        assert store.package_versions(boot.PACKAGE_FIELDS) == ["6.1.1-1", "1:7.2"]
        assert store.package_version("linux-source-6.1") == "6.1.1-1"
        assert store.package_version("qemu-system-x86", "source:Version") == "1:7.2"
        assert len(calls) == 1 and calls[0][-2:] == ["linux-source-6.1", "qemu-system-x86"]
        assert calls[0][2] == "-f=${binary:Package}\\t${Status}\\t${Version}\\t" \
                              "${source:Version}\\n"
    finally:
        store.forget_package_versions()


def test_a_package_dpkg_does_not_know_or_has_not_installed_has_no_version(
        monkeypatch) -> None:  # noqa: ANN001
    import subprocess

    def fake_run(argv, **kwargs):  # noqa: ANN001, ANN003, ANN202
        return subprocess.CompletedProcess(argv, 1, stdout=(
            "linux-source-6.1\tdeinstall ok config-files\t6.1.1-1\n"), stderr="no packages")

    store.forget_package_versions()
    monkeypatch.setattr(subprocess, "run", fake_run)  # the module store imports
    try:
        assert store.package_versions([("linux-source-6.1", "Version"),
                                       ("nosuch", "Version")]) == [None, None]
    finally:
        store.forget_package_versions()


def test_the_patches_are_in_the_key_and_name_the_source_tree(
        cfg, monkeypatch, tmp_path: Path) -> None:  # noqa: ANN001
    """A changed patch builds a new kernel from a tree patched with it, never from a tree
    patched with another version of it."""
    base = hyperkernel.cache_key(b"CONFIG_X=y\n", "6.1.1-1", "3")
    tree = hyperkernel.source_tree(cfg, "6.1.1-1")
    patch = tmp_path / "apic-khz.patch"
    patch.write_text("--- a/x\n+++ b/x\n")
    monkeypatch.setattr(hyperkernel, "PATCHES", (patch,))
    assert hyperkernel.cache_key(b"CONFIG_X=y\n", "6.1.1-1", "3") != base
    assert hyperkernel.source_tree(cfg, "6.1.1-1") != tree
    assert hyperkernel.source_tree(cfg, "6.1.1-1").name.startswith("linux-source-6.1.1-1+")


def test_the_source_is_patched_before_it_is_renamed_into_place(
        cfg, monkeypatch, tmp_path: Path) -> None:  # noqa: ANN001
    patches = (tmp_path / "one.patch", tmp_path / "two.patch")
    for p in patches:
        p.write_text("")
    monkeypatch.setattr(hyperkernel, "PATCHES", patches)
    calls: list[tuple[str, ...]] = []

    def run(argv, logfile, cwd=None, meter=None) -> None:  # noqa: ANN001
        calls.append((argv[0], argv[-1], str(cwd)))
        if argv[0] == "tar":
            (Path(argv[-1]) / "linux-source-6.1").mkdir()
            (Path(argv[-1]) / "linux-source-6.1" / "Makefile").write_text("")
        elif Path(argv[-1]).name == "two.patch":
            raise HostError("patch failed: Hunk #1 FAILED")

    monkeypatch.setattr(hyperkernel, "_run", run)
    with pytest.raises(HostError):
        hyperkernel._unpacked_source(cfg, "6.1.1-1")
    assert [c[:2] for c in calls[1:]] == [("patch", str(patches[0])), ("patch", str(patches[1]))]
    assert calls[1][2].endswith("linux-source-6.1")  # in the staging tree
    tree = hyperkernel.source_tree(cfg, "6.1.1-1")
    assert not tree.exists() and list(tree.parent.iterdir()) == []  # no half-patched tree
    patches[1].write_text("")
    monkeypatch.setattr(hyperkernel, "_run", lambda argv, logfile, cwd=None, meter=None: (
        run(argv, logfile, cwd) if argv[0] == "tar" else calls.append(("patch", argv[-1], ""))))
    assert hyperkernel._unpacked_source(cfg, "6.1.1-1") == tree
    assert (tree / "Makefile").is_file()


def test_the_apic_patch_gives_the_kernel_its_parameter() -> None:
    text = hyperkernel.PATCHES[0].read_text()
    assert hyperkernel.PATCHES[0].name == "apic-khz.patch"
    assert 'early_param("hypervm.apic_khz"' in text and "lapic_timer_period =" in text
