"""A keyed artefact store on disk: one directory per key, published atomically, under a lock.

Used for the kernel (``<state>/kernel/<key>/``), the initrd (``<state>/initrd/<key>/``) and
HyperQEMU (``<state>/qemu/<key>/``), with the helpers their builds share (key, package
version, logged command).
A builder fills a private staging directory next to the final one and renames it into place,
so a reader sees either nothing or a complete artefact; a lock file serialises builders so two
concurrent ``make kernel`` runs build once. Everything published is readable by the
``libvirt-qemu`` user: directories 0755, files 0644 (0755 when executable).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from hypervm.digest import sha256
from hypervm.errors import HostError
from vmimage.kernel import dpkg_cache

#: typing.TYPE_CHECKING without importing typing (~3 ms of a cold run's start)
TYPE_CHECKING = False

if TYPE_CHECKING:
    # subprocess (and shutil) are imported by the functions that run a program (a build step,
    # dpkg-query after a change of dpkg's database) or build: a cold run's cache hit runs none
    # of them before its createXML, which then imports neither (~1 + ~2.5 ms, issue 17)
    import subprocess

    from vmimage.progress import StepMeter  # a build's (see hyperkernel._build)

log = logging.getLogger(__name__)

#: prefix of staging directories; never a valid key, so readers and GC can skip them
STAGING_PREFIX = ".tmp-"
KEY_LENGTH = 16
#: lines of a build log quoted in a build failure
LOG_TAIL = 30


def cache_key(*parts: bytes | str) -> str:
    """sha256 over length-prefixed ``parts`` (so ("ab", "c") and ("a", "bc") differ), truncated."""
    encoded = [part.encode() if isinstance(part, str) else part for part in parts]
    # one buffer, hashed at once: its size picks the implementation (hypervm.digest)
    data = b"".join(len(x).to_bytes(8, "big") + x for x in encoded)
    return sha256(data).hexdigest()[:KEY_LENGTH]


#: (package, field) → its value per dpkg, or None: asked once per process
_package_fields: dict[tuple[str, str], str | None] = {}
_package_lock = threading.Lock()


def patches_bytes(patches: Sequence[Path]) -> bytes:
    """``patches``, in order, as a build's key sees them (a renamed patch changes the key)."""
    return b"\0".join(p.name.encode() + b"\n" + p.read_bytes() for p in patches)


def package_version(package: str, field: str = "Version") -> str | None:
    """``field`` of the installed Debian ``package`` per dpkg (``source:Version``: the version
    of the source package it was built from), or None when it is not installed. Asked once
    per process: every cold boot looks up its kernel and QEMU by these versions, and dpkg-query
    costs ~10 ms (a package upgraded meanwhile is seen by the next process)."""
    return package_versions([(package, field)])[0]


def package_versions(wanted: Sequence[tuple[str, str]],
                     cache: Path | None = None) -> list[str | None]:
    """:func:`package_version` of each (package, field), those not known yet asked of dpkg in
    one dpkg-query (a cold boot wants the kernel's and QEMU's: one run, not two). ``cache``:
    a file keeping the answers between processes while dpkg's database is unchanged
    (vmimage.kernel.dpkg_cache: a cold ``hypervm run`` then runs no dpkg-query)."""
    with _package_lock:
        missing = [w for w in dict.fromkeys(wanted) if w not in _package_fields]
        if missing and cache is not None:
            _package_fields.update(_cached_query(missing, cache))
        elif missing:
            _package_fields.update(_query_dpkg(missing))
        return [_package_fields[w] for w in wanted]


def _cached_query(wanted: Sequence[tuple[str, str]], cache: Path
                  ) -> dict[tuple[str, str], str | None]:
    """dpkg's answers for ``wanted`` from ``cache`` when it holds them for the current
    database, else from dpkg-query (and then kept in ``cache``)."""
    identity = dpkg_cache.database_identity()
    found = dpkg_cache.cached_fields(cache, wanted, identity)
    missing = [w for w in wanted if w not in found]
    if missing:
        found.update(_query_dpkg(missing))
        if identity is not None:
            dpkg_cache.save(cache, identity, {**dpkg_cache.load(cache, identity), **found})
    return found


def forget_package_versions() -> None:
    """Ask dpkg again next time (tests)."""
    with _package_lock:
        _package_fields.clear()


