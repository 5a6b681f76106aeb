"""``hypervm doctor``: memory sharing between VMs (KSM). The host's kernel samepage merging is
the operator's choice (``/sys/kernel/mm/ksm/run``); ``HYPERVM_KSM`` says whether HyperVMs'
guest RAM may take part (off by default: merged pages are a timing side channel between
tenants)."""

from __future__ import annotations

from pathlib import Path

from executor.cli.check import Check
from hypervm.config import HostConfig

KSM_DIR = Path("/sys/kernel/mm/ksm")
PAGE_KIB = 4


def _read(ksm_dir: Path, name: str) -> int | None:
    try:
        return int((ksm_dir / name).read_text().strip())
    except (OSError, ValueError):
        return None


def check_ksm(cfg: HostConfig, ksm_dir: Path = KSM_DIR) -> Check:
    run = _read(ksm_dir, "run")
    if run is None:
        detail = "this kernel has no KSM (/sys/kernel/mm/ksm)"
        if cfg.ksm:
            return Check("ksm", True, detail + ": HYPERVM_KSM=on merges nothing", warn=True)
        return Check("ksm", True, detail)
    if not cfg.ksm:
        state = "runs" if run == 1 else "is off"
        return Check("ksm", True, f"host KSM {state}; HyperVMs never share a page "
                     "(HYPERVM_KSM=off: merged pages let a tenant time another's memory)")
    if run != 1:
        fix = f"echo 1 > {ksm_dir}/run (README: Memory sharing)"
        return Check("ksm", True, "HYPERVM_KSM=on, but the host's KSM does not run "
                     f"({ksm_dir}/run = {run}): guest memory is mergeable, nothing merges it; "
                     f"to run it: {fix}", fix=fix, warn=True)
    sharing = _read(ksm_dir, "pages_sharing") or 0
    shared = _read(ksm_dir, "pages_shared") or 0
    saved_mib = (sharing * PAGE_KIB) / 1024
    return Check("ksm", True, f"HYPERVM_KSM=on and KSM runs: {shared} pages kept for {sharing} "
                 f"mappings (~{saved_mib:.0f} MiB saved on this host, every KSM user counted)")
