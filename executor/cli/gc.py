"""``hypervm gc``: destroy our VMs whose owner process is gone and remove their run dirs, and
the exec sockets of Mesos tasks whose executor was killed (executor.mesos.exec_socket), and the
ACL entries on ``run -v`` directories of VMs whose owner was killed, handing what such a VM made
there back to the directory's owner (executor.volume_access), and the temporary entries of the
snapshot store that a process killed while it made a template left (executor.snapshot.store:
only while no live process makes one; a launch never uses them either way).

Domains are created auto-destroyed, so a dead owner normally takes its VM with it; gc catches
what slips through (libvirtd restarted, a domain defined by hand, a run dir left by a crash).
A domain is ours when it has our name prefix and metadata namespace; its owner is alive when a
process with the recorded pid exists *and* started at the recorded time (pids are recycled).
The selection is pure; :func:`collect_garbage` applies it.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from executor import volume_access
from executor.libvirt.hypervisor import Hypervisor
from executor.libvirt.owners import (
    ORPHAN_DIR_GRACE_S,
    Leftover,
    process_start_time,
    select_leftovers,
    select_orphan_dirs,
)
from executor.mesos.exec_socket import remove_stale_sockets
from executor.snapshot import store
from hypervm.config import HostConfig, config_from_env
from vmimage.images import ImageStore

log = logging.getLogger(__name__)

@dataclass
class GcReport:
    destroyed: list[Leftover] = field(default_factory=list)
    removed_dirs: list[Path] = field(default_factory=list)
    #: ``hypervm exec --task`` sockets nobody serves
    removed_sockets: list[Path] = field(default_factory=list)
    #: volume ACL entries of VMs that no longer run
    released_grants: list[volume_access.Grant] = field(default_factory=list)
    #: grants of VMs that no longer run that could not be finished: their records (and uids)
    #: stay
    unfinished_grants: list[volume_access.Unfinished] = field(default_factory=list)
    #: temporary entries of the snapshot store (executor.snapshot.store) whose writer died
    #: making a template (never one a live writer makes: it holds the store's lock)
    removed_snapshot_parts: list[Path] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    #: disk images the kept domains use: the image cache's gc must keep them
    in_use: set[Path] = field(default_factory=set)


# --- side effects -----------------------------------------------------------------------------


def _run_dir_entries(vms_dir: Path) -> list[tuple[str, float]]:
    try:
        return [(p.name, p.stat().st_mtime) for p in vms_dir.iterdir() if p.is_dir()]
    except FileNotFoundError:
        return []


def _remove_dir(path: Path, dry_run: bool) -> bool:
    if not path.is_dir():
        return False
    if not dry_run:
        shutil.rmtree(path, ignore_errors=True)
    return True


def collect_garbage(
    cfg: HostConfig, hv: Hypervisor, *, everything: bool = False, dry_run: bool = False
) -> GcReport:
    """Destroy leftover domains and remove their run dirs (and orphan ones) under
    ``cfg.vms_dir``."""

    report = GcReport()
    domains = hv.list_ours()
    leftovers = select_leftovers(domains, process_start_time, everything=everything)
    gone = {lo.name for lo in leftovers}
    report.kept = [d.name for d in domains if d.name not in gone]
    report.in_use = {p for d in domains if d.name not in gone for p in d.disk_paths}
    for leftover in leftovers:
        if not dry_run:
            hv.destroy(leftover.name)
        log.info("destroyed %s: %s", leftover.name, leftover.reason)
        report.destroyed.append(leftover)
        if _remove_dir(cfg.vms_dir / leftover.name, dry_run):
            report.removed_dirs.append(cfg.vms_dir / leftover.name)
    live = report.kept if not dry_run else [d.name for d in domains]
    grace = 0.0 if everything else ORPHAN_DIR_GRACE_S
    for name in select_orphan_dirs(_run_dir_entries(cfg.vms_dir), live, time.time(), grace):
        if _remove_dir(cfg.vms_dir / name, dry_run):
            report.removed_dirs.append(cfg.vms_dir / name)
    report.removed_sockets = remove_stale_sockets(cfg, dry_run=dry_run)
    report.removed_snapshot_parts = store.remove_stale_writes(cfg, dry_run=dry_run)
    report.released_grants = volume_access.release_stale(cfg, dry_run=dry_run,
                                                         unfinished=report.unfinished_grants)
    return report


# --- command ----------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "gc",
        help="destroy leftover HyperVMs and remove their files",
        description="Destroy the HyperVMs whose owner process is gone (or all with --all) and "
        "remove their run directories, the exec sockets of Mesos tasks whose executor is "
        "gone, the ACL entries on volumes (run -v) of VMs that no longer run (what those "
        "VMs made there goes to the directory's owner), and the half-written snapshots of "
        "processes killed while they made a snapshot's template.",
    )
    p.add_argument(
        "--all",
        action="store_true",
        dest="everything",
        help="destroy every HyperVM, even those whose owner still runs",
    )
    p.add_argument("-n", "--dry-run", action="store_true", help="only say what would be removed")
    p.add_argument("--images", action="store_true",
                   help="also drop tagged images from the cache (layers of running VMs stay)")
    p.set_defaults(func=gc_command)


def gc_command(args: argparse.Namespace) -> int:
    cfg = config_from_env()
    with Hypervisor(cfg.libvirt_uri, events=False) as hv:
        report = collect_garbage(cfg, hv, everything=args.everything, dry_run=args.dry_run)
    verb = "would destroy" if args.dry_run else "destroyed"
    for leftover in report.destroyed:
        print(f"{verb} {leftover.name} ({leftover.reason})")
    for path in report.removed_dirs + report.removed_sockets + report.removed_snapshot_parts:
        print(f"{'would remove' if args.dry_run else 'removed'} {path}")
    for grant in report.released_grants:
        print(f"{'would take' if args.dry_run else 'took'} the ACL entry of {grant.domain} "
              f"(uid {grant.uid}) off {grant.path}")
    for stuck in report.unfinished_grants:
        print(f"kept the volume grant record {stuck.record} of {stuck.grant.domain} (uid "
              f"{stuck.grant.uid} stays out of use): {stuck.why}")
    if not (report.destroyed or report.removed_dirs or report.removed_sockets
            or report.removed_snapshot_parts
            or report.released_grants or report.unfinished_grants):
        print(f"nothing to remove ({len(report.kept)} HyperVMs with a live owner)")
    if not args.dry_run:
        prune_image_cache(cfg, report.in_use, drop_tagged=args.images)
    return 0


def prune_image_cache(cfg: HostConfig, in_use: set[Path], *, drop_tagged: bool) -> None:
    """Remove cache entries no running VM uses (and, with ``drop_tagged``, tagged images)."""

    report = ImageStore(cfg).gc(in_use, keep_refs=[] if drop_tagged else None)
    for ref in report.removed_refs:
        print(f"untagged {ref}")
    print(f"image cache: removed {len(report.removed_images)} images and "
          f"{len(report.removed_layers)} layers ({report.freed_bytes / 1e6:.1f} MB), "
          f"kept {report.kept_layers} layers")