def _query_dpkg(wanted: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str | None]:
    found: dict[tuple[str, str], str | None] = dict.fromkeys(wanted)
    fields = list(dict.fromkeys(f for _, f in wanted))
    packages = list(dict.fromkeys(p for p, _ in wanted))
    line = "\\t".join(["${binary:Package}", "${Status}", *(f"${{{f}}}" for f in fields)])
    import subprocess  # deferred: see TYPE_CHECKING above
    try:  # a package dpkg does not know is left out (exit status 1), the others listed
        out = subprocess.run(["dpkg-query", "-W", f"-f={line}\\n", *packages],
                             capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return found
    for row in out.stdout.splitlines():
        name, status, *values = row.split("\t")
        if not status.endswith(" installed") or len(values) != len(fields):
            continue
        for field, value in zip(fields, values, strict=True):
            key = (name.split(":")[0], field)  # binary:Package may carry ":arch"
            if key in found and value:
                found[key] = value
    return found


def run_logged(argv: list[str], logfile: Path | None, *, cwd: Path | None = None,
               env: dict[str, str] | None = None, hint: str | None = None,
               meter: StepMeter | None = None) -> None:
    """Run a build step, its output appended to ``logfile`` (captured when None); on failure a
    :class:`HostError` quoting the last lines of the output. ``meter`` reads each line of the
    output as it comes (the build's progress)."""
    log.debug("running %s", " ".join(argv))
    import subprocess  # deferred: see TYPE_CHECKING above

    try:
        if logfile is not None and meter is not None:
            proc = _run_metered(argv, logfile, meter, cwd=cwd, env=env)
            output = logfile.read_text(errors="replace")
        elif logfile is None:
            proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True)
            output = proc.stderr.decode(errors="replace")
        else:
            with open(logfile, "a") as fh:
                fh.write(f"$ {' '.join(argv)}\n")
                fh.flush()
                proc = subprocess.run(argv, cwd=cwd, env=env, stdout=fh,
                                      stderr=subprocess.STDOUT)
            output = logfile.read_text(errors="replace")
    except FileNotFoundError as e:
        raise HostError(f"cannot run {argv[0]}: not installed", hint=hint) from e
    if proc.returncode != 0:
        tail = "\n".join(output.splitlines()[-LOG_TAIL:])
        raise HostError(f"{' '.join(argv[:3])} … failed with status {proc.returncode}:\n{tail}")


def _run_metered(argv: list[str], logfile: Path, meter: StepMeter, *, cwd: Path | None,
                 env: dict[str, str] | None) -> subprocess.CompletedProcess[bytes]:
    import subprocess  # deferred: see TYPE_CHECKING above

    with open(logfile, "ab") as fh:
        fh.write(f"$ {' '.join(argv)}\n".encode())
        fh.flush()
        with subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) as proc:
            assert proc.stdout is not None
            for raw in proc.stdout:
                fh.write(raw)
                meter.line(raw)
    return subprocess.CompletedProcess(argv, proc.returncode)


def ensure_dir(path: Path) -> Path:
    """Create ``path`` and its parents with mode 0755 (QEMU must traverse them)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o755)
    except OSError as e:
        raise HostError(f"cannot create {path}: {e.strerror}",
                        hint="run as root or set HYPERVM_STATE_DIR") from e
    return path


@contextlib.contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created if missing) for the block."""
    ensure_dir(lock_path.parent)
    with open(lock_path, "a+") as fh:
        log.debug("waiting for lock %s", lock_path)
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def make_readable(root: Path) -> None:
    """chmod a tree so any user can read it: dirs 0755, files 0644 or 0755 if executable."""
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    for p in paths:
        if p.is_symlink():
            continue
        if p.is_dir():
            p.chmod(0o755)
        else:
            p.chmod(0o755 if p.stat().st_mode & 0o111 else 0o644)


def read_meta(directory: Path, artefact: str) -> dict | None:
    """The ``meta.json`` of a complete artefact in ``directory`` (one that has ``artefact``, a
    path relative to it), or None."""
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if not (directory / artefact).is_file():
        return None
    return meta if isinstance(meta, dict) else None


def ensure_built(final: Path, artefact: str, build: Callable[[], Path]) -> Path:
    """``final`` when a complete artefact is there, else what ``build`` publishes; builders
    take turns under ``final.parent/.lock``, and one that waited reuses the first's result."""
    if read_meta(final, artefact):
        return final
    with locked(final.parent / ".lock"):
        if read_meta(final, artefact):  # built by whoever held the lock before us
            return final
        return build()


def keep_failed_log(logfile: Path, parent: Path, key: str) -> Path:
    """Copy a failed build's log to ``parent/failed-<key>.log`` (the staging dir goes away)."""
    kept = parent / f"failed-{key}.log"
    import shutil  # deferred: see TYPE_CHECKING above

    shutil.copyfile(logfile, kept)
    return kept


@contextlib.contextmanager
def staging(parent: Path, key: str) -> Iterator[Path]:
    """A fresh staging directory in ``parent``; removed on exit unless it was published."""
    ensure_dir(parent)
    import shutil  # deferred: a build only; a cold run's path skips it (issue 17)
    import tempfile  # deferred: a build only; a cold run's path skips it (issue 17)

    tmp = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{key}-", dir=parent))
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, final: Path) -> Path:
    """Make ``tmp`` readable and rename it to ``final`` (atomic on one file system)."""
    make_readable(tmp)
    try:
        os.rename(tmp, final)
    except OSError as e:
        if final.is_dir():  # someone else published the same key first: theirs is as good
            import shutil  # deferred: see TYPE_CHECKING above

            shutil.rmtree(tmp, ignore_errors=True)
            return final
        raise HostError(f"cannot publish {final}: {e.strerror}") from e
    log.info("published %s", final)
    return final
