"""Build HyperQEMU: Debian's own QEMU source (the version of the installed qemu-system-x86),
built for x86_64 with only the devices and features a HyperVM uses, plus six patches.

Why: Debian's ``qemu-system-x86_64`` links ~60 libraries and carries every device; an idle
HyperVM's QEMU spent ~18 MiB of RSS on its binary and libraries alone. The patches
(:data:`PATCHES`): ``tcg-flush`` adds the HMP command ``tcg-flush``, which drops the boot's
translations and gives the translation buffer back to the host (~30 MiB per VM under TCG);
``idle-memory`` keeps QEMU's own small memory (translation buffer, firmware and ACPI blobs)
out of transparent huge pages, leaves the unused 1.9 MiB of the ACPI tables' blob
untouched (~2.5-4 MiB per idle VM), and sizes virtio queue arrays and the translated-block
hash table for a HyperVM (~1.3 MiB); ``cpu-probe`` drops the x86 CPU's QOM property
``unavailable-features``, so libvirt reads a started guest's CPU in 2 monitor calls, not ~400
(createXML 0.22 -> 0.07 s under TCG); ``ram-template`` saves a stopped template's RAM into a
sparse file and maps such a file privately (copy-on-write, read-only fd) in place of a
snapshot clone's RAM before its state loads, so the clones of one template share the pages
they only read (executor.snapshot); ``zero-discard`` punches a cold VM's guest RAM pages of
zeros out of its memfd; ``tcg-invtsc`` gives TCG guests an invariant TSC, so a hot-plugged
vCPU reuses the first one's delay calibration instead of busy-looping ~0.3 s for its own.

The result is cached once per machine at ``<state>/qemu/<key>/`` (``bin/qemu-system-x86_64``,
``meta.json``, ``build.log``); the key hashes the device list, the patches, the configure
arguments, the source package version and :data:`RECIPE_VERSION`. The source comes from apt
(``apt-get source``: its signed indexes vouch for the files) and is downloaded once into
``<state>/qemu/.src/``.
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
RECIPE_VERSION = "1"
#: the binary package whose source version we build (Debian's QEMU for x86 guests)
BINARY_PACKAGE = "qemu-system-x86"
SOURCE_PACKAGE = "qemu"
HERE = Path(__file__).parent
DEVICES = HERE / "hyperqemu.mak"
#: applied in this order
PATCHES = (HERE / "tcg-flush.patch", HERE / "idle-memory.patch", HERE / "cpu-probe.patch",
           HERE / "ram-template.patch", HERE / "zero-discard.patch", HERE / "tcg-invtsc.patch")
BINARY = "qemu-system-x86_64"
#: what the patches add (Qemu.features)
FEATURES = ("tcg-flush", "idle-memory", "cpu-probe", "ram-template", "zero-discard", "tcg-invtsc")
#: where Debian's qemu-system-data keeps qboot, pvh.bin and the other firmware we load
FIRMWARE_PATH = "/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu"

#: every optional feature off (--without-default-features), then only what a HyperVM uses:
#: TCG and KVM, user-mode networking (slirp), virtio-9p (virtfs, attr, cap-ng), the seccomp
#: sandbox libvirt turns on, and malloc_trim (without it the heap of an idle VM doubles)
CONFIGURE_ARGS = (
    "--target-list=x86_64-softmmu",
    "--without-default-features",
    "--without-default-devices",
    "--with-devices-x86_64=hyperqemu",
    "--enable-tcg", "--enable-kvm",
    "--enable-slirp", "--enable-seccomp",
    "--enable-virtfs", "--enable-attr", "--enable-cap-ng",
    "--enable-fdt=system", "--enable-malloc-trim",
    "--disable-debug-info", "--disable-docs", "--disable-tools", "--disable-guest-agent",
    "--disable-install-blobs",
    f"--firmwarepath={FIRMWARE_PATH}",
)
APT_HINT = "run make qemu (it installs the build dependencies and enables deb-src), " \
           "or set HYPERVM_QEMU=distro"


def source_version() -> str | None:
    """The version of the source package the installed qemu-system-x86 was built from."""
    return store.package_version(BINARY_PACKAGE, "source:Version")


def cache_key(devices: bytes, patch: bytes, version: str, recipe: str = RECIPE_VERSION) -> str:
    return store.cache_key(devices, patch, "\0".join(CONFIGURE_ARGS), version, recipe)


def current_key() -> str:
    """The key of the HyperQEMU this checkout would build on this machine."""
    version = source_version()
    if version is None:
        raise HostError(f"{BINARY_PACKAGE} is not installed, so there is no QEMU source "
                        "version to build", hint=f"apt-get install {BINARY_PACKAGE}")
    return cache_key(DEVICES.read_bytes(), patches_bytes(), version)


def patches_bytes() -> bytes:
    return store.patches_bytes(PATCHES)


def qemu_dir(cfg: HostConfig, key: str) -> Path:
    return cfg.qemu_dir / key


def read_meta(directory: Path) -> dict | None:
    """The metadata of a complete HyperQEMU in ``directory``, or None."""
    return store.read_meta(directory, f"bin/{BINARY}")


def ensure_hyperqemu(cfg: HostConfig) -> Path:
    """The directory of the HyperQEMU for this checkout, building it first if missing."""
    key = current_key()
    final = qemu_dir(cfg, key)
    return store.ensure_built(final, f"bin/{BINARY}", lambda: _build(cfg, key, final))


def _build(cfg: HostConfig, key: str, final: Path) -> Path:
    import shutil  # deferred: a build only (see _hardening_flags)

    version = source_version() or "unknown"
    dsc = _download_source(cfg, version)
    started = time.monotonic()
    with store.staging(cfg.qemu_dir, key) as out:
        logfile = out / "build.log"
        log.info("building HyperQEMU %s from qemu %s (log: %s)", key, version, logfile)
        src, build = out / "src", out / "build"
        try:
            _run(["dpkg-source", "--no-copy", "-x", str(dsc), str(src)], logfile)
            for patch in PATCHES:
                _run(["patch", "-p1", "--forward", "-i", str(patch)], logfile, cwd=src)
            shutil.copyfile(DEVICES, src / "configs/devices/x86_64-softmmu/hyperqemu.mak")
            build.mkdir()
            cflags, ldflags = _hardening_flags()
            _run([str(src / "configure"), f"--prefix={final}", *CONFIGURE_ARGS,
                  f"--extra-cflags={cflags}", f"--extra-ldflags={ldflags}"], logfile, cwd=build)
            # deferred: a build's (a cold run checks the built QEMU's key only: ~0.4 ms)
            from vmimage.progress import StepMeter

            _run(["ninja", f"-j{os.cpu_count() or 1}", BINARY], logfile, cwd=build,
                 meter=StepMeter("building HyperQEMU", log.info))
        except HostError:
            kept = store.keep_failed_log(logfile, cfg.qemu_dir, key)
            log.error("HyperQEMU build failed; log kept at %s", kept)
            raise
        (out / "bin").mkdir()
        binary = out / "bin" / BINARY
        _run(["strip", "-o", str(binary), str(build / BINARY)], logfile)
        binary.chmod(0o755)  # libvirt runs it as libvirt-qemu
        shutil.rmtree(src)
        shutil.rmtree(build)
        seconds = time.monotonic() - started
        meta = {
            "kind": "hyperqemu", "key": key, "version": _qemu_version(binary),
            "source_package": f"{SOURCE_PACKAGE}={version}", "recipe": RECIPE_VERSION,
            "features": list(FEATURES), "build_seconds": round(seconds, 1),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        log.info("HyperQEMU %s (%s) built in %.0f s", key, meta["version"], seconds)
        return store.publish(out, final)


def _download_source(cfg: HostConfig, version: str) -> Path:
    """The .dsc of ``qemu=version`` with its tarballs, downloaded once into ``.src/``."""
    srcroot = store.ensure_dir(cfg.qemu_dir / ".src")
    upstream = version.split(":", 1)[-1]
    dsc = srcroot / version.replace(":", "_") / f"{SOURCE_PACKAGE}_{upstream}.dsc"
    if dsc.is_file():
        return dsc
    log.info("downloading the source of %s=%s with apt-get", SOURCE_PACKAGE, version)
    with store.staging(srcroot, "download") as tmp:
        try:
            _run(["apt-get", "source", "--download-only", f"{SOURCE_PACKAGE}={version}"],
                 None, cwd=tmp)
        except HostError as e:
            raise HostError(f"cannot download the source of {SOURCE_PACKAGE}={version}: {e}",
                            hint=APT_HINT) from e
        if not (tmp / dsc.name).is_file():
            raise HostError(f"apt-get source did not bring {dsc.name}", hint=APT_HINT)
        os.rename(tmp, dsc.parent)
        dsc.parent.chmod(0o755)
    return dsc


def _hardening_flags() -> tuple[str, str]:
    """Debian's build flags (stack protector, fortify, full RELRO, -O2) as QEMU's own package
    uses them, without -g (we do not ship debug info). LTO, -O3 and PGO were measured and not
    taken (README.md, "Compiler flags")."""
    # deferred: a build only; a cold run's path (the key of the HyperQEMU it finds) does not
    # import subprocess before its createXML (with selectors: ~1 ms, issue 17)
    import subprocess

    def flags(name: str) -> list[str]:
        out = subprocess.run(["dpkg-buildflags", "--get", name], capture_output=True,
                             text=True, check=False)
        return out.stdout.split() if out.returncode == 0 else []

    cflags = [f for f in flags("CFLAGS") + flags("CPPFLAGS") if f != "-g"]
    return " ".join(cflags), " ".join([*flags("LDFLAGS"), "-Wl,--as-needed"])


def _qemu_version(binary: Path) -> str:
    import subprocess  # deferred: a build only (see _hardening_flags)

    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                         check=False)
    first = out.stdout.splitlines()[0] if out.stdout else ""
    return first.removeprefix("QEMU emulator version ").strip()


def _run(argv: list[str], logfile: Path | None, cwd: Path | None = None,
         meter: StepMeter | None = None) -> None:
    store.run_logged(argv, logfile, cwd=cwd, env=dict(os.environ, LC_ALL="C"), hint=APT_HINT,
                     meter=meter)
