"""Build the HyperKernel: Debian's linux-source-6.1 + our patches + tinyconfig + our fragment
→ vmlinux.

The result is cached once per machine at ``<state>/kernel/<key>/`` (``vmlinux``, ``config``,
``meta.json``, ``build.log``) where the key hashes the fragment, the patches, the linux-source
package version and :data:`RECIPE_VERSION`: change any of them and the next ``make kernel``
builds a new one. The source tarball is unpacked once per set of patches into
``<state>/kernel/.src/``, patched there, and built out of tree.

The patch (:data:`PATCHES`): ``apic-khz`` adds the boot parameter ``hypervm.apic_khz=``, the
local APIC timer's clock as the host states it (vmimage.boot gives it to TCG guests), so the
guest does not spend ~100 ms calibrating that timer at every boot (DEVELOPERS.md, "The guest's
timer calibrations").
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from hypervm.config import HostConfig
from hypervm.errors import HostError
from vmimage.kernel import store

#: typing.TYPE_CHECKING without importing typing
TYPE_CHECKING = False
if TYPE_CHECKING:
    from vmimage.progress import StepMeter

log = logging.getLogger(__name__)

#: bump when the build steps below change in a way that changes the output
RECIPE_VERSION = "3"
SOURCE_PACKAGE = "linux-source-6.1"
SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
FRAGMENT = Path(__file__).with_name("hyperkernel.config")
#: applied in order (``patch -p1``) to the unpacked source
PATCHES = (Path(__file__).with_name("apic-khz.patch"),)


#: Kbuild steps (CC, LD, AR … lines) of ``make vmlinux`` for RECIPE_VERSION 2 (1902 measured)
KBUILD_STEPS_ESTIMATE = 1900


def cache_key(fragment: bytes, package_version: str, recipe: str = RECIPE_VERSION,
              patches: bytes | None = None) -> str:
    """sha256 over (fragment bytes, linux-source package version, recipe version, the patches:
    :func:`patches_bytes` unless given), truncated."""
    return store.cache_key(fragment, package_version, recipe,
                           patches_bytes() if patches is None else patches)


def patches_bytes() -> bytes:
    return store.patches_bytes(PATCHES)


def source_package_version(package: str = SOURCE_PACKAGE) -> str | None:
    """The installed version of ``package`` per dpkg, or None when it is not installed."""
    return store.package_version(package)


def current_key() -> str:
    """The key of the HyperKernel this checkout would build on this machine."""
    version = source_package_version()
    if version is None or not SOURCE_TARBALL.is_file():
        raise HostError(f"{SOURCE_PACKAGE} is not installed, cannot build the HyperKernel",
                        hint=f"apt-get install {SOURCE_PACKAGE}, or set HYPERVM_KERNEL=distro")
    return cache_key(FRAGMENT.read_bytes(), version)


def kernel_dir(cfg: HostConfig, key: str) -> Path:
    return cfg.kernel_dir / key


def read_meta(directory: Path) -> dict | None:
    """The metadata of a complete HyperKernel in ``directory``, or None."""
    return store.read_meta(directory, "vmlinux")


def newest_built(cfg: HostConfig) -> Path | None:
    """The most recently built HyperKernel of any key (a stale one, when the fragment changed)."""
    built = [d for d in cfg.kernel_dir.glob("*") if d.is_dir()
             and not d.name.startswith((".", "distro-")) and read_meta(d)]
    return max(built, key=lambda d: (d / "meta.json").stat().st_mtime) if built else None


def ensure_hyperkernel(cfg: HostConfig) -> Path:
    """The directory of the HyperKernel for this checkout, building it first if missing."""
    key = current_key()
    final = kernel_dir(cfg, key)
    return store.ensure_built(final, "vmlinux", lambda: _build(cfg, key, final))


def _build(cfg: HostConfig, key: str, final: Path) -> Path:
    # deferred: a build only; a cold run's path (the key of the kernel it finds) does not
    # import shutil before its createXML (with bz2, lzma: ~2.5 ms, issue 17)
    import shutil

    # deferred: a build's, as shutil (a cold run checks the built kernel's key only: ~1 ms)
    from vmimage.kernel import elfunpad
    from vmimage.progress import StepMeter  # see above

    version = source_package_version() or "unknown"
    src = _unpacked_source(cfg, version)
    started = time.monotonic()
    with store.staging(cfg.kernel_dir, key) as out:
        objdir = out / "obj"
        objdir.mkdir()
        logfile = out / "build.log"
        log.info("building the HyperKernel %s (log: %s)", key, logfile)
        make = ["make", "-C", str(src), f"O={objdir}"]
        try:
            _run(make + ["tinyconfig"], logfile)
            _run([str(src / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(objdir),
                  str(objdir / ".config"), str(FRAGMENT)], logfile, cwd=src)
            _run(make + ["olddefconfig"], logfile)
            _check_config(objdir / ".config")  # fail fast, before minutes of compiling
            meter = StepMeter("building the HyperKernel", log.info, total=expected_steps(cfg))
            _run(make + [f"-j{os.cpu_count() or 1}", "vmlinux"], logfile, meter=meter)
            _check_config(objdir / ".config")
        except HostError:
            kept = store.keep_failed_log(logfile, cfg.kernel_dir, key)
            log.error("HyperKernel build failed; log kept at %s", kept)
            raise
        seconds = time.monotonic() - started
        release = (objdir / "include/config/kernel.release").read_text().strip()
        # what QEMU boots: no symbol table (QEMU's ELF loader keeps it on its heap, ~1 MiB per
        # VM) and no padding loaded (elfunpad: ~5 MiB of file pages and ~2.5 MiB of guest RAM
        # per VM); vmlinux.debug keeps the symbols for gdb
        shutil.copyfile(objdir / "vmlinux", out / "vmlinux.debug")
        _run(["objcopy", "--strip-all", str(objdir / "vmlinux"), str(objdir / "vmlinux.strip")],
             logfile)
        image, unloaded = elfunpad.unpad((objdir / "vmlinux.strip").read_bytes())
        _write_uncached(out / "vmlinux", image)
        log.info("vmlinux: %.1f MiB of padding not loaded", unloaded / 1048576)
        shutil.copyfile(objdir / ".config", out / "config")
        shutil.rmtree(objdir)
        meta = {
            "kind": "hyperkernel", "key": key, "version": release,
            "source_package": f"{SOURCE_PACKAGE}={version}", "recipe": RECIPE_VERSION,
            "build_seconds": round(seconds, 1), "steps": meter.done, "built_at": time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        log.info("HyperKernel %s (%s) built in %.0f s", key, release, seconds)
        return store.publish(out, final)


def _write_uncached(path: Path, data: bytes) -> None:
    """Write ``data`` and drop it from the page cache: a file just written can sit in large
    folios (ext4 on recent host kernels) that QEMU's mapping then maps 2 MiB at a time, padding
    and all (+3.6 MiB RSS per VM measured on a 6.18 host); read back by QEMU's faults it comes
    in small pages."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def _check_config(config: Path) -> None:
    from vmimage.kernel.kconfig import dropped_options  # deferred: a build's (see _build)

    dropped = dropped_options(FRAGMENT.read_text(), config.read_text())
    if dropped:
        raise HostError(
            "Kconfig did not keep these options of vmimage/kernel/hyperkernel.config (missing "
            "dependencies, or selected by another option): " + ", ".join(dropped),
            hint="add the options they depend on to the fragment, or drop what selects them",
        )


