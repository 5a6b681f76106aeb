"""Where snapshots live, and which snapshot a launch may use.

A snapshot is the saved state of a *template*: a pool-style VM (executor.libvirt.designer's
``template_domain``) of one memory size with 2 vCPUs present (1 online) of a capacity of
``HostConfig.snapshot_vcpus`` (a clone onlines its pod's present ones and gets the others
hot-plugged, so pods of 1 to that many vCPUs share the snapshot: :func:`template_shape`), booted,
its init READY and its NIC configured, nothing run. It is keyed by everything its saved state
depends on: the template's domain XML with placeholder name and paths (so the kernel, initrd (hence
init), QEMU, firmware, machine, memory, vCPU capacity and host policy), plus :data:`FORMAT`, and the
tenant the launch names. A new kernel, init or QEMU makes a new key; the old entries are never read
again. At most :data:`MAX_ENTRIES` are kept (the least recently used go: every memory size a pod
asks for has its own), ``remove`` clears the lot.

Every clone of a template starts from its memory: RESEED gives each its own RNG, but the guest
kernel's layout (KASLR), its stack canaries and whatever else the kernel and init drew at boot
are the template's in every clone (a clone that learns them knows them of every other). So a
snapshot is never shared between tenants (the key covers the tenant: a pod's
``network.tenant``, the Mesos role or ``run --tenant``; pods that name none share
``default``), and it is *rotated*: an entry older than ``HYPERVM_SNAPSHOT_MAX_AGE`` seconds
or that served ``HYPERVM_SNAPSHOT_MAX_CLONES`` clones is stale, and the next launch of its
shape makes a new template (:func:`lookup`; the clones are counted by one byte each appended
to ``clones``).

Layout (root only: the state is guest memory)::

    STATE_DIR/snapshots/                 0700
        lock                             flock: one template is made at a time
        <key>/                           0700, published by rename when complete
            state                        0600, QEMU's migration stream
            memory                       0600, the template's RAM (a sparse file of its
                                         size), when its QEMU has ``ram-template``: the
                                         clones map it copy-on-write, the stream then
                                         carries only the devices
            meta.json                    0600, what a clone needs (the template's name, READY)
            clones                       0600, one byte per clone started from it

An entry is written in a temporary directory beside it and renamed into place only once its
state, memory and meta are complete and synced (their names too): a reader sees a whole
entry or none. The temporary directory of a writer killed meanwhile (SIGKILL, power loss) is
never read; the next entry written or ``hypervm gc`` removes it (:func:`remove_stale_writes`:
only while no live writer holds the lock). A file
of an entry is never written again once it is published (a clone maps ``memory`` privately:
a file changing or shrinking under it would corrupt or kill it): a new template is a new
entry, with new inodes, and an entry goes only by unlinking its files, which the clones
mapping them keep until they end.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from executor.libvirt.designer import template_domain
from executor.libvirt.domain_xml import domain_xml
from hypervm.config import HostConfig
from hypervm.errors import HostError
from hypervm.frozen import frozen_dataclass
from vmimage.boot import BootFiles

log = logging.getLogger(__name__)

#: bump when what a snapshot holds, or how it is made, changes (2: saved once the boot's freed
#: memory was reported, executor.snapshot.template.SETTLE_S; 3: keyed by tenant, rotated;
#: 4: the template's RAM in a file of its own the clones map, with a QEMU that can; 5: 1 vCPU
#: present of ``HostConfig.snapshot_vcpus``, the clones' hot-plugged, keyed without them)
FORMAT = 5
DIR_MODE = 0o700
#: entries kept: every memory size (and vCPU count above HostConfig.snapshot_vcpus) a pod asks
#: for has a template of its own (~20 MB of state),
#: and a new kernel, init or QEMU makes new keys; the least recently used go first
MAX_ENTRIES = 16
#: after a failed template, launches of its shape boot cold this long before one tries again
RETRY_FAILED_S = 300.0
#: how often a launch with a deadline retries the store's lock
LOCK_POLL_S = 0.05
#: placeholders the key's XML is built with (a template's real ones are random)
_KEY_NAME = "hypervm-template"
_KEY_RUN_DIR = Path("/nonexistent/template")


@frozen_dataclass
class Shape:
    vcpus: int
    memory_mib: int
    #: whose clones these are: a template is never shared between tenants
    tenant: str = "default"


@frozen_dataclass
class Snapshot:
    """A complete entry: its state file and what its meta says."""

    state: Path
    #: the template's domain name (its NIC's MAC derives from it)
    template: str
    #: the READY payload the template's init sent (clones never send it again)
    ready: dict[str, Any]
    #: the template's RAM, which the clones map copy-on-write (None: it is in ``state``)
    memory: Path | None = None


def snapshots_dir(cfg: HostConfig) -> Path:
    return cfg.state_dir / "snapshots"


def template_shape(cfg: HostConfig, shape: Shape) -> Shape:
    """The shape of the template a pod of ``shape`` is cloned from: its vCPUs are the
    template's capacity (``cfg.snapshot_vcpus``, or the pod's own when it wants more; 2 are
    present, 1 online: the clone onlines its second, gets the rest hot-plugged), so pods of
    1..capacity vCPUs of one memory size and tenant share one snapshot."""
    return Shape(max(cfg.snapshot_vcpus, shape.vcpus), shape.memory_mib, shape.tenant)


def snapshot_key(boot: BootFiles, cfg: HostConfig, shape: Shape) -> str:
    """The key of the snapshot a pod of ``shape`` is cloned from, booted from ``boot`` on this
    host (the same for every vCPU count up to the template's capacity: :func:`template_shape`)."""
    shape = template_shape(cfg, shape)
    spec = template_domain(_KEY_NAME, boot, cfg, _KEY_RUN_DIR, shape.vcpus, shape.memory_mib, {})
    digest = hashlib.sha256(f"hypervm-snapshot {FORMAT}\n".encode())
    digest.update(domain_xml(spec).encode())
    digest.update(_emulator_identity(boot).encode())
    digest.update(f"\ntenant {shape.tenant!r}".encode())
    return digest.hexdigest()[:24]


def _emulator_identity(boot: BootFiles) -> str:
    """The QEMU binary as it is now: Debian's keeps its path across upgrades, and a stream
    saved by one QEMU need not load into another (the ``pc`` machine type moves on)."""
    try:
        st = os.stat(boot.qemu.path)
    except OSError:
        st = None
    stamp = f"{st.st_size}:{st.st_mtime_ns}" if st is not None else "absent"
    return f"\nqemu {boot.qemu.path} {boot.qemu.version} {boot.qemu.key} {stamp}"


def lookup(cfg: HostConfig, key: str, now: float | None = None) -> Snapshot | None:
    """The complete entry of ``key``, or None (also when it is due for rotation: older than
    ``cfg.snapshot_max_age_s`` or with ``cfg.snapshot_max_clones`` clones)."""
    entry = snapshots_dir(cfg) / key
    try:
        meta = json.loads((entry / "meta.json").read_text())
        memory = entry / "memory" if meta.get("memory") else None
        if meta.get("format") != FORMAT or not (entry / "state").is_file() or (
                memory is not None and not memory.is_file()):
            return None
        if (why := _rotation_due(cfg, entry, float(meta["made"]), now)) is not None:
            log.info("snapshot %s: %s: its template is remade", key, why)
            return None
        with contextlib.suppress(OSError):  # used now: the bound removes the least recent
            os.utime(entry)
        return Snapshot(state=entry / "state", template=str(meta["template"]),
                        ready=dict(meta["ready"]), memory=memory)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("snapshot %s is unreadable (%s): ignored", key, e)
        return None


def _rotation_due(cfg: HostConfig, entry: Path, made: float, now: float | None) -> str | None:
    """Why the entry must be made anew (None: it may serve another clone)."""
    age = (time.time() if now is None else now) - made
    if cfg.snapshot_max_age_s is not None and age >= cfg.snapshot_max_age_s:
        return f"{age:.0f} s old (HYPERVM_SNAPSHOT_MAX_AGE {cfg.snapshot_max_age_s:g})"
    try:
        clones = (entry / "clones").stat().st_size
    except FileNotFoundError:
        clones = 0
    if cfg.snapshot_max_clones is not None and clones >= cfg.snapshot_max_clones:
        return f"{clones} clones (HYPERVM_SNAPSHOT_MAX_CLONES {cfg.snapshot_max_clones})"
    return None


def count_clone(snapshot: Snapshot) -> None:
    """One more clone starts from ``snapshot`` (an appended byte: no lock, no lost count)."""
    try:
        fd = os.open(snapshot.state.parent / "clones",
                     os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:  # removed meanwhile (rotated, evicted): nothing left to count
        log.debug("snapshot %s: cannot count a clone: %s", snapshot.state.parent.name, e)
        return
    try:
        os.write(fd, b"c")
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(cfg: HostConfig, timeout: float | None = None) -> Iterator[None]:
    """Hold the store's lock (one template is made at a time, on the whole host); HostError
    when another holds it longer than ``timeout`` (None: wait as long as it takes)."""
    root = _root(cfg)
    fd = os.open(root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        _flock(fd, timeout)
        yield
    finally:
        os.close(fd)


def _flock(fd: int, timeout: float | None) -> None:
    if timeout is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise HostError(f"the snapshot store is busy making a template (waited "
                                f"{timeout:g} s)", hint="this launch boots cold") from None
            time.sleep(LOCK_POLL_S)


@contextlib.contextmanager
def writing(cfg: HostConfig, key: str) -> Iterator[tuple[int, Path]]:
    """A new entry for ``key``: yields (the state file's fd, a temporary directory to put
    ``meta.json`` in). Published by rename when the block ends without an error; removed
    otherwise. Call with :func:`locked` held."""
    root = _root(cfg)
    _remove_temporaries(root)  # of a writer that died: the lock says none is writing now
    _evict(root, MAX_ENTRIES - 1)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    try:
        fd = os.open(tmp / "state", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            yield fd, tmp
            os.fsync(fd)
        finally:
            os.close(fd)
        for name in os.listdir(tmp):
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(tmp)  # its names too: after a power loss the entry has all its files
        final = root / key
        if final.exists():  # a stale entry of an older format
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _temporaries(root: Path) -> list[Path]:
    """The temporary entries in ``root`` (:func:`writing`'s, all named ``.<key>.<random>``)."""
    return sorted(p for p in root.glob(".*") if p.is_dir() and not p.is_symlink())


def _remove_temporaries(root: Path) -> list[Path]:
    stale = _temporaries(root)
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def remove_stale_writes(cfg: HostConfig, dry_run: bool = False) -> list[Path]:
    """Remove (``dry_run``: only name) the temporary entries of writers that died making a
    template (SIGKILL, power loss): a half-written stream and RAM file, up to the template's
    memory size, that only the next template made on this host would remove otherwise. Only
    while no process holds the store's lock (a writer's temporary entry is its own while it
    lives: it holds the lock from before it makes the entry until the rename); nothing when a
    template is being made, or when there is no store of ours (never made here)."""
    root = snapshots_dir(cfg)
    try:
        st = root.lstat()
    except FileNotFoundError:
        return []
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        log.warning("%s is not a directory of ours: its temporary entries are left", root)
        return []
    try:
        fd = os.open(root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        log.warning("cannot open the snapshot store's lock (%s): its temporary entries stay", e)
        return []
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("a template is being made: the snapshot store's temporary entries stay")
            return []
        return _temporaries(root) if dry_run else _remove_temporaries(root)
    finally:
        os.close(fd)


def _evict(root: Path, keep: int) -> None:
    """Remove the least recently used entries beyond ``keep`` (a clone loading from one keeps
    its open file; one about to open it gets a HypervisorError and boots cold)."""
    entries = []
    for entry in root.iterdir():
        with contextlib.suppress(OSError):
            st = entry.lstat()
            if stat.S_ISDIR(st.st_mode) and not entry.name.startswith("."):
                entries.append((st.st_mtime, entry))
    entries.sort()
    for _, entry in entries[:max(0, len(entries) - keep)]:
        log.info("snapshot %s: removed, the least recently used of %d", entry.name, len(entries))
        shutil.rmtree(entry, ignore_errors=True)


def record_failure(cfg: HostConfig, key: str, reason: str) -> None:
    """Remember that the template of ``key`` failed (see :func:`check_not_failed`)."""
    path = _root(cfg) / f"{key}.failed"
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(reason[:1000])


def check_not_failed(cfg: HostConfig, key: str, now: float | None = None) -> None:
    """HostError while the template of ``key`` failed less than RETRY_FAILED_S ago."""
    path = _root(cfg) / f"{key}.failed"
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
        reason = path.read_text()
    except FileNotFoundError:
        return
    if age < RETRY_FAILED_S:
        raise HostError(f"the template of this shape failed {age:.0f} s ago ({reason}); "
                        f"next try in {RETRY_FAILED_S - age:.0f} s")
    path.unlink(missing_ok=True)


def open_memory(directory: Path) -> int:
    """A new ``memory`` file in the entry being written (:func:`writing`), open for writing:
    the template's QEMU writes its RAM into it (executor.libvirt.migration.save)."""
    return os.open(directory / "memory", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                   0o600)


def write_meta(directory: Path, template: str, ready: dict[str, Any],
               memory: bool = False) -> None:
    """``memory``: the entry's ``memory`` file holds the template's RAM (:func:`open_memory`)."""
    fd = os.open(directory / "meta.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"format": FORMAT, "template": template, "ready": ready,
                   "made": time.time(), "memory": memory}, f)


def discard(cfg: HostConfig, snapshot: Snapshot) -> None:
    """Remove an entry that did not load (the next launch of its shape makes a new one);
    clones loading from it keep their open file."""
    with locked(cfg):
        shutil.rmtree(snapshot.state.parent, ignore_errors=True)
    log.warning("snapshot %s did not load: removed", snapshot.state.parent.name)


def remove(cfg: HostConfig) -> None:
    """Remove every snapshot (e.g. after changing the guest kernel by hand)."""
    shutil.rmtree(snapshots_dir(cfg), ignore_errors=True)


def _root(cfg: HostConfig) -> Path:
    root = snapshots_dir(cfg)
    try:
        root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        st = root.lstat()
        if not root.is_dir() or root.is_symlink() or st.st_uid != os.geteuid():
            raise HostError(f"{root} is not a directory of ours",
                            hint=f"remove it; hypervm makes it ({DIR_MODE:o}, root only)")
        root.chmod(DIR_MODE)
    except OSError as e:
        raise HostError(f"cannot prepare the snapshot store {root}: {e}") from e
    return root


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
