"""The record of every ACL entry a VM uid holds on a host directory (``STATE_DIR/volume-grants/``,
one JSON file per VM and directory): :mod:`executor.volume_access` writes and clears it under the
directory's flock; the uid allocator (:mod:`executor.libvirt.identity`) reads it, so that a uid
whose entry outlived its VM (its owner SIGKILLed, ``hypervm gc`` not run yet) is not handed to
another VM, which could reach the first VM's directory through it. A record stays until its
entry is off *and* (read-write) nothing under the directory is the uid's any more
(:mod:`executor.volume_files`): a record whose entry could not be taken off, whose directory was
moved, or whose walk was cut short keeps the uid out of reuse until ``hypervm gc`` completes it."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, fields
from pathlib import Path

from hypervm.config import HostConfig
from hypervm.frozen import frozen_dataclass

log = logging.getLogger(__name__)


@frozen_dataclass
class Grant:
    """A recorded ACL entry: ``uid`` (the QEMU of ``domain``) on the directory ``path``."""

    domain: str
    uid: int
    path: str
    dev: int
    ino: int
    #: the directory's ACL mask before any VM's entry (None: it had none)
    operator_mask: int | None
    #: the entry's permission (5: ``:ro``, 7: read-write, whose files the uid may own)
    perm: int = 7
    #: a share given to the uid itself (``Mount.owned``: a Mesos sandbox), not an ACL entry:
    #: the directory goes back to root, then what the uid made in it
    owned: bool = False

    @property
    def file_name(self) -> str:
        return f"{self.domain}.{self.dev}.{self.ino}.json"


_FIELDS = frozenset(field.name for field in fields(Grant))


@frozen_dataclass
class Keeper:
    """Where grants are recorded, and which uids are VMs' (another VM's entry stays)."""

    records: Path
    vm_uids: tuple[int, int]

    def is_vm_uid(self, uid: int) -> bool:
        return self.vm_uids[0] <= uid <= self.vm_uids[1]


def keeper(cfg: HostConfig) -> Keeper:
    return Keeper(cfg.state_dir / "volume-grants", cfg.vm_uid_range)


def write_record(directory: Path, grant: Grant) -> Path:
    """Record ``grant`` in ``directory``, whole or not at all (a temp file renamed over it): a
    record cut short by a kill would be unreadable, its uid unknown to the allocator. The
    record's path."""
    record = directory / grant.file_name
    part = record.with_name(f".{record.name}.part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(json.dumps(asdict(grant)).encode())
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, record)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return record


def read_record(path: Path) -> Grant:
    """One record (root wrote it into a root-only directory), fields it does not know (a newer
    version's) ignored; OSError, ValueError or TypeError when it cannot be read."""
    data = json.loads(path.read_text())
    return Grant(**{name: value for name, value in data.items() if name in _FIELDS})


def records(directory: Path) -> list[tuple[Path, Grant]]:
    """Every readable record (the caller holds the directory's lock). An unreadable one is
    logged and left: it may stand for an entry still on a directory (records are written whole,
    so it is another version's or damaged; deleting it would free a uid it may name)."""
    found = []
    for path in sorted(directory.glob("*.json")):
        try:
            found.append((path, read_record(path)))
        except (OSError, ValueError, TypeError) as e:
            log.error("cannot read the volume grant record %s (%s): left as it is; remove it "
                      "once its uid's ACL entry is off its directory", path, e)
    return found


def granted_uids(directory: Path) -> set[int]:
    """The uids that a record names: their ACL entries may still be on a host directory.
    Needs no lock: records appear and go whole (a rename, an unlink), and a record naming a uid
    is only written by the VM holding that uid's reservation."""
    uids = set()
    for path in directory.glob("*.json"):
        try:
            uids.add(int(read_record(path).uid))
        except (OSError, ValueError, TypeError):
            continue  # gone meanwhile, or unreadable (gc drops it)
    return uids