def source_tree(cfg: HostConfig, version: str) -> Path:
    """Where the source of ``version`` with :data:`PATCHES` applied is unpacked."""
    return cfg.kernel_dir / ".src" / f"linux-source-{version}+{store.cache_key(patches_bytes())}"


def _unpacked_source(cfg: HostConfig, version: str) -> Path:
    """The source tree for ``version`` with :data:`PATCHES` applied, unpacked and patched once
    (atomically: a tree is renamed into place only once every patch applied) under ``.src/``."""
    tree = source_tree(cfg, version)
    srcroot = store.ensure_dir(tree.parent)
    if (tree / "Makefile").is_file():
        return tree
    log.info("unpacking %s into %s", SOURCE_TARBALL, tree)
    with store.staging(srcroot, "unpack") as tmp:
        _run(["tar", "-xJf", str(SOURCE_TARBALL), "-C", str(tmp)], None)
        (unpacked,) = list(tmp.iterdir())
        for patch in PATCHES:
            _run(["patch", "-p1", "--forward", "--batch", "-i", str(patch)], None, cwd=unpacked)
        os.rename(unpacked, tree)
    return tree


def _run(argv: list[str], logfile: Path | None, cwd: Path | None = None,
         meter: StepMeter | None = None) -> None:
    env = dict(os.environ, KBUILD_BUILD_USER="hypervm", KBUILD_BUILD_HOST="hypervm",
               LC_ALL="C")
    store.run_logged(argv, logfile, cwd=cwd, env=env, meter=meter,
                     hint="run make deps (needs build-essential bc flex bison)")


def expected_steps(cfg: HostConfig) -> int:
    """Kbuild steps of a ``make vmlinux``: the last build's count, else the count measured
    for this recipe (Kbuild prints no total)."""
    newest = newest_built(cfg)
    meta = read_meta(newest) if newest is not None else None
    steps = meta.get("steps") if meta else None
    return steps if isinstance(steps, int) and steps > 0 else KBUILD_STEPS_ESTIMATE
