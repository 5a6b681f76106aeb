"""libvirt's createXML alone, for checking a change to the domain or to HyperQEMU:
``python -m bench.createfast [--rounds N] [--out FILE] [--baseline DIR]``.

Each round creates, on one libvirt connection, a **clone** domain (designer.clone_domain: the
own-clone snapshot start's domain, QEMU waiting for a migration stream) and a **cold** domain
(designer.cold_domain of bench.launch's shape: QEMU boots the guest), each with a uid of its
own (executor.libvirt.identity) as a launch has, times ``createXML`` alone and destroys the
domain at once. The XML comes from the tree measured (its designer, its boot files, so its
HyperQEMU key): ``--baseline DIR`` (another commit's tree, ``git archive BASE | tar -x -C DIR``)
adds the baseline tree's XML of both kinds, created on the same connection, interleaved with
this tree's (which goes first alternates). Both trees' HyperQEMU must be built. ~1 s a sample.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import libvirt

from bench import results
from bench.vmenv import VMEnv, bench_name
from executor.libvirt import identity
from executor.libvirt.hypervisor import Hypervisor
from executor.libvirt.owners import owner_metadata

log = logging.getLogger(__name__)

KINDS = ("clone", "cold")
#: bench.launch's shape: 1 vCPU, 128 MiB
VCPUS, MEMORY_MIB = 1, 128

#: prints the XML of one domain of a tree (run with that tree first on sys.path): only the
#: designer's and the boot resolver's public functions, present in every tree since issue 18
XML_OF_TREE = """
import json, sys
from pathlib import Path
from executor.libvirt.designer import RunFiles, clone_domain, cold_domain
from executor.libvirt.domain_xml import domain_xml
from hypervm.config import config_from_env
from hypervm.netspec import NetworkSpec
from hypervm.podspec import Resources
from vmimage.boot import resolve_boot
a = json.loads(sys.argv[1])
cfg = config_from_env()
boot = resolve_boot(cfg)
ident = tuple(a["identity"]) if a["identity"] else None
run_dir = Path(a["run_dir"])
if a["kind"] == "clone":
    spec = clone_domain(a["name"], a["name"], boot, cfg, run_dir, a["vcpus"], a["memory_mib"],
                        a["metadata"], identity=ident)
else:
    spec = cold_domain(a["name"], boot, cfg, RunFiles.under(run_dir),
                       Resources(cpus=a["vcpus"], memory_mib=a["memory_mib"]), NetworkSpec(),
                       a["metadata"], identity=ident)
sys.stdout.write(domain_xml(spec))
"""


def tree_xml(tree: Path, kind: str, name: str, run_dir: Path,
             ident: tuple[int, int] | None) -> str:
    """The domain XML ``tree``'s designer makes for a ``kind`` domain called ``name``."""
    args = {"kind": kind, "name": name, "run_dir": str(run_dir), "vcpus": VCPUS,
            "memory_mib": MEMORY_MIB, "metadata": owner_metadata(),
            "identity": list(ident) if ident is not None else None}
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", XML_OF_TREE, json.dumps(args)], cwd=tree,
                         env=env, capture_output=True, text=True, check=False, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"{tree}: cannot make the {kind} XML: {out.stderr.strip()}")
    return out.stdout


def create_once(env: VMEnv, hv: Hypervisor, tree: Path, kind: str) -> float:
    """Seconds of one ``createXML`` of ``tree``'s ``kind`` domain; destroyed at once."""
    name = "hypervm-" + bench_name(kind)
    run_dir = env.cfg.vms_dir / name
    ident = identity.for_vm(env.cfg, hv, name)
    pair = ident.pair if ident is not None else None
    dom = None
    try:
        xml = tree_xml(tree, kind, name, run_dir, pair)
        hv.prepare_run_dir(run_dir, pair)
        if kind == "clone":
            (run_dir / "share").mkdir(mode=0o755)
        started = time.monotonic()
        dom = hv.conn.createXML(xml, libvirt.VIR_DOMAIN_START_AUTODESTROY)
        return time.monotonic() - started
    finally:
        end_domain(dom, name, run_dir)


def end_domain(dom: Any, name: str, run_dir: Path, *, release: bool = True) -> None:
    """A bench domain's end: destroyed (when it was made), its uid given back (``release``),
    its run directory removed."""
    if dom is not None:
        try:
            dom.destroy()
        except libvirt.libvirtError as e:
            log.debug("destroying %s: %s", name, e)
    if release:
        identity.release(name)
    shutil.rmtree(run_dir, ignore_errors=True)


def measure(rounds: int, baseline: Path | None = None) -> dict[str, list[float]]:
    env = VMEnv.load()
    here = Path(__file__).resolve().parent.parent
    trees: list[tuple[str, Path]] = [("", here)]
    if baseline is not None:
        trees = [("baseline ", baseline.resolve()), *trees]
    samples: dict[str, list[float]] = {}
    with Hypervisor(env.cfg.libvirt_uri, events=False) as hv:
        for _label, tree in trees:  # untimed: libvirt's capabilities of each QEMU, page cache
            for kind in KINDS:
                create_once(env, hv, tree, kind)
        for i in range(rounds):
            log.info("round %d of %d (load %.2f)", i + 1, rounds, os.getloadavg()[0])
            for kind in KINDS:
                for label, tree in trees if i % 2 == 0 else trees[::-1]:
                    samples.setdefault(f"{label}createXML {kind}", []).append(
                        create_once(env, hv, tree, kind))
    return samples


def main(argv: list[str] | None = None) -> int:
    return results.quick_main("python -m bench.createfast", 10,
                              lambda a: measure(a.rounds, a.baseline), results.quick_summary,
                              argv, results.baseline_option)


if __name__ == "__main__":
    sys.exit(main())
